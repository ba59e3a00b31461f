"""Write a SYNTHETIC chest CT cohort as real DICOM plus its clinical manifest.

Everything this module writes is synthetic: phantoms from :mod:`covidnet.synthetic.phantom`, invented
patients, dates and pathogens. It exists so the pipeline can run end to end (and its
tests can exercise real DICOM decoding) where no real COVID-19 CT cohort is available.
Nothing measured on it says anything about real patients.

The tree mimics what hospitals deliver: several hospitals with their own scanners, kernels,
noise, slice thickness, matrix, rescale intercept/slope, signed or unsigned pixels and
transfer syntaxes (RLE, JPEG-LS, JPEG 2000 lossless, uncompressed); several studies per
patient over days; a localizer in every study, contrast-enhanced series in some; random
file names in nested folders; a few non-DICOM files. Cases that the exclusion rules must
catch are planted and listed in ``planted.csv`` (synthetic ground truth, not part of the
manifest schema of :mod:`covidnet.data.cohort`). The DICOM files themselves are written by
:mod:`covidnet.synthetic.dicom_writer`.

The same parameters give byte-identical files: every random draw comes from streams
spawned from ``synth.seed`` per patient and per scan, UIDs are derived from those seeds,
and no wall-clock date or time is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from covidnet.synthetic import phantom
from covidnet.atomic import atomic_path, write_csv
from covidnet.data.cohort import PATIENT_COLUMNS, PATIENTS_FILE, SCAN_COLUMNS, SCANS_FILE
from covidnet.synthetic.dicom_writer import CODECS, SeriesHeader, uid, write_localizer, write_series
from covidnet.params import ParamsError

log = logging.getLogger(__name__)

PLANTED_FILE = "planted.csv"
PLANTED_COLUMNS = ("patient_id", "study_uid", "case")
NON_COVID_PATHOGENS = (
    "influenza A",
    "influenza B",
    "RSV",
    "adenovirus",
    "Mycoplasma pneumoniae",
    "Streptococcus pneumoniae",
    "Klebsiella pneumoniae",
)
_BACTERIAL = {"Streptococcus pneumoniae", "Klebsiella pneumoniae"}
_FIRST_DATE = dt.date(2020, 1, 20)
_CONTRAST_AGENT = "IOHEXOL"


@dataclass(frozen=True)
class HospitalProfile:
    """One hospital's scanner and how it encodes pixels (``synth.hospitals[i]``)."""

    name: str
    manufacturer: str
    model: str
    kernel: str
    noise_hu: float
    slice_thickness_mm: float
    matrix_scale: float
    fov_mm: float
    rescale_intercept: float
    rescale_slope: float
    pixel_representation: int
    codec: str


@dataclass(frozen=True)
class ExclusionCases:
    """How many patients to plant for each exclusion rule (``synth.exclusion_cases``)."""

    pcr_gap: int
    motion: int
    contrast_only: int
    broken_series: int


