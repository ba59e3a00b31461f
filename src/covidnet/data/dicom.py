"""DICOM reading and series selection.

Finds DICOM files under a root at any depth (non-DICOM files are listed with a reason, never
fatal), groups them by SeriesInstanceUID, decides for each series whether it can be a model
input (modality CT, axial, not a LOCALIZER, non-contrast, consistent geometry, no duplicate
positions or gaps, enough slices, a decodable transfer syntax) and chooses per study the
eligible series with the most slices. Slices are ordered by their position along the slice
normal (``ImagePositionPatient . (row x col)``), never by file name or InstanceNumber.

Pixels are returned in Hounsfield units: ``HU = stored * RescaleSlope + RescaleIntercept``,
applied per file. RLE, JPEG Lossless, JPEG-LS and JPEG 2000 decode through pydicom's
plugins (pylibjpeg, pyjpegls, openjpeg); an undecodable syntax makes the series ineligible
with a reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from covidnet.errors import CovidnetError, MissingInputError

log = logging.getLogger(__name__)

SERIES_COLUMNS = (
    "patient_id", "study_uid", "series_uid", "study_date", "modality", "series_description",
    "image_type", "contrast", "institution", "manufacturer", "model", "kernel", "transfer_syntax", "rows",
    "columns", "n_files", "n_slices", "pixel_spacing_mm", "slice_thickness_mm",
    "slice_spacing_mm", "eligible", "reason", "selected", "selection",
)
FILE_COLUMNS = ("series_uid", "slice_index", "path", "position_mm", "rescale_intercept", "rescale_slope",
                "pixel_offset", "bits_stored", "pixel_representation")
#: Transfer syntaxes whose pixel data are plain little-endian integers, readable in place.
_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
_DEFLATED = "1.2.840.10008.1.2.1.99"
SKIPPED_COLUMNS = ("path", "reason")


@dataclass(frozen=True)
class SeriesParams:
    """The ``series`` section of params.yaml: when a series is broken, and how to read."""

    min_slices: int
    max_gap_ratio: float
    duplicate_tol_mm: float
    orientation_tol: float
    axial_tol: float
    workers: int


@dataclass(frozen=True)
class SliceHeader:
    """What series selection needs from one DICOM file (read without its pixel data)."""

    path: str
    patient_id: str
    study_uid: str
    series_uid: str
    study_date: str
    modality: str
    image_type: str
    series_description: str
    contrast_agent: str
    institution: str
    manufacturer: str
    model: str
    kernel: str
    transfer_syntax: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    slice_thickness: float | None
    rescale_intercept: float
    rescale_slope: float
    pixel_offset: int = -1
    bits_stored: int = 16
    pixel_representation: int = 0


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


class SeriesReadError(CovidnetError, RuntimeError):
    """Pixel data of a series could not be read; the message names the file."""


def _raw(ds, keyword: str) -> bytes | None:
    """The undecoded value bytes of a little-endian element, or None (absent or already decoded).

    Reading numbers and UIDs straight from these bytes skips pydicom's per-element value
    conversion, half the cost of a header here.
    """
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement

    elem = ds.get_item(tag_for_keyword(keyword))
    if isinstance(elem, RawDataElement) and elem.is_little_endian and elem.value is not None:
        return elem.value
    return None


def _text(ds, keyword: str, ascii_only: bool = False) -> str:
    if ascii_only:  # UI, DA, CS: ASCII by definition
        raw = _raw(ds, keyword)
        if raw is not None:
            return raw.decode("ascii", errors="replace").strip(" \0")
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _floats(ds, keyword: str, n: int) -> tuple[float, ...] | None:
    raw = _raw(ds, keyword)
    value = raw.decode("ascii", errors="replace").strip(" \0").split("\\") if raw is not None else ds.get(keyword)
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _int(ds, keyword: str, default: int) -> int:
    raw = _raw(ds, keyword)
    if raw is not None and len(raw) == 2:  # US
        return int.from_bytes(raw, "little")
    value = ds.get(keyword, default)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def read_header(path: Path | str) -> SliceHeader | str:
    """Read the header of one file.

    Returns:
        The header, or a string giving why the file is skipped (not DICOM, truncated,
        no pixel data).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = str(path)
    try:
        # Defer the pixel data: its offset and length are read, its bytes are not.
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        return "not a DICOM file (no DICM preamble)"
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable DICOM header: {type(exc).__name__}: {exc}"
    if "PixelData" not in ds:
        sop_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
        if ("Rows" in ds and "Columns" in ds) or (sop_class is not None and "Image Storage" in sop_class.name):
            # pydicom stops quietly at the end of a file: an image without its pixels was cut short.
            return (f"an image ({sop_class.name if sop_class else 'Rows/Columns set'}) without complete pixel data: "
                    f"truncated or stripped ({os.path.getsize(path)} bytes)")
        return "no pixel data (e.g. a DICOMDIR or a structured report)"
    raw = ds.get_item(0x7FE00010, keep_deferred=True)
    length = getattr(raw, "length", None)
    tell = getattr(raw, "value_tell", None)
    deflated = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) == _DEFLATED
    # Offsets of a deflated file are in the inflated stream: no size check there.
    if length is not None and tell is not None and length != 0xFFFFFFFF and not deflated:
        size = os.path.getsize(path)
        if tell + length > size:
            return f"truncated: pixel data needs {tell + length} bytes, file has {size}"
    try:
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except AttributeError:
        syntax = ""
    bits_allocated = _int(ds, "BitsAllocated", 0)
    rows, columns = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    # Native 16-bit little-endian pixels can be read in place, row by row, without a decoder.
    offset = -1
    if (syntax in _NATIVE_LE and bits_allocated == 16 and tell is not None
            and length == rows * columns * 2 and _int(ds, "SamplesPerPixel", 1) == 1
            and _int(ds, "NumberOfFrames", 1) == 1):
        offset = int(tell)
    spacing = _floats(ds, "PixelSpacing", 2)
    thickness = _floats(ds, "SliceThickness", 1)
    thickness_mm = thickness[0] if thickness else None
    intercept = _floats(ds, "RescaleIntercept", 1) if "RescaleIntercept" in ds else (0.0,)
    slope = _floats(ds, "RescaleSlope", 1) if "RescaleSlope" in ds else (1.0,)
    if intercept is None or slope is None:
        return f"unparseable RescaleIntercept {ds.get('RescaleIntercept')!r} or RescaleSlope {ds.get('RescaleSlope')!r}"
    intercept, slope = intercept[0], slope[0]
    study_date = _text(ds, "StudyDate", ascii_only=True)
    if len(study_date) == 8 and study_date.isdigit():
        study_date = f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}"
    position = _floats(ds, "ImagePositionPatient", 3)
    return SliceHeader(
        path=path,
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID", ascii_only=True),
        series_uid=_text(ds, "SeriesInstanceUID", ascii_only=True),
        study_date=study_date,
        modality=_text(ds, "Modality", ascii_only=True),
        image_type=_text(ds, "ImageType", ascii_only=True),
        series_description=_text(ds, "SeriesDescription"),
        contrast_agent=_text(ds, "ContrastBolusAgent"),
        institution=_text(ds, "InstitutionName"),
        manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        kernel=_text(ds, "ConvolutionKernel"),
        transfer_syntax=syntax,
        rows=rows,
        columns=columns,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=position,  # type: ignore[arg-type]
        slice_thickness=thickness_mm,
        rescale_intercept=intercept,
        rescale_slope=slope,
        pixel_offset=offset,
        bits_stored=_int(ds, "BitsStored", bits_allocated),
        pixel_representation=_int(ds, "PixelRepresentation", 0),
    )


