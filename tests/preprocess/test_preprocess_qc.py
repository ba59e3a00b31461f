"""Per-scan QC values on volumes of known content: body percentiles, lung fraction, noise, slices."""

import math

import numpy as np
import pytest

from covidnet.preprocess.params import PreprocessParams
from covidnet.preprocess.qc import PIXEL_QC, QC_VALUES, measure_qc

PARAMS = PreprocessParams(hu_min=-1024.0, hu_max=1024.0, depth=8, size=32, crop=24, dtype="float32",
                          body_hu=-500.0, lung_hu=(-950.0, -400.0), workers=1)


def _phantom(noise_sd=10.0, seed=0):
    """Two slices (2, 40, 40): air, a 30 x 30 body of soft tissue (50 HU + noise), a 20 x 10 lung (-850 HU) inside."""
    sample = np.full((2, 40, 40), -1000.0)
    sample[:, 5:35, 5:35] = 50.0 + np.random.default_rng(seed).normal(0.0, noise_sd, size=(2, 30, 30))
    sample[:, 10:30, 10:20] = -850.0
    return sample


def test_values_in_order_with_known_content():
    qc = measure_qc(_phantom(), np.array([0.0, 2.5, 5.0, 7.5, 12.5]), PARAMS)
    assert tuple(qc) == QC_VALUES and QC_VALUES[: len(PIXEL_QC)] == PIXEL_QC
    assert qc["lung_fraction"] == pytest.approx(400 / 1800)  # lung pixels / pixels inside the body outline
    assert qc["noise_hu"] == pytest.approx(10.0, rel=0.15)
    assert qc["hu_p50"] == pytest.approx(50.0, abs=2.0) and qc["hu_p05"] < qc["hu_p50"] < qc["hu_p95"]
    assert qc["n_slices"] == 5 and isinstance(qc["n_slices"], int)
    assert qc["slice_spacing_mm"] == 2.5  # the median step


def test_noise_follows_the_noise_added():
    low = measure_qc(_phantom(5.0), np.array([0.0, 1.0]), PARAMS)["noise_hu"]
    high = measure_qc(_phantom(20.0), np.array([0.0, 1.0]), PARAMS)["noise_hu"]
    assert high > 3 * low


def test_degenerate_inputs_give_nan_not_errors():
    air = np.full((1, 16, 16), -1000.0)
    qc = measure_qc(air, np.array([3.0]), PARAMS)
    assert all(math.isnan(qc[k]) for k in ("hu_p05", "hu_p50", "hu_p95", "noise_hu", "slice_spacing_mm"))
    assert qc["lung_fraction"] == 0.0 and qc["n_slices"] == 1
