"""Read DICOM headers: find the files under a folder and read what series selection needs.

:func:`find_files` lists every file under a root at any depth, with any name;
:func:`read_header` reads one file's header into a :class:`SliceHeader` without decoding its
pixel data (only its offset and length are read), or returns why the file is skipped (not
DICOM, truncated, no pixel data): a non-DICOM file is never fatal. :func:`read_headers` reads
many, in several processes when there are enough files. Numbers and UIDs are read straight
from the undecoded little-endian element bytes where possible, which halves the cost of a
header.

What happens next: :mod:`covidnet.data.series` groups the headers into series and chooses
one per study, :mod:`covidnet.data.pixels` reads the chosen slices to HU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from covidnet.errors import MissingInputError
from covidnet.progress import bar

#: Transfer syntaxes whose pixel data are plain little-endian integers, readable in place.
_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
_DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class SliceHeader:
    """What series selection needs from one DICOM file (read without its pixel data).

    Attributes:
        path: the file, as given to :func:`read_header`.
        study_date: ``StudyDate`` as ``YYYY-MM-DD`` when it is 8 digits, else as found.
        image_type, series_description, contrast_agent: ``ImageType`` (values joined by
            ``\\``), ``SeriesDescription``, ``ContrastBolusAgent`` (empty: none).
        transfer_syntax: ``TransferSyntaxUID`` of the file meta (empty when missing).
        rows, columns: ``Rows``, ``Columns`` (pixels).
        pixel_spacing: ``PixelSpacing`` ``(row, column)`` mm; None when missing or unparseable.
        orientation: ``ImageOrientationPatient``, 6 direction cosines; None likewise.
        position: ``ImagePositionPatient`` ``(x, y, z)`` mm of the first pixel; None likewise.
        slice_thickness: ``SliceThickness`` mm, or None.
        rescale_intercept, rescale_slope: ``HU = stored * slope + intercept`` (0 and 1 when absent).
        pixel_offset: byte offset of native little-endian 16-bit pixel data, readable in
            place; -1 when a decoder is needed.
        bits_stored, pixel_representation: ``BitsStored``, ``PixelRepresentation`` (0 unsigned,
            1 signed).
    """

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
        return list(bar(it, total=len(paths), desc="headers", unit="file", progress=progress, leave=False))
    chunk = max(16, len(paths) // (workers * 8))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    out: list[SliceHeader | str] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_read_headers, chunks)
        for part in bar(results, total=len(chunks), desc="headers", unit="chunk", progress=progress, leave=False):
            out.extend(part)
    return out


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