def _read_headers(paths: Sequence[str]) -> list[SliceHeader | str]:
    return [read_header(p) for p in paths]


def read_headers(paths: Sequence[Path | str], workers: int = 1, progress: bool = False) -> list[SliceHeader | str]:
    """Read many headers, in ``workers`` processes when there are enough files.

    Returns:
        One entry per path, in the order given: a :class:`SliceHeader` or a skip reason.
    """
    paths = [str(p) for p in paths]
    if workers <= 1 or len(paths) < 64:
        it: Iterable[SliceHeader | str] = map(read_header, paths)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(paths), desc="headers", unit="file", leave=False)
        return list(it)
    chunk = max(16, len(paths) // (workers * 8))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    out: list[SliceHeader | str] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_read_headers, chunks)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(chunks), desc="headers", unit="chunk", leave=False)
        for part in results:
            out.extend(part)
    return out


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


def find_files(root: Path | str) -> list[Path]:
    """Every regular file under ``root`` at any depth, sorted, hidden files included."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: DICOM folder not found")
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            out.append(Path(dirpath) / name)
    return sorted(out)


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


def read_stored(path: Path | str, pixel_offset: int = -1, bits_stored: int = 16, pixel_representation: int = 0,
                shape: tuple[int, int] | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Read one file's stored pixel values (before the rescale), optionally only some rows.

    Native little-endian 16-bit pixel data (``pixel_offset >= 0``, with ``shape`` known) is
    read in place, only the rows asked for; anything else goes through pydicom's decoders.

    Args:
        path: the file.
        pixel_offset: byte offset of native pixel data, or -1 to decode with pydicom.
        bits_stored: BitsStored (values are masked or sign-extended to it).
        pixel_representation: 0 unsigned, 1 signed.
        shape: ``(Rows, Columns)``; needed for the in-place read.
        rows: ``(first, stop)`` rows to return; all rows when None.

    Returns:
        ``(n_rows, W)`` integer array.

    Raises:
        SeriesReadError: the pixel data cannot be read or decoded; the message names the file.
    """
    if pixel_offset >= 0 and shape is not None:
        r0, r1 = rows if rows is not None else (0, shape[0])
        dtype = np.dtype("<i2" if pixel_representation else "<u2")
        count = (r1 - r0) * shape[1]
        try:
            out = np.fromfile(path, dtype=dtype, count=count, offset=pixel_offset + r0 * shape[1] * 2)
        except OSError as exc:
            raise SeriesReadError(f"{path}: cannot read pixel data: {exc}") from exc
        if out.size != count:
            raise SeriesReadError(f"{path}: truncated pixel data ({out.size} of {count} values)")
        out = out.reshape(r1 - r0, shape[1])
        if bits_stored < 16:  # keep only the stored bits (sign-extended when signed), as pydicom does
            shift = 16 - bits_stored
            out = (out << shift) >> shift if pixel_representation else out & ((1 << bits_stored) - 1)
        return out
    import pydicom

    try:
        # Through a dataset (not pydicom.pixels.pixel_array(path)): that also reads deflated files.
        stored = pydicom.dcmread(str(path)).pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; re-raised naming the file
        raise SeriesReadError(f"{path}: cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    if shape is not None and stored.shape != tuple(shape):
        raise SeriesReadError(f"{path}: slice size {stored.shape} differs from the series' {tuple(shape)}")
    return stored if rows is None else stored[rows[0] : rows[1]]


def to_hu(stored: np.ndarray, intercept: float, slope: float) -> np.ndarray:
    """``stored * slope + intercept`` as float32 HU."""
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def read_volume_hu(files: pd.DataFrame, root: Path | str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a whole series (rows of the files table, in slice order) to HU.

    Returns:
        ``(D, H, W)`` float32 volume in HU, D in slice order.
    """
    root = Path(root)
    return np.stack([
        to_hu(read_stored(root / r.path, r.pixel_offset, r.bits_stored, r.pixel_representation, shape),
              r.rescale_intercept, r.rescale_slope)
        for r in files.itertuples()
    ])
