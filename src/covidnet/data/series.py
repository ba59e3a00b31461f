"""Series selection: group DICOM headers into series, judge each, choose one per study.

:func:`assess_series` decides whether one series can be a model input: modality CT, axial,
not a LOCALIZER, non-contrast, consistent geometry (image size, orientation, pixel spacing),
no duplicate positions or gaps, enough slices, a transfer syntax that can be decoded here
(RLE, JPEG Lossless, JPEG-LS and JPEG 2000 through pydicom's plugins pylibjpeg, pyjpegls,
openjpeg); a series that breaks a rule is ineligible with a reason that names the values.
Slices are ordered by their position along the slice normal
(``ImagePositionPatient . (row x col)``, mm), never by file name or InstanceNumber.
:func:`index_tree` scans a whole tree (headers from :mod:`covidnet.data.dicom`) into a
:class:`DicomIndex` and marks per study the eligible series with the most slices; its files
table is what :func:`covidnet.data.pixels.read_volume_hu` reads to a ``(D, H, W)`` HU volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.data.dicom import SliceHeader, find_files, read_headers

SERIES_COLUMNS = (
    "patient_id", "study_uid", "series_uid", "study_date", "modality", "series_description",
    "image_type", "contrast", "institution", "manufacturer", "model", "kernel", "transfer_syntax", "rows",
    "columns", "n_files", "n_slices", "pixel_spacing_mm", "slice_thickness_mm",
    "slice_spacing_mm", "eligible", "reason", "selected", "selection",
)
FILE_COLUMNS = ("series_uid", "slice_index", "path", "position_mm", "rescale_intercept", "rescale_slope",
                "pixel_offset", "bits_stored", "pixel_representation")
SKIPPED_COLUMNS = ("path", "reason")


@dataclass(frozen=True)
class SeriesParams:
    """The ``series`` section of params.yaml: when a series is broken, and how to read.

    Attributes:
        min_slices: fewer slices make the series ineligible.
        max_gap_ratio: a step between neighbouring slices larger than this times the median
            step is a gap.
        duplicate_tol_mm: slices closer than this (mm, along the normal) are duplicates.
        orientation_tol: largest difference of direction cosines within one series.
        axial_tol: the slice normal's ``|z|`` must exceed ``1 - axial_tol``.
        workers: processes reading headers (:func:`covidnet.data.dicom.read_headers`).
    """

    min_slices: int
    max_gap_ratio: float
    duplicate_tol_mm: float
    orientation_tol: float
    axial_tol: float
    workers: int


@dataclass(frozen=True)
class DicomIndex:
    """The result of scanning a DICOM tree.

    Attributes:
        series: one row per series, columns :data:`SERIES_COLUMNS`.
        files: one row per slice of each eligible series, in slice order, columns
            :data:`FILE_COLUMNS`; ``path`` is relative to the scanned root.
        skipped: files that are not usable DICOM, with the reason, :data:`SKIPPED_COLUMNS`.
    """

    series: pd.DataFrame
    files: pd.DataFrame
    skipped: pd.DataFrame


@dataclass(frozen=True)
class SeriesAssessment:
    """Whether one series can be a model input, and its slices in order.

    Attributes:
        eligible: the series passed every rule.
        reason: the first rule it broke (empty when eligible).
        slices: headers sorted by position along the slice normal (inferior to superior
            in patient z for axial series); empty when the geometry could not be ordered.
        positions_mm: position of each sorted slice along the normal, mm.
    """

    eligible: bool
    reason: str
    slices: tuple[SliceHeader, ...]
    positions_mm: tuple[float, ...]

    @property
    def spacing_mm(self) -> float | None:
        if len(self.positions_mm) < 2:
            return None
        return float(np.median(np.diff(self.positions_mm)))


def _decodable(syntax: str) -> str:
    """Empty string when pixel data in ``syntax`` can be decoded here, else the reason."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    if not syntax:
        return "no TransferSyntaxUID in the file meta"
    try:
        decoder = get_decoder(UID(syntax))
    except NotImplementedError:
        return f"no decoder for transfer syntax {syntax} ({UID(syntax).name})"
    if not decoder.is_available:
        return f"decoder for transfer syntax {syntax} ({UID(syntax).name}) is not installed"
    return ""


