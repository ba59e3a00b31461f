"""Small DICOM series of known content for the tests of covidnet.data (dicom, series, pixels).

Real files written by :func:`covidnet.synthetic.dicom_writer.write_series` into nested random
folders with random names, plus helpers to edit or cut them afterwards. No mocks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from covidnet.data.series import SeriesParams
from covidnet.synthetic.dicom_writer import SeriesHeader, write_series

PARAMS = SeriesParams(min_slices=8, max_gap_ratio=1.5, duplicate_tol_mm=0.01, orientation_tol=1e-3, axial_tol=0.1,
                      workers=1)
SPACING = (2.5, 0.75, 0.75)  # (slice step, row, column) mm
SHAPE = (12, 16, 24)  # rows != columns, so a transposed read cannot pass
SHAPE_J2K = (12, 32, 40)  # synth's jpeg2000 needs slices of at least 32x32
CODECS = ("none", "rle", "jpeg_ls", "jpeg2000")


def random_volume(seed: int, shape: tuple[int, int, int] = SHAPE, slope: float = 1.0) -> np.ndarray:
    """Random HU in [-1024, 3071], whole multiples of ``slope`` (exactly representable): ``(D, H, W)``."""
    rng = np.random.default_rng(seed)
    return (rng.integers(round(-1024 / slope), round(3071 / slope) + 1, shape) * slope).astype(np.float32)


def _hex(rng: np.random.Generator, n: int = 12) -> str:
    return "".join(rng.choice(list("0123456789abcdef"), n))


def write_random_series(root: Path, volume: np.ndarray, seed: int = 0, *, header: SeriesHeader | None = None,
                        skip_slices: tuple[int, ...] = (), **kwargs: object) -> list[Path]:
    """One series in a nested random folder under ``root``, random file names (some ``.dcm``)."""
    rng = np.random.default_rng(seed)
    folder = root / _hex(rng, 6) / _hex(rng, 4)
    n = volume.shape[0] - len(skip_slices)
    names = [_hex(rng) + (".dcm" if rng.random() < 0.5 else "") for _ in range(n)]
    header = header or SeriesHeader(uid_entropy=f"series-{seed}")
    return write_series(folder, volume, SPACING, header=header, file_names=names, skip_slices=skip_slices, **kwargs)


def edit_dataset(path: Path, change: Callable[[pydicom.Dataset], object]) -> None:
    """Read ``path``, apply ``change`` to the dataset, save it back."""
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def relative_paths(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def only_series(index):
    """The one row of ``index.series`` (asserts there is exactly one)."""
    assert len(index.series) == 1, index.series
    return index.series.iloc[0]


def cut_file(path: Path, fraction: float) -> None:
    """Keep only the first ``fraction`` of the file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
