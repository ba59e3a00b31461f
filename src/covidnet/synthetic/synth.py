"""Write a SYNTHETIC chest CT cohort as real DICOM plus its clinical manifest.

Everything this module writes is synthetic: phantoms from :mod:`covidnet.synthetic.phantom`
(anatomy and findings from :mod:`covidnet.synthetic.anatomy`), invented patients, dates and
pathogens. It exists so the pipeline can run end to end (and its tests can exercise real
DICOM decoding) where no real COVID-19 CT cohort is available. Nothing measured on it says
anything about real patients.

The tree mimics what hospitals deliver: several hospitals with their own scanners, kernels,
noise, slice thickness, matrix, rescale intercept/slope, signed or unsigned pixels and
transfer syntaxes (RLE, JPEG-LS, JPEG 2000 lossless, uncompressed); several studies per
patient over days; a localizer in every study, contrast-enhanced series in some; random
file names in nested folders; a few non-DICOM files. Cases that the exclusion rules must
catch are planted and listed in ``planted.csv`` (synthetic ground truth, not part of the
manifest schema of :mod:`covidnet.data.cohort`). The parameters are
:class:`~covidnet.synthetic.params.SynthParams`, the cohort is planned by
:func:`covidnet.synthetic.plan.plan_cohort`, and each study is drawn here (``(D, H, W)``
volumes in HU) and written through :mod:`covidnet.synthetic.dicom_writer`.

The same parameters give byte-identical files: every random draw comes from streams
spawned from ``synth.seed`` per patient and per scan, UIDs are derived from those seeds,
and no wall-clock date or time is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.atomic import atomic_path, write_csv
from covidnet.data.cohort import FINDINGS_FILE, LESIONS_DIR, PATIENT_COLUMNS, PATIENTS_FILE, SCAN_COLUMNS, SCANS_FILE
from covidnet.progress import bar
from covidnet.synthetic.anatomy import random_anatomy
from covidnet.synthetic.dicom_writer import SeriesHeader, write_localizer, write_series
from covidnet.synthetic.params import SynthParams
from covidnet.synthetic.phantom import LESION, LUNG, OUTSIDE, draw_chest, draw_projection
from covidnet.synthetic.plan import ScanTask, plan_cohort, random_hex, scan_findings

log = logging.getLogger(__name__)

PLANTED_FILE = "planted.csv"
PLANTED_COLUMNS = ("patient_id", "study_uid", "case")
_CONTRAST_AGENT = "IOHEXOL"


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote (for the CLI to print)."""

    patients: dict[str, int]
    scans: int
    series: int
    files: int
    bytes: int
    planted: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        patients = ", ".join(f"{n} {label}" for label, n in self.patients.items())
        planted = ", ".join(f"{n} {case}" for case, n in self.planted.items()) or "none"
        return (f"patients {patients}; {self.scans} scans, {self.series} series, {self.files} files "
                f"({self.bytes / 2**20:.1f} MiB); planted cases: {planted}")


