"""Pixel data to Hounsfield units (HU): one slice's stored values, a whole series' volume.

:func:`read_stored` reads one file's stored values, optionally only some rows: native
little-endian 16-bit pixel data in place with numpy (its byte offset comes from
:func:`covidnet.data.dicom.read_header`), anything else through pydicom's decoders (RLE,
JPEG Lossless, JPEG-LS, JPEG 2000, deflated). :func:`to_hu` applies
``HU = stored * RescaleSlope + RescaleIntercept``, per file. :func:`read_volume_hu` reads the
files table of one series (:data:`covidnet.data.series.FILE_COLUMNS`, in slice order) to a
``(D, H, W)`` float32 volume in HU. A file that cannot be read or decoded raises
:class:`SeriesReadError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.errors import CovidnetError


class SeriesReadError(CovidnetError, RuntimeError):
    """Pixel data of a series could not be read; the message names the file."""


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
