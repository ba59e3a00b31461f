"""Pure functions on one volume: the paper's clip, scale, linear resize and centre crop.

Liu et al. (2021): clip to [-1024, 1024] HU, scale linearly to [0, 1], resize the volume to
64 axial slices of 512 x 512 by linear interpolation, crop the central 384 x 384 of each
slice; model input ``(1, 64, 384, 384)``. D (``depth``), R (``size``) and C (``crop``) come
from :class:`covidnet.preprocess.params.PreprocessParams`.

:func:`resize_crop` is the plain reference (trilinear resize of the whole clipped volume,
``align_corners=False``, then a centre crop). :func:`linear_taps`, :func:`_to_unit` and
:func:`_lerp` are the pieces of the fast path :func:`covidnet.preprocess.series.preprocess_series`,
which computes the same numbers from only the slices, rows and columns the output needs. The
centre crop starts at ``R // 2 - C // 2`` (MONAI's ``CenterSpatialCrop`` convention).
"""

from __future__ import annotations

import numpy as np


def clip_scale(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to ``[hu_min, hu_max]`` and scale linearly to ``[0, 1]``.

    Args:
        hu: any shape, HU.

    Returns:
        float32 array of the same shape in [0, 1].
    """
    out = np.clip(np.asarray(hu, dtype=np.float32), hu_min, hu_max)
    out -= np.float32(hu_min)
    out *= np.float32(1.0 / (hu_max - hu_min))
    return out


def linear_taps(n_in: int, n_out: int, start: int = 0, count: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear resizing, ``align_corners=False``.

    Output sample ``i`` sits at source coordinate ``(i + 0.5) * n_in / n_out - 0.5``,
    clamped at 0 (as ``torch.nn.functional.interpolate``); its value is
    ``(1 - w) * x[lo] + w * x[hi]``.

    Args:
        n_in: source length.
        n_out: resized length.
        start: first output sample wanted (e.g. a crop offset).
        count: number of output samples wanted (default: to the end).

    Returns:
        ``(lo, hi, w)``, each of length ``count``: int64, int64, float32.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"linear_taps: lengths must be >= 1, got n_in={n_in}, n_out={n_out}")
    count = n_out - start if count is None else count
    i = np.arange(start, start + count, dtype=np.float64)
    src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).astype(np.float32)
    return lo, hi, w


def crop_start(size: int, crop: int) -> int:
    """First index of the centre crop of length ``crop`` in ``size`` (MONAI's convention)."""
    return size // 2 - crop // 2


def resize_crop(volume: np.ndarray, depth: int, size: int, crop: int) -> np.ndarray:
    """Reference: trilinear resize of a whole volume to ``(depth, size, size)``, centre crop.

    Slow and memory hungry on purpose (it is the plain definition); tests compare the fast
    path :func:`covidnet.preprocess.series.preprocess_series` against it.

    Args:
        volume: ``(D_in, H, W)`` float32, already clipped and scaled.

    Returns:
        ``(depth, crop, crop)`` float32.
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    resized = F.interpolate(t, size=(depth, size, size), mode="trilinear", align_corners=False)[0, 0]
    s = crop_start(size, crop)
    return resized[:, s : s + crop, s : s + crop].numpy()


def _to_unit(stored: np.ndarray, intercept: float, slope: float, hu_min: float, hu_max: float) -> np.ndarray:
    """Stored values -> HU -> clipped and scaled to [0, 1], fused into one float32 pass.

    Equals ``clip_scale(stored * slope + intercept, hu_min, hu_max)`` up to float32 rounding.
    """
    span = hu_max - hu_min
    out = stored.astype(np.float32)
    out *= np.float32(slope / span)
    out += np.float32((intercept - hu_min) / span)
    return np.clip(out, 0.0, 1.0, out=out)


def _lerp(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` with taps from :func:`linear_taps`; a pure crop when
    every weight is 0 (same size in and out), so no arithmetic is done then."""
    if not w.any():
        return np.take(x, lo, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(x, lo, axis=axis)
    a *= 1.0 - w
    a += np.take(x, hi, axis=axis) * w
    return a
