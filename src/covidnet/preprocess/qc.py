"""Per-scan QC values: HU percentiles inside the body, the lung fraction, the noise, the slices.

They are measured while a series is preprocessed (:func:`covidnet.preprocess.series.preprocess_series`,
on a sample of the slices it reads, every 2nd pixel) and land in ``qc.csv``; the drift
reference and the prediction log compare serving scans with training scans on these values.
"""

from __future__ import annotations

import numpy as np

from covidnet.preprocess.params import PreprocessParams

#: QC values measured on the pixels of a series (:func:`measure_qc`): HU percentiles inside the body,
#: the lung fraction and the noise in HU.
PIXEL_QC = ("hu_p05", "hu_p25", "hu_p50", "hu_p75", "hu_p95", "lung_fraction", "noise_hu")
#: Every per-scan QC value :func:`covidnet.preprocess.series.preprocess_series` returns: the pixel ones and
#: the series' slice count and median slice spacing (mm). The drift reference and the prediction log use these.
QC_VALUES = (*PIXEL_QC, "n_slices", "slice_spacing_mm")


def measure_qc(sample_hu: np.ndarray, positions_mm: np.ndarray, params: PreprocessParams) -> dict:
    """The :data:`QC_VALUES` of one series.

    Args:
        sample_hu: ``(k, h, w)``, a sample of the series' slices in HU (every 2nd pixel).
        positions_mm: every slice's position along the slice normal (mm), in slice order.
        params: ``body_hu`` and ``lung_hu`` are read.

    Returns:
        One float per :data:`PIXEL_QC` name, then ``n_slices`` (int) and ``slice_spacing_mm``
        (the median step, NaN for a single slice).
    """
    n = len(positions_mm)
    return {**_pixel_qc(sample_hu, params), "n_slices": n,
            "slice_spacing_mm": float(np.median(np.diff(positions_mm))) if n > 1 else float("nan")}


def _pixel_qc(sample_hu: np.ndarray, params: PreprocessParams) -> dict:
    """QC values from a sample of slices ``(k, h, w)`` in HU (every 2nd pixel)."""
    body = sample_hu > params.body_hu
    # Lungs sit inside the body outline: count lung-window voxels between the first and the
    # last body voxel of each row, as a fraction of that span.
    any_row = body.any(axis=2)
    first = np.where(any_row, body.argmax(axis=2), 0)
    last = np.where(any_row, body.shape[2] - 1 - body[:, :, ::-1].argmax(axis=2), -1)
    cols = np.arange(body.shape[2])[None, None, :]
    inside = (cols >= first[..., None]) & (cols <= last[..., None])
    lung = inside & (sample_hu >= params.lung_hu[0]) & (sample_hu <= params.lung_hu[1])
    body_vals = sample_hu[body]
    pct = np.percentile(body_vals, [5, 25, 50, 75, 95]) if body_vals.size else [np.nan] * 5
    # Noise: robust spread of horizontal neighbour differences in soft tissue (0..100 HU).
    diff = np.diff(sample_hu, axis=2)
    soft = (sample_hu[:, :, 1:] > 0) & (sample_hu[:, :, 1:] < 100) & (sample_hu[:, :, :-1] > 0) & (sample_hu[:, :, :-1] < 100)
    d = diff[soft]
    noise = float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)) if d.size > 100 else float("nan")
    return {
        "hu_p05": float(pct[0]), "hu_p25": float(pct[1]), "hu_p50": float(pct[2]),
        "hu_p75": float(pct[3]), "hu_p95": float(pct[4]),
        "lung_fraction": float(lung.sum() / max(inside.sum(), 1)),
        "noise_hu": noise,
    }