def _lesion_tensor(labels: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """A drawn study's ground truth ``(D, H, W)`` (slice 0 cranial) in the model's tensor grid.

    The slices are put in the order preprocessing reads them (ascending position along the
    normal: caudal first) and resized and cropped by the very function preprocessing's fast
    path is tested against (:func:`covidnet.preprocess.array.resize_crop`), lung and lesion
    masks each, a voxel keeping a label where at least half of it is.

    Returns:
        ``(depth, crop, crop)`` uint8: 0 outside the lungs, 1 lung, 2 lesion.
    """
    from covidnet.preprocess.array import resize_crop

    depth, size, crop = grid
    ordered = labels[::-1]
    lung = resize_crop((ordered > OUTSIDE).astype(np.float32), depth, size, crop) >= 0.5
    lesion = resize_crop((ordered == LESION).astype(np.float32), depth, size, crop) >= 0.5
    return np.where(lung, np.where(lesion, LESION, LUNG), OUTSIDE).astype(np.uint8)


def _write_study(task: ScanTask, root: Path, lesions: Path | None = None,
                 grid: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """Write one study (localizer, axial and/or contrast series); returns (series, files, bytes).

    With ``lesions`` and ``grid``, the axial series' ground truth goes to
    ``lesions/<SeriesInstanceUID>.npy`` in the tensor grid (:func:`_lesion_tensor`)."""
    rng = np.random.default_rng(task.scan_seed)
    anatomy = random_anatomy(np.random.default_rng(task.anatomy_seed), task.z_extent_mm)
    findings = scan_findings(task, anatomy, task.anatomy_seed + 1)
    h = task.hospital
    encoding = {"codec": task.codec, "rescale_intercept": h.rescale_intercept, "rescale_slope": h.rescale_slope,
                "pixel_representation": h.pixel_representation}
    n_slices = max(1, int(round(task.z_extent_mm / h.slice_thickness_mm)))
    pixel = h.fov_mm / task.matrix
    spacing = (h.slice_thickness_mm, pixel, pixel)
    shape = (n_slices, task.matrix, task.matrix)
    u_start = float(rng.uniform(-4.0, 4.0)) + h.slice_thickness_mm / 2.0
    z_top = float(rng.uniform(-80.0, 80.0))
    origin = (-(task.matrix - 1) / 2.0 * pixel, -(task.matrix - 1) / 2.0 * pixel, z_top - u_start)
    study = root / task.folder
    header = SeriesHeader(
        patient_id=task.patient_id,
        patient_sex=task.sex,
        patient_age=task.age,
        study_uid=task.study_uid,
        study_date=task.study_date,
        study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        accession_number=f"ACC{task.patient_index + 1:04d}{task.scan_index + 1:02d}",
        study_id=str(task.scan_index + 1),
        institution=h.name,
        manufacturer=h.manufacturer,
        model=h.model,
        kernel=h.kernel,
    )
    files: list[Path] = []
    n_series = 0

    def names(count: int, sub: str) -> tuple[Path, list[str]]:
        folder = study / sub if sub else study
        ext = ".dcm" if rng.random() < 0.5 else ""
        return folder, [random_hex(rng, 16) + ext for _ in range(count)]

    # Localizer: 1-2 projection images (coronal, sometimes also lateral).
    n_loc = int(rng.integers(1, 3))
    loc_rows = max(8, int(round(task.z_extent_mm / 2.0)))
    loc_cols = max(8, int(round(h.fov_mm / 2.0)))
    loc_header = _replace(header, series_number=1, series_description="TOPOGRAM SYNTHETIC", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    folder, loc_names = names(n_loc, random_hex(rng, 6) if rng.random() < 0.5 else "")
    for k, view in enumerate(("coronal", "sagittal")[:n_loc]):
        img = draw_projection(anatomy, findings, size=(loc_rows, loc_cols), spacing_mm=(2.0, 2.0), axis=view)
        img = img + rng.normal(0.0, 5.0, img.shape).round()
        orient = (1, 0, 0, 0, 0, -1) if view == "coronal" else (0, 1, 0, 0, 0, -1)
        pos = (-h.fov_mm / 2, 0.0, z_top + 20.0) if view == "coronal" else (0.0, -h.fov_mm / 2, z_top + 20.0)
        path = folder / loc_names[k]
        write_localizer(
            path,
            img,
            header=loc_header,
            study_uid=task.study_uid,
            series_uid=task.localizer_uid,
            instance=k + 1,
            spacing=(2.0, 2.0),
            position=pos,
            orientation=orient,
            intercept=h.rescale_intercept,
            slope=h.rescale_slope,
            pixel_representation=h.pixel_representation,
        )
        files.append(path)
    n_series += 1

    if task.with_axial:
        volume, labels = draw_chest(
            shape,
            spacing,
            anatomy,
            findings,
            u_start_mm=u_start,
            motion_mm=float(rng.uniform(12.0, 20.0)) if task.motion else 0.0,
            noise_hu=h.noise_hu,
            rng=rng,
            labels=True,
        )
        if lesions is not None and grid is not None:
            np.save(lesions / f"{task.axial_uid}.npy", _lesion_tensor(labels, grid))
        skip: list[int] = []
        if task.broken:
            gap = max(2, n_slices // 8)
            start = n_slices // 2 - gap // 2
            skip = list(range(start, start + gap))
        folder, file_names = names(n_slices - len(skip), random_hex(rng, 6) if rng.random() < 0.5 else "")
        files += write_series(
            folder,
            volume,
            spacing,
            **encoding,
            header=_replace(header, series_uid=task.axial_uid, series_number=2, series_description=f"CHEST {h.slice_thickness_mm:g}mm {h.kernel}"),
            origin_mm=origin,
            file_names=file_names,
            skip_slices=skip,
        )
        n_series += 1
    if task.with_contrast:
        volume = draw_chest(shape, spacing, anatomy, findings, contrast=True, u_start_mm=u_start, noise_hu=h.noise_hu, rng=rng)
        folder, file_names = names(n_slices, random_hex(rng, 6))
        files += write_series(
            folder,
            volume,
            spacing,
            **encoding,
            header=_replace(
                header,
                series_uid=task.contrast_uid,
                series_number=3,
                series_description=f"CHEST WITH CONTRAST {h.slice_thickness_mm:g}mm",
                contrast_agent=_CONTRAST_AGENT,
            ),
            origin_mm=origin,
            file_names=file_names,
        )
        n_series += 1
    # A thumbnail index beside the images: not DICOM, downstream must skip it.
    index = study / "thumbnails.json"
    index.write_text('{"synthetic": true, "thumbnails": []}\n')
    return n_series, len(files), sum(p.stat().st_size for p in files)


def _replace(header: SeriesHeader, **changes: object) -> SeriesHeader:
    return dataclasses.replace(header, **changes)  # type: ignore[arg-type]


def synthesize(params: SynthParams, dicom_dir: Path, manifest_dir: Path, *, workers: int | None = None,
               grid: tuple[int, int, int] | None = None, progress: bool = True) -> SynthSummary:
    """Write a SYNTHETIC cohort: a DICOM tree and its manifest (plus ``planted.csv``).

    Both folders are built beside their targets and renamed into place at the end, so a
    crash leaves the previous cohort (or none), never half of one.

    Args:
        params: the ``synth`` section (``section(params, "synth", SynthParams)``).
        dicom_dir: the DICOM tree (replaced).
        manifest_dir: ``patients.csv``, ``scans.csv`` (schema :mod:`covidnet.data.cohort`) and
            ``planted.csv`` (``patient_id, study_uid, case``: which patient was planted for
            which exclusion rule; synthetic ground truth, not manifest schema).
        workers: processes writing studies (1 = in this process), instead of
            ``params.workers``. The output does not depend on it.
        grid: ``(depth, size, crop)`` of preprocessing: with it, the manifest folder also
            gets ``lesions/<SeriesInstanceUID>.npy``, each axial series' planted findings and
            lungs in the tensor grid (``(depth, crop, crop)`` uint8: 0 outside the lungs, 1
            lung, 2 lesion), and ``findings.csv`` (the pattern drawn for each scan): the ground
            truth that explanations and the phantom's own ceiling are measured against.
        progress: a progress bar on a terminal.

    Returns:
        Counts of what was written.
    """
    patients, scans, planted, tasks = plan_cohort(params)
    dicom_dir, manifest_dir = Path(dicom_dir), Path(manifest_dir)
    log.info("synthesizing %d patients, %d studies into %s", len(patients), len(tasks), dicom_dir)
    results: list[tuple[int, int, int]] = []
    with atomic_path(dicom_dir, directory=True) as tmp, atomic_path(manifest_dir, directory=True) as manifest:
        lesions = manifest / LESIONS_DIR if grid else None
        if lesions is not None:
            lesions.mkdir()
        (tmp / "README.txt").write_text(  # worded as before the package layout: the cohort's hash is in dvc.lock
            "SYNTHETIC chest CT cohort written by covidnet.synth (phantoms, not patients).\n"
            "Folder and file names are random; select series from the DICOM headers.\n"
        )
        meter = bar(total=len(tasks), desc="synth", unit="scan", progress=progress)
        try:
            workers = params.workers if workers is None else workers
            if workers > 1 and len(tasks) > 1:
                with ProcessPoolExecutor(max_workers=min(workers, os.cpu_count() or 1)) as pool:
                    for result in pool.map(_write_study, tasks, [tmp] * len(tasks), [lesions] * len(tasks),
                                           [grid] * len(tasks)):
                        results.append(result)
                        meter.update(1)
            else:
                for task in tasks:
                    results.append(_write_study(task, tmp, lesions, grid))
                    meter.update(1)
        finally:
            meter.close()
        write_csv(manifest / PATIENTS_FILE, pd.DataFrame(patients, columns=list(PATIENT_COLUMNS)))
        write_csv(manifest / SCANS_FILE, pd.DataFrame(scans, columns=list(SCAN_COLUMNS)))
        write_csv(manifest / PLANTED_FILE, pd.DataFrame(planted, columns=list(PLANTED_COLUMNS)))
        if grid:
            write_csv(manifest / FINDINGS_FILE, pd.DataFrame(
                [{"study_uid": t.study_uid, "series_uid": t.axial_uid, "label": t.label, "pattern": t.pattern,
                  "severity": round(t.severity, 4), "effusion": t.effusion} for t in tasks if t.with_axial]))
    counts = {label: sum(p["label"] == label for p in patients) for label in ("covid", "non_covid")}
    planted_counts: dict[str, int] = {}
    for row in planted:
        planted_counts[row["case"]] = planted_counts.get(row["case"], 0) + 1
    summary = SynthSummary(
        patients=counts,
        scans=len(tasks),
        series=sum(r[0] for r in results),
        files=sum(r[1] for r in results),
        bytes=sum(r[2] for r in results),
        planted=planted_counts,
    )
    log.info("synthesized %s", summary)
    return summary


def run_synth(params: dict, paths, progress: bool = True) -> SynthSummary:
    """The ``synth`` stage: write the synthetic cohort into ``paths.dicom`` and ``paths.manifest``, with
    its ground truth (lesion masks in the grid of the ``preprocess`` section, findings per scan)."""
    from covidnet.params import section
    from covidnet.preprocess.params import PreprocessParams

    pre = section(params, "preprocess", PreprocessParams)
    return synthesize(section(params, "synth", SynthParams), paths.dicom, paths.manifest,
                      grid=(pre.depth, pre.size, pre.crop), progress=progress)
