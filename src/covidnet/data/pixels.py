"""Pixel data to Hounsfield units (HU): one slice's stored values, a whole series' volume.

:func:`read_stored` reads one file's stored values, optionally only some rows and columns:
native little-endian 16-bit pixel data in place with numpy (its byte offset comes from
:func:`covidnet.data.dicom.read_header`), compressed pixel data through a decoder chosen per
transfer syntax (:data:`SYNTAXES`, :data:`DECODERS`), anything else (deflated, big endian)
through pydicom. :func:`to_hu` applies ``HU = stored * RescaleSlope + RescaleIntercept``, per
file. :func:`read_volume_hu` reads the files table of one series
(:data:`covidnet.data.series.FILE_COLUMNS`, in slice order) to a ``(D, H, W)`` float32 volume
in HU. A file that cannot be read or decoded raises :class:`SeriesReadError` naming the file.

Every decoder gives the same stored values as pydicom's ``pixel_array`` (tested per transfer
syntax, signedness and rescale); they differ only in speed (``benchmarks/preprocess.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.errors import CovidnetError

#: Short names of the compressed transfer syntaxes (the keys of ``preprocess.decoders``).
SYNTAXES: dict[str, tuple[str, ...]] = {
    "rle": ("1.2.840.10008.1.2.5",),
    "jpeg_ls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "jpeg2000": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "jpeg_lossless": ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
}
_SYNTAX_NAME = {uid: name for name, uids in SYNTAXES.items() for uid in uids}

#: Decoders by name: ``gdcm`` is GDCM's own reader (``gdcm.ImageRegionReader``: the file is
#: read and decoded in C++, only the rows and columns asked for are copied out; JPEG-LS,
#: JPEG 2000, JPEG Lossless); ``pylibjpeg``, ``pyjpegls``, ``gdcm-pydicom`` and ``pillow`` are
#: pydicom's plugins of those names; ``pydicom`` is pydicom with its own choice of plugin
#: (its native RLE decoder for RLE).
DECODERS = ("gdcm", "pyjpegls", "pylibjpeg", "gdcm-pydicom", "pillow", "pydicom")
_GDCM_SYNTAXES = ("jpeg_ls", "jpeg2000", "jpeg_lossless")  # its region reader fails on RLE here


class SeriesReadError(CovidnetError, RuntimeError):
    """Pixel data of a series could not be read; the message names the file."""


def syntax_name(transfer_syntax: str) -> str:
    """The short name of a compressed transfer syntax (:data:`SYNTAXES`), or ``""``."""
    return _SYNTAX_NAME.get(str(transfer_syntax), "")


def check_decoders(decoders: Mapping[str, Sequence[str]] | None) -> None:
    """Raise :class:`covidnet.params.ParamsError` naming ``preprocess.decoders`` for an unknown syntax or decoder."""
    from covidnet.params import ParamsError

    for syntax, names in (decoders or {}).items():
        if syntax not in SYNTAXES:
            raise ParamsError(f"preprocess.decoders: {syntax!r} is not one of {', '.join(SYNTAXES)}")
        bad = [n for n in names if n not in DECODERS]
        if bad:
            raise ParamsError(f"preprocess.decoders.{syntax}: {bad} not among {', '.join(DECODERS)}")


@functools.lru_cache(maxsize=None)
def decoder_available(name: str, syntax: str) -> bool:
    """Whether decoder ``name`` (:data:`DECODERS`) is installed and decodes ``syntax`` (a short name)."""
    if name not in DECODERS:
        raise ValueError(f"decoder {name!r} is not one of {', '.join(DECODERS)}")
    if name == "gdcm":
        if syntax not in _GDCM_SYNTAXES:
            return False
        try:
            import gdcm  # noqa: F401
        except ImportError:
            return False
        return True
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    try:
        decoder = get_decoder(UID(SYNTAXES[syntax][0]))
    except NotImplementedError:
        return False
    if name == "pydicom":
        return decoder.is_available
    return (name.removesuffix("-pydicom")) in decoder.available_plugins


def _mask(out: np.ndarray, bits_stored: int, pixel_representation: int) -> np.ndarray:
    """Keep only the stored bits (sign-extended when signed), as pydicom does."""
    if bits_stored < 16 and out.dtype.itemsize == 2:
        shift = 16 - bits_stored
        out = (out << shift) >> shift if pixel_representation else out & ((1 << bits_stored) - 1)
    return out


def _read_native(path, pixel_offset, bits_stored, pixel_representation, shape, rows) -> np.ndarray:
    r0, r1 = rows if rows is not None else (0, shape[0])
    dtype = np.dtype("<i2" if pixel_representation else "<u2")
    count = (r1 - r0) * shape[1]
    try:
        out = np.fromfile(path, dtype=dtype, count=count, offset=pixel_offset + r0 * shape[1] * 2)
    except OSError as exc:
        raise SeriesReadError(f"{path}: cannot read pixel data: {exc}") from exc
    if out.size != count:
        raise SeriesReadError(f"{path}: truncated pixel data ({out.size} of {count} values)")
    return _mask(out.reshape(r1 - r0, shape[1]), bits_stored, pixel_representation)


_GDCM_QUIET = False


def _read_gdcm(path: str, rows: tuple[int, int] | None, cols: tuple[int, int] | None,
               bits_stored: int, pixel_representation: int, shape: tuple[int, int] | None) -> np.ndarray:
    """GDCM's region reader: the file parsed and decoded in C++; ``rows`` x ``cols`` copied out."""
    global _GDCM_QUIET
    import gdcm

    if not _GDCM_QUIET:  # errors come back as a False status, raised below naming the file
        gdcm.Trace.WarningOff()
        gdcm.Trace.ErrorOff()
        _GDCM_QUIET = True
    reader = gdcm.ImageRegionReader()
    reader.SetFileName(path)
    if not reader.ReadInformation():
        raise ValueError("GDCM cannot read the header")
    image = reader.GetFile()
    dims = gdcm.ImageHelper.GetDimensionsValue(image)  # (columns, rows, frames)
    fmt = gdcm.ImageHelper.GetPixelFormatValue(image)
    if fmt.GetSamplesPerPixel() != 1 or fmt.GetBitsAllocated() != 16 or (len(dims) > 2 and dims[2] != 1):
        raise ValueError(f"GDCM region reader: not one 16-bit grey frame ({dims}, {fmt.GetBitsAllocated()} bits)")
    if shape is not None and (int(dims[1]), int(dims[0])) != tuple(shape):
        raise SeriesReadError(f"{path}: slice size {(int(dims[1]), int(dims[0]))} differs from the series' "
                              f"{tuple(shape)}")
    r0, r1 = rows if rows is not None else (0, int(dims[1]))
    c0, c1 = cols if cols is not None else (0, int(dims[0]))
    box = gdcm.BoxRegion()
    box.SetDomain(c0, c1 - 1, r0, r1 - 1, 0, 0)
    reader.SetRegion(box)
    buf = bytearray(reader.ComputeBufferLength())
    if len(buf) != (r1 - r0) * (c1 - c0) * 2 or not reader.ReadIntoBuffer(buf):
        raise ValueError("GDCM cannot decode the pixel data")
    out = np.frombuffer(buf, dtype="<i2" if pixel_representation else "<u2").reshape(r1 - r0, c1 - c0)
    return _mask(out, bits_stored, pixel_representation)


