"""PreprocessParams: validation, the key that names tensors, the plain dict logged with models."""

import dataclasses

import pytest

from covidnet.params import load_params, section
from covidnet.preprocess.params import PreprocessParams, params_dict
from support import REPO


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


def test_key_changes_with_the_tensor_not_with_workers_or_qc():
    p = section(load_params(REPO / "params.yaml"), "preprocess", PreprocessParams)
    assert len(p.key) == 12
    assert dataclasses.replace(p, workers=7, body_hu=-300.0, lung_hu=(-900.0, -500.0)).key == p.key
    assert dataclasses.replace(p, depth=p.depth + 1).key != p.key
    assert dataclasses.replace(p, dtype="float32" if p.dtype == "float16" else "float16").key != p.key


def test_params_dict_round_trips():
    p = section(load_params(REPO / "params.yaml", profile="tiny"), "preprocess", PreprocessParams)
    d = params_dict(p)
    assert d["crop"] == 24 and PreprocessParams(**d) == p