def assess_series(headers: Sequence[SliceHeader], params: SeriesParams) -> SeriesAssessment:
    """Check one series against the selection rules and order its slices.

    Args:
        headers: the files of one series, in any order.
        params: tolerances and the minimum slice count.

    Returns:
        The assessment; ``reason`` names the first rule broken with the offending values.
    """

    def reject(reason: str, slices: Sequence[SliceHeader] = (), pos: Sequence[float] = ()) -> SeriesAssessment:
        return SeriesAssessment(False, reason, tuple(slices), tuple(float(p) for p in pos))

    first = headers[0]
    if first.modality != "CT":
        return reject(f"modality {first.modality or '(empty)'} is not CT")
    if "LOCALIZER" in first.image_type.upper():
        return reject("localizer (ImageType contains LOCALIZER)")
    if first.contrast_agent:
        return reject(f"contrast-enhanced (ContrastBolusAgent {first.contrast_agent!r})")
    for field, label in (("pixel_spacing", "PixelSpacing"), ("position", "ImagePositionPatient"),
                         ("orientation", "ImageOrientationPatient")):
        missing = [h for h in headers if getattr(h, field) is None]
        if missing:
            return reject(f"missing {label} in {len(missing)} of {len(headers)} file(s), e.g. {missing[0].path}")
    sizes = {(h.rows, h.columns) for h in headers}
    if len(sizes) > 1:
        return reject(f"mixed image sizes {sorted(sizes)}")
    syntaxes = {h.transfer_syntax for h in headers}
    for syntax in sorted(syntaxes):
        why = _decodable(syntax)
        if why:
            return reject(why)
    orient = np.array([h.orientation for h in headers], dtype=np.float64)
    if np.abs(orient - orient[0]).max() > params.orientation_tol:
        return reject(f"mixed orientations (direction cosines differ by up to {np.abs(orient - orient[0]).max():.4f})")
    spacing = np.array([h.pixel_spacing for h in headers], dtype=np.float64)
    if np.abs(spacing - spacing[0]).max() > 1e-3:
        return reject(f"mixed PixelSpacing {sorted({tuple(s) for s in spacing.tolist()})}")
    row, col = orient[0, :3], orient[0, 3:]
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        return reject(f"degenerate ImageOrientationPatient {tuple(orient[0])}")
    normal /= norm
    if abs(normal[2]) < 1.0 - params.axial_tol:
        return reject(f"not axial (slice normal {tuple(np.round(normal, 3))})")
    pos = np.array([h.position for h in headers], dtype=np.float64) @ normal
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    slices = [headers[i] for i in order]
    steps = np.diff(pos)
    dup = np.flatnonzero(steps < params.duplicate_tol_mm)
    if dup.size:
        i = int(dup[0])
        return reject(f"duplicate slice position {pos[i]:.3f} mm ({slices[i].path} and {slices[i + 1].path})", slices, pos)
    if len(slices) < params.min_slices:
        return reject(f"too few slices: {len(slices)} < series.min_slices {params.min_slices}", slices, pos)
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > params.max_gap_ratio * median)
    if gaps.size:
        i = int(gaps[0])
        return reject(
            f"gap in slice positions: {steps[i]:.2f} mm between {pos[i]:.2f} and {pos[i + 1]:.2f} mm "
            f"> {params.max_gap_ratio} x median step {median:.2f} mm ({gaps.size} gap(s))",
            slices, pos,
        )
    return SeriesAssessment(True, "", tuple(slices), tuple(float(p) for p in pos))


def _series_row(slices: Sequence[SliceHeader], assessment: SeriesAssessment) -> dict:
    first = slices[0]
    return {
        "patient_id": first.patient_id,
        "study_uid": first.study_uid,
        "series_uid": first.series_uid,
        "study_date": first.study_date,
        "modality": first.modality,
        "series_description": first.series_description,
        "image_type": first.image_type,
        "contrast": bool(first.contrast_agent),
        "institution": first.institution,
        "manufacturer": first.manufacturer,
        "model": first.model,
        "kernel": first.kernel,
        "transfer_syntax": first.transfer_syntax,
        "rows": first.rows,
        "columns": first.columns,
        "n_files": len(slices),
        "n_slices": len(assessment.slices) if assessment.slices else len(slices),
        "pixel_spacing_mm": first.pixel_spacing[0] if first.pixel_spacing else np.nan,
        "slice_thickness_mm": first.slice_thickness if first.slice_thickness is not None else np.nan,
        "slice_spacing_mm": assessment.spacing_mm if assessment.spacing_mm is not None else np.nan,
        "eligible": assessment.eligible,
        "reason": assessment.reason,
        "selected": False,
        "selection": "",
    }


