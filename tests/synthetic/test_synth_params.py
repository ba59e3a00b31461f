"""Tests of the ``synth`` section (covidnet.synthetic.params): validation names the field and the value."""

from __future__ import annotations

import pytest

from covidnet.params import ParamsError, load_params, section
from covidnet.synthetic.params import SynthParams
from support import REPO

PARAMS_FILE = REPO / "params.yaml"


def _raw_synth() -> dict:
    return load_params(PARAMS_FILE, profile="tiny")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("difficulty",), 1.5, "synth.difficulty: 1.5 is outside [0, 1]"),
        (("difficulty",), -0.1, "synth.difficulty: -0.1 is outside [0, 1]"),
        (("hospitals", 1, "codec"), "jpg", "synth.hospitals[1].codec: 'jpg' is not one of rle, jpeg_ls, jpeg2000, none"),
        (("hospitals", 0, "pixel_representation"), 2, "synth.hospitals[0].pixel_representation: 2"),
        (("scans_per_patient",), [3, 1], "synth.scans_per_patient: [3, 1]"),
        (("n_patients",), 2, "synth.exclusion_cases: 4 planted patients exceed synth.n_patients=2"),
    ],
)
def test_params_validated(path: tuple, value: object, message: str) -> None:
    params = _raw_synth()
    node = params["synth"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError) as info:
        section(params, "synth", SynthParams)
    assert message in str(info.value)
    assert isinstance(info.value, ParamsError)


def test_params_yaml_synth_section_matches_dataclass() -> None:
    params = section(load_params(PARAMS_FILE), "synth", SynthParams)
    assert params.n_patients == 410 and len(params.hospitals) == 4