@dataclass(frozen=True)
class SynthParams:
    """The ``synth`` section of ``params.yaml``; validated on construction.

    Raises:
        ParamsError: (a ``ValueError``) naming the field and the offending value.
    """

    seed: int
    n_patients: int
    covid_fraction: float
    scans_per_patient: tuple[int, int]
    days_between_scans: tuple[int, int]
    difficulty: float
    no_finding_fraction: float
    diffuse_ggo_fraction: float
    consolidation_fraction: float
    effusion_fraction: float
    contrast_fraction: float
    compressed_fraction: float
    matrix: int
    z_extent_mm: float
    first_scan_after_pcr_days: tuple[int, int]
    exclusion_cases: ExclusionCases
    hospitals: tuple[HospitalProfile, ...]

    def __post_init__(self) -> None:
        for name in (
            "covid_fraction",
            "difficulty",
            "no_finding_fraction",
            "diffuse_ggo_fraction",
            "consolidation_fraction",
            "effusion_fraction",
            "contrast_fraction",
            "compressed_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParamsError(f"synth.{name}: {value!r} is outside [0, 1]")
        if self.n_patients < 1:
            raise ParamsError(f"synth.n_patients: {self.n_patients!r} must be at least 1")
        if self.matrix < 8:
            raise ParamsError(f"synth.matrix: {self.matrix!r} must be at least 8")
        if self.z_extent_mm <= 0:
            raise ParamsError(f"synth.z_extent_mm: {self.z_extent_mm!r} must be positive")
        for name in ("scans_per_patient", "days_between_scans", "first_scan_after_pcr_days"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ParamsError(f"synth.{name}: {list(value)!r} must be an inclusive range [low, high]")
        if self.scans_per_patient[0] < 1:
            raise ParamsError(f"synth.scans_per_patient: {list(self.scans_per_patient)!r} must start at 1 or more")
        if self.days_between_scans[0] < 1:
            raise ParamsError(f"synth.days_between_scans: {list(self.days_between_scans)!r} must start at 1 or more")
        for name in ("pcr_gap", "motion", "contrast_only", "broken_series"):
            value = getattr(self.exclusion_cases, name)
            if value < 0:
                raise ParamsError(f"synth.exclusion_cases.{name}: {value!r} must not be negative")
        planted = sum(getattr(self.exclusion_cases, n) for n in ("pcr_gap", "motion", "contrast_only", "broken_series"))
        if planted > self.n_patients:
            raise ParamsError(f"synth.exclusion_cases: {planted} planted patients exceed synth.n_patients={self.n_patients}")
        if self.exclusion_cases.pcr_gap > round(self.n_patients * self.covid_fraction):
            raise ParamsError(
                f"synth.exclusion_cases.pcr_gap: {self.exclusion_cases.pcr_gap} exceeds the "
                f"{round(self.n_patients * self.covid_fraction)} COVID-19 patients"
            )
        if not self.hospitals:
            raise ParamsError("synth.hospitals: at least one hospital is required")
        names = set()
        for i, h in enumerate(self.hospitals):
            where = f"synth.hospitals[{i}]"
            if h.codec not in CODECS:
                raise ParamsError(f"{where}.codec: {h.codec!r} is not one of {', '.join(CODECS)}")
            if h.pixel_representation not in (0, 1):
                raise ParamsError(f"{where}.pixel_representation: {h.pixel_representation!r} is not 0 (unsigned) or 1 (signed)")
            if h.rescale_slope <= 0:
                raise ParamsError(f"{where}.rescale_slope: {h.rescale_slope!r} must be positive")
            if not 0.5 <= h.slice_thickness_mm <= 10.0:
                raise ParamsError(f"{where}.slice_thickness_mm: {h.slice_thickness_mm!r} is outside [0.5, 10]")
            for name in ("noise_hu",):
                if getattr(h, name) < 0:
                    raise ParamsError(f"{where}.{name}: {getattr(h, name)!r} must not be negative")
            for name in ("matrix_scale", "fov_mm"):
                if getattr(h, name) <= 0:
                    raise ParamsError(f"{where}.{name}: {getattr(h, name)!r} must be positive")
            if h.codec == "jpeg2000" and self.compressed_fraction > 0 and round(self.matrix * h.matrix_scale) < 32:
                raise ParamsError(
                    f"{where}.codec: 'jpeg2000' needs a matrix of at least 32 pixels, "
                    f"got synth.matrix x matrix_scale = {round(self.matrix * h.matrix_scale)}"
                )
            if h.name in names:
                raise ParamsError(f"{where}.name: {h.name!r} is used twice")
            names.add(h.name)


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


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


# ----------------------------------------------------------------------------- the cohort plan


@dataclass(frozen=True)
class _ScanTask:
    """Everything one worker needs to write one study (picklable)."""

    patient_index: int
    scan_index: int
    patient_id: str
    sex: str
    age: int
    label: str
    pattern: str  # covid | covid_consolidation | lobar | peribronchial | diffuse | none
    effusion: bool
    severity: float
    hospital: HospitalProfile
    matrix: int
    z_extent_mm: float
    study_date: str
    study_uid: str
    axial_uid: str
    contrast_uid: str
    localizer_uid: str
    with_axial: bool
    with_contrast: bool
    motion: bool
    broken: bool
    codec: str
    folder: str
    anatomy_seed: int
    scan_seed: int


def _hex(rng: np.random.Generator, n: int = 12) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, n // 2))


def _findings_pattern(rng: np.random.Generator, params: SynthParams, label: str, pathogen: str) -> tuple[str, bool]:
    """Draw the finding pattern; with probability ``difficulty`` from the pooled distribution."""
    source = label
    if rng.random() < params.difficulty:
        source = "covid" if rng.random() < 0.5 else "non_covid"
    if source == "covid":
        if rng.random() < params.no_finding_fraction:
            return "none", False
        consolidates = rng.random() < params.consolidation_fraction
        return ("covid_consolidation" if consolidates else "covid"), False
    effusion = bool(rng.random() < params.effusion_fraction)
    if rng.random() < params.diffuse_ggo_fraction:
        return "diffuse", effusion
    bacterial = pathogen in _BACTERIAL if label == "non_covid" else rng.random() < 0.5
    return ("lobar" if bacterial else "peribronchial"), effusion


def _plan(params: SynthParams) -> tuple[list[dict], list[dict], list[dict], list[_ScanTask]]:
    root = np.random.SeedSequence(params.seed)
    plan_rng = np.random.default_rng(root.spawn(1)[0])
    patient_seeds = root.spawn(params.n_patients + 1)[1:]
    n = params.n_patients
    n_covid = int(round(n * params.covid_fraction))
    labels = np.array(["covid"] * n_covid + ["non_covid"] * (n - n_covid))
    plan_rng.shuffle(labels)
    hospitals = np.arange(n) % len(params.hospitals)
    plan_rng.shuffle(hospitals)
    # Planted exclusion cases: distinct patients; pcr_gap only among COVID-19 patients.
    covid_idx = [i for i in range(n) if labels[i] == "covid"]
    order = list(plan_rng.permutation(n))
    planted: dict[int, str] = {}
    for i in plan_rng.permutation(covid_idx)[: params.exclusion_cases.pcr_gap]:
        planted[int(i)] = "pcr_gap"
    for case in ("motion", "contrast_only", "broken_series"):
        chosen = [i for i in order if int(i) not in planted][: getattr(params.exclusion_cases, case)]
        for i in chosen:
            planted[int(i)] = case
    folders: set[str] = set()

    patients, scans, planted_rows, tasks = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng(patient_seeds[i].spawn(1)[0])
        scan_seeds = patient_seeds[i].spawn(8)
        label = str(labels[i])
        hospital = params.hospitals[int(hospitals[i])]
        patient_id = f"SYN{params.seed % 10000:04d}-{i + 1:04d}"
        pathogen = "SARS-CoV-2" if label == "covid" else str(rng.choice(NON_COVID_PATHOGENS))
        sex = str(rng.choice(["F", "M"]))
        age = int(rng.integers(18, 90))
        onset = _FIRST_DATE + dt.timedelta(days=int(rng.integers(0, 700)))
        case = planted.get(i, "")
        n_scans = int(rng.integers(params.scans_per_patient[0], params.scans_per_patient[1] + 1))
        if label == "covid":
            if case == "pcr_gap":
                offset = int(rng.integers(20, 41))
            else:
                offset = int(rng.integers(params.first_scan_after_pcr_days[0], params.first_scan_after_pcr_days[1] + 1))
            pcr = onset
            first = pcr + dt.timedelta(days=offset)
        else:
            pcr = None
            first = onset
        pattern, effusion = _findings_pattern(rng, params, label, pathogen)
        patients.append(
            {
                "patient_id": patient_id,
                "hospital": hospital.name,
                "label": label,
                "pathogen": pathogen,
                "pcr_positive_date": pcr.isoformat() if pcr else "",
                "sex": sex,
                "age": age,
            }
        )
        matrix = int(round(params.matrix * hospital.matrix_scale))
        patient_folder = _hex(rng, 10)
        day = first
        for s in range(n_scans):
            if s > 0:
                day = day + dt.timedelta(days=int(rng.integers(params.days_between_scans[0], params.days_between_scans[1] + 1)))
            study_uid = uid(params.seed, patient_id, s, "study")
            with_contrast = bool(rng.random() < params.contrast_fraction)
            with_axial = True
            motion = broken = False
            if s == 0 and case == "contrast_only":
                with_contrast, with_axial = True, False
            elif s == 0 and case == "motion":
                motion = True
            elif s == 0 and case == "broken_series":
                broken = True
            compressed = bool(rng.random() < params.compressed_fraction)
            codec = (hospital.codec if hospital.codec != "none" else "rle") if compressed else "none"
            folder = f"{patient_folder}/{_hex(rng, 8)}"
            while folder in folders:
                folder = f"{patient_folder}/{_hex(rng, 8)}"
            folders.add(folder)
            # Severity evolves over the course: worst around the second scan.
            severity = float(np.clip(0.55 + 0.3 * math.sin(1.2 * s) + rng.normal(0, 0.08), 0.3, 1.0))
            axial_uid = uid(params.seed, patient_id, s, "axial")
            task = _ScanTask(
                patient_index=i,
                scan_index=s,
                patient_id=patient_id,
                sex=sex,
                age=age,
                label=label,
                pattern=pattern,
                effusion=effusion,
                severity=severity,
                hospital=hospital,
                matrix=matrix,
                z_extent_mm=params.z_extent_mm,
                study_date=_da(day),
                study_uid=study_uid,
                axial_uid=axial_uid,
                contrast_uid=uid(params.seed, patient_id, s, "contrast"),
                localizer_uid=uid(params.seed, patient_id, s, "localizer"),
                with_axial=with_axial,
                with_contrast=with_contrast,
                motion=motion,
                broken=broken,
                codec=codec,
                folder=folder,
                anatomy_seed=int(patient_seeds[i].generate_state(1)[0]),
                scan_seed=int(scan_seeds[s].generate_state(1)[0]),
            )
            tasks.append(task)
            scans.append(
                {
                    "patient_id": patient_id,
                    "study_uid": study_uid,
                    "series_uid": axial_uid if with_axial else "",
                    "scan_date": day.isoformat(),
                    "motion_artifact": int(motion),
                }
            )
            if s == 0 and case:
                planted_rows.append({"patient_id": patient_id, "study_uid": study_uid, "case": case})
    return patients, scans, planted_rows, tasks


def _findings(task: _ScanTask, anatomy: phantom.Anatomy, seed: int) -> list[phantom.Finding]:
    # Findings keep their place across a patient's scans (same seed), their size follows severity.
    rng = np.random.default_rng(seed)
    if task.pattern == "none":
        return []
    if task.pattern.startswith("covid"):
        return phantom.covid_findings(rng, anatomy, consolidation=task.pattern == "covid_consolidation", severity=task.severity)
    return phantom.other_pneumonia_findings(rng, anatomy, pattern=task.pattern, effusion=task.effusion, severity=task.severity)


def _write_study(task: _ScanTask, root: Path) -> tuple[int, int, int]:
    """Write one study (localizer, axial and/or contrast series); returns (series, files, bytes)."""
    rng = np.random.default_rng(task.scan_seed)
    anatomy = phantom.random_anatomy(np.random.default_rng(task.anatomy_seed), task.z_extent_mm)
    findings = _findings(task, anatomy, task.anatomy_seed + 1)
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
        return folder, [_hex(rng, 16) + ext for _ in range(count)]

    # Localizer: 1-2 projection images (coronal, sometimes also lateral).
    n_loc = int(rng.integers(1, 3))
    loc_rows = max(8, int(round(task.z_extent_mm / 2.0)))
    loc_cols = max(8, int(round(h.fov_mm / 2.0)))
    loc_header = _replace(header, series_number=1, series_description="TOPOGRAM SYNTHETIC", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    folder, loc_names = names(n_loc, _hex(rng, 6) if rng.random() < 0.5 else "")
    for k, view in enumerate(("coronal", "sagittal")[:n_loc]):
        img = phantom.draw_projection(anatomy, findings, size=(loc_rows, loc_cols), spacing_mm=(2.0, 2.0), axis=view)
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
        volume = phantom.draw_chest(
            shape,
            spacing,
            anatomy,
            findings,
            u_start_mm=u_start,
            motion_mm=float(rng.uniform(12.0, 20.0)) if task.motion else 0.0,
            noise_hu=h.noise_hu,
            rng=rng,
        )
        skip: list[int] = []
        if task.broken:
            gap = max(2, n_slices // 8)
            start = n_slices // 2 - gap // 2
            skip = list(range(start, start + gap))
        folder, file_names = names(n_slices - len(skip), _hex(rng, 6) if rng.random() < 0.5 else "")
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
        volume = phantom.draw_chest(shape, spacing, anatomy, findings, contrast=True, u_start_mm=u_start, noise_hu=h.noise_hu, rng=rng)
        folder, file_names = names(n_slices, _hex(rng, 6))
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


def synthesize(params: SynthParams, dicom_dir: Path, manifest_dir: Path, *, workers: int = 2) -> SynthSummary:
    """Write a SYNTHETIC cohort: a DICOM tree and its manifest (plus ``planted.csv``).

    Both folders are built beside their targets and renamed into place at the end, so a
    crash leaves the previous cohort (or none), never half of one.

    Args:
        params: the ``synth`` section (``section(params, "synth", SynthParams)``).
        dicom_dir: the DICOM tree (replaced).
        manifest_dir: ``patients.csv``, ``scans.csv`` (schema :mod:`covidnet.data.cohort`) and
            ``planted.csv`` (``patient_id, study_uid, case``: which patient was planted for
            which exclusion rule; synthetic ground truth, not manifest schema).
        workers: processes writing studies (1 = in this process). The output does not
            depend on it.

    Returns:
        Counts of what was written.
    """
    patients, scans, planted, tasks = _plan(params)
    dicom_dir, manifest_dir = Path(dicom_dir), Path(manifest_dir)
    log.info("synthesizing %d patients, %d studies into %s", len(patients), len(tasks), dicom_dir)
    results: list[tuple[int, int, int]] = []
    with atomic_path(dicom_dir, directory=True) as tmp:
        (tmp / "README.txt").write_text(
            "SYNTHETIC chest CT cohort written by covidnet.synthetic.synth (phantoms, not patients).\n"
            "Folder and file names are random; select series from the DICOM headers.\n"
        )
        bar = tqdm(total=len(tasks), desc="synth", unit="scan", disable=None)
        try:
            if workers > 1 and len(tasks) > 1:
                with ProcessPoolExecutor(max_workers=min(workers, os.cpu_count() or 1)) as pool:
                    for result in pool.map(_write_study, tasks, [tmp] * len(tasks)):
                        results.append(result)
                        bar.update(1)
            else:
                for task in tasks:
                    results.append(_write_study(task, tmp))
                    bar.update(1)
        finally:
            bar.close()
    with atomic_path(manifest_dir, directory=True) as tmp:
        write_csv(tmp / PATIENTS_FILE, pd.DataFrame(patients, columns=list(PATIENT_COLUMNS)))
        write_csv(tmp / SCANS_FILE, pd.DataFrame(scans, columns=list(SCAN_COLUMNS)))
        write_csv(tmp / PLANTED_FILE, pd.DataFrame(planted, columns=list(PLANTED_COLUMNS)))
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


def run_synth(params: dict, paths) -> SynthSummary:
    """The ``synth`` stage: write the synthetic cohort into ``paths.dicom`` and ``paths.manifest``."""
    from covidnet.params import section

    return synthesize(section(params, "synth", SynthParams), paths.dicom, paths.manifest)
