"""The array layer of preprocessing, against torch's interpolate as the independent reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidnet.preprocess.stage import PreprocessParams, clip_scale, crop_start, linear_taps, resize_crop


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


@pytest.mark.parametrize("field,value,message", [
    ("crop", 200, "crop 200 must not exceed preprocess.size 128"),
    ("hu_max", -2000.0, "hu_max -2000.0 must exceed"),
    ("depth", 0, "depth must be >= 1"),
    ("dtype", "int8", "dtype 'int8' is not one of"),
])
def test_params_validated(field, value, message):
    kwargs = dict(hu_min=-1024.0, hu_max=1024.0, depth=32, size=128, crop=96, dtype="float16",
                  body_hu=-500.0, lung_hu=(-950.0, -400.0), workers=1)
    kwargs[field] = value
    with pytest.raises(ValueError, match=message):
        PreprocessParams(**kwargs)
