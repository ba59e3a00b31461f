"""The array layer of preprocessing, against torch's interpolate as the independent reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidnet.preprocess.array import _lerp, _to_unit, clip_scale, crop_start, linear_taps, resize_crop


@pytest.mark.parametrize("n_in,n_out", [(300, 64), (17, 8), (8, 17), (5, 5), (1, 4), (129, 128)])
def test_linear_taps_match_torch_1d(n_in, n_out):
    x = np.random.default_rng(0).normal(size=n_in).astype(np.float32)
    lo, hi, w = linear_taps(n_in, n_out)
    ours = x[lo] * (1 - w) + x[hi] * w
    ref = F.interpolate(torch.from_numpy(x)[None, None], size=n_out, mode="linear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_linear_taps_window():
    lo, hi, w = linear_taps(300, 512)
    lo2, hi2, w2 = linear_taps(300, 512, start=64, count=384)
    np.testing.assert_array_equal(lo[64:448], lo2)
    np.testing.assert_array_equal(w[64:448], w2)


def test_clip_scale_range_and_endpoints():
    hu = np.array([-3000, -1024, 0, 1024, 3071], dtype=np.int16)
    np.testing.assert_allclose(clip_scale(hu, -1024, 1024), [0, 0, 0.5, 1, 1])


def test_crop_start_is_monai_centre():
    assert crop_start(512, 384) == 64
    assert crop_start(128, 96) == 16
    assert crop_start(7, 4) == 1


def test_resize_crop_shape():
    vol = np.random.default_rng(1).random((20, 40, 40), dtype=np.float32)
    assert resize_crop(vol, 8, 32, 24).shape == (8, 24, 24)


@pytest.mark.parametrize("intercept,slope", [(-1024.0, 1.0), (0.0, 0.5), (-2048.0, 2.0)])
def test_to_unit_is_hu_clip_scale_in_one_pass(intercept, slope):
    stored = np.random.default_rng(2).integers(-2000, 4096, size=(5, 7)).astype(np.int16)
    ours = _to_unit(stored, intercept, slope, -1024.0, 1024.0)
    ref = clip_scale(stored * slope + intercept, -1024.0, 1024.0)
    assert ours.dtype == np.float32 and ours.shape == stored.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_lerp_same_size_is_a_pure_crop_and_otherwise_matches_numpy_interp():
    x = np.random.default_rng(3).random((4, 10, 6), dtype=np.float32)
    lo, hi, w = linear_taps(10, 10, start=2, count=5)
    np.testing.assert_array_equal(_lerp(x, lo, hi, w, axis=1), x[:, 2:7])
    lo, hi, w = linear_taps(6, 9)
    ref = np.stack([[np.interp(np.maximum((np.arange(9) + 0.5) * 6 / 9 - 0.5, 0), np.arange(6), row) for row in plane]
                    for plane in x])
    np.testing.assert_allclose(_lerp(x, lo, hi, w, axis=2), ref, atol=1e-6)