def index_headers(headers: Sequence[SliceHeader | str], paths: Sequence[Path | str], root: Path | str,
                  params: SeriesParams) -> DicomIndex:
    """Group headers into series, assess each, and choose one series per study.

    Args:
        headers: :func:`read_headers` output, one entry per path.
        paths: the files read.
        root: the folder that ``files.path`` is made relative to.
        params: selection rules.
    """
    root = Path(root)
    skipped, by_series = [], {}
    for path, header in zip(paths, headers):
        if isinstance(header, str):
            skipped.append({"path": Path(path).relative_to(root).as_posix(), "reason": header})
            continue
        if not header.series_uid:
            skipped.append({"path": Path(path).relative_to(root).as_posix(), "reason": "no SeriesInstanceUID"})
            continue
        by_series.setdefault(header.series_uid, []).append(header)
    rows, files = [], []
    for series_uid in sorted(by_series):
        slices = by_series[series_uid]
        assessment = assess_series(slices, params)
        rows.append(_series_row(slices, assessment))
        if assessment.eligible:
            files.append(files_frame(assessment, root))
    series = pd.DataFrame(rows, columns=list(SERIES_COLUMNS))
    _select_per_study(series)
    return DicomIndex(
        series=series,
        files=pd.concat(files, ignore_index=True) if files else pd.DataFrame(columns=list(FILE_COLUMNS)),
        skipped=pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS)),
    )


def files_frame(assessment: SeriesAssessment, root: Path | str = "/") -> pd.DataFrame:
    """The files table of one assessed series: one row per slice, in slice order.

    ``path`` is made relative to ``root``; ``pixel_offset`` is the byte offset of native
    little-endian 16-bit pixel data (-1 when a decoder is needed).
    """
    root = Path(root)
    return pd.DataFrame({
        "series_uid": [h.series_uid for h in assessment.slices],
        "slice_index": np.arange(len(assessment.slices)),
        "path": [Path(h.path).relative_to(root).as_posix() for h in assessment.slices],
        "position_mm": list(assessment.positions_mm),
        "rescale_intercept": [h.rescale_intercept for h in assessment.slices],
        "rescale_slope": [h.rescale_slope for h in assessment.slices],
        "pixel_offset": [h.pixel_offset for h in assessment.slices],
        "bits_stored": [h.bits_stored for h in assessment.slices],
        "pixel_representation": [h.pixel_representation for h in assessment.slices],
    }, columns=list(FILE_COLUMNS))


def _select_per_study(series: pd.DataFrame) -> None:
    """Mark, in place, the eligible series with the most slices in each study."""
    if series.empty:
        return
    for _study, group in series.groupby("study_uid", sort=False):
        eligible = group[group["eligible"]]
        if eligible.empty:
            continue
        # Most slices first; then the thinnest slices; the UID breaks ties deterministically.
        ranked = eligible.assign(_thick=eligible["slice_thickness_mm"].fillna(np.inf)).sort_values(
            ["n_slices", "_thick", "series_uid"], ascending=[False, True, True]
        )
        chosen = ranked.index[0]
        series.loc[chosen, "selected"] = True
        series.loc[chosen, "selection"] = (
            f"most slices ({int(ranked.loc[chosen, 'n_slices'])}) of {len(eligible)} eligible "
            f"of {len(group)} series in the study"
        )


def index_tree(root: Path | str, params: SeriesParams, progress: bool = False) -> DicomIndex:
    """Scan a DICOM tree: read every header, assess every series, choose one per study.

    Args:
        root: folder holding DICOM files at any depth, with any names.
        params: selection rules and the number of header-reading processes.
        progress: show a progress bar on stderr.
    """
    paths = find_files(root)
    headers = read_headers(paths, workers=params.workers, progress=progress)
    return index_headers(headers, paths, root, params)