def _read_pydicom(path: str, plugin: str) -> np.ndarray:
    import pydicom

    # Through a dataset (not pydicom.pixels.pixel_array(path)): that also reads deflated files.
    ds = pydicom.dcmread(path)
    if plugin:
        ds.pixel_array_options(decoding_plugin=plugin)
    return ds.pixel_array


def read_stored(path: Path | str, pixel_offset: int = -1, bits_stored: int = 16, pixel_representation: int = 0,
                shape: tuple[int, int] | None = None, rows: tuple[int, int] | None = None,
                cols: tuple[int, int] | None = None,
                decoders: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """Read one file's stored pixel values (before the rescale), optionally only some rows and columns.

    Native little-endian 16-bit pixel data (``pixel_offset >= 0``, with ``shape`` known) is
    read in place, only the rows asked for. Compressed pixel data goes through the decoders
    that ``decoders`` lists for its transfer syntax, in order: the first one installed is used,
    and when it cannot decode the file the next is tried. Anything else, and a syntax that
    ``decoders`` does not list, goes through pydicom's own choice.

    Args:
        path: the file.
        pixel_offset: byte offset of native pixel data, or -1 to decode.
        bits_stored: BitsStored (values are masked or sign-extended to it).
        pixel_representation: 0 unsigned, 1 signed.
        shape: ``(Rows, Columns)``; needed for the in-place read, checked otherwise.
        rows: ``(first, stop)`` rows to return; all rows when None.
        cols: ``(first, stop)`` columns to return; all columns when None.
        decoders: short syntax name (:data:`SYNTAXES`) -> decoder names (:data:`DECODERS`).

    Returns:
        ``(n_rows, n_cols)`` integer array.

    Raises:
        SeriesReadError: the pixel data cannot be read or decoded; the message names the file
            (and each decoder's error).
    """
    if pixel_offset >= 0 and shape is not None:
        out = _read_native(path, pixel_offset, bits_stored, pixel_representation, shape, rows)
        return out if cols is None else out[:, cols[0] : cols[1]]
    path = str(path)
    names: Sequence[str] = ("pydicom",)
    if decoders:
        from pydicom.filereader import read_file_meta_info

        try:
            syntax = syntax_name(read_file_meta_info(path).get("TransferSyntaxUID", ""))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types; re-raised naming the file
            raise SeriesReadError(f"{path}: cannot read the file meta: {type(exc).__name__}: {exc}") from exc
        names = [n for n in decoders.get(syntax, ()) if decoder_available(n, syntax)] or names
    errors = []
    for name in names:
        try:
            if name == "gdcm":
                return _read_gdcm(path, rows, cols, bits_stored, pixel_representation, shape)
            stored = _read_pydicom(path, "" if name == "pydicom" else name.removesuffix("-pydicom"))
        except SeriesReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise many types; re-raised naming the file
            errors.append((name, exc))
            continue
        if shape is not None and stored.shape != tuple(shape):
            raise SeriesReadError(f"{path}: slice size {stored.shape} differs from the series' {tuple(shape)}")
        if rows is not None:
            stored = stored[rows[0] : rows[1]]
        return stored if cols is None else stored[:, cols[0] : cols[1]]
    detail = "; ".join(f"{n}: {type(e).__name__}: {e}" for n, e in errors)
    raise SeriesReadError(f"{path}: cannot decode pixel data ({detail})") from errors[-1][1]


def to_hu(stored: np.ndarray, intercept: float, slope: float) -> np.ndarray:
    """``stored * slope + intercept`` as float32 HU."""
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def read_volume_hu(files: pd.DataFrame, root: Path | str, shape: tuple[int, int] | None = None,
                   decoders: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """Read a whole series (rows of the files table, in slice order) to HU.

    Args:
        decoders: as :func:`read_stored` (None: pydicom's own choice).

    Returns:
        ``(D, H, W)`` float32 volume in HU, D in slice order.
    """
    root = Path(root)
    return np.stack([
        to_hu(read_stored(root / r.path, r.pixel_offset, r.bits_stored, r.pixel_representation, shape,
                          decoders=decoders),
              r.rescale_intercept, r.rescale_slope)
        for r in files.itertuples()
    ])
