"""Series-selection and preprocessing settings of the preprocess tests, and a volume that exercises the clip."""

import numpy as np

from covidnet.data.series import SeriesParams
from covidnet.preprocess.params import PreprocessParams

SERIES = SeriesParams(min_slices=4, max_gap_ratio=1.5, duplicate_tol_mm=0.01, orientation_tol=1e-3, axial_tol=0.1,
                      workers=1)


def preprocess_params(**kw) -> PreprocessParams:
    """Small preprocessing settings (``(1, 8, 30, 30)`` tensors), with ``kw`` replacing any of them."""
    base = dict(hu_min=-1024.0, hu_max=1024.0, depth=8, size=40, crop=30, dtype="float32",
                body_hu=-500.0, lung_hu=(-950.0, -400.0), workers=1)
    return PreprocessParams(**{**base, **kw})


def hu_volume(d=21, h=36, w=44, seed=0) -> np.ndarray:
    """``(D, H, W)`` HU beyond the clip window on purpose, with an air pocket in a body block."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(-1500, 2000, size=(d, h, w)).astype(np.float64)
    vol[:, 10:20, 12:30] = -800
    return vol
