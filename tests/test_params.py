
import pytest

from covidnet.data.split import SplitParams
from covidnet.params import ParamsError, load_params, section
from covidnet.preprocess.params import PreprocessParams
from support import REPO


def test_default_and_profiles_merge():
    base = load_params(REPO / "params.yaml")
    paper = load_params(REPO / "params.yaml", profile="paper")
    assert base["profile"] == "default"
    pp = section(paper, "preprocess", PreprocessParams)
    assert (pp.depth, pp.size, pp.crop) == (64, 512, 384)  # the paper's input 1x64x384x384
    assert (pp.hu_min, pp.hu_max) == (-1024.0, 1024.0)
    # untouched keys survive the deep merge
    assert paper["preprocess"]["dtype"] == base["preprocess"]["dtype"]
    assert section(base, "split", SplitParams).ratios == [3, 1, 1]


def test_unknown_profile_names_known_ones():
    with pytest.raises(ParamsError, match="profile 'gpu' is not defined.*paper"):
        load_params(REPO / "params.yaml", profile="gpu")


def test_wrong_type_names_file_and_key(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("depth: 24 ", "depth: deep ")
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    with pytest.raises(ParamsError, match=r"params.yaml: preprocess.depth: expected an integer, got 'deep'"):
        section(load_params(bad), "preprocess", PreprocessParams)


def test_unknown_and_missing_keys(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["preprocess"] = {**params["preprocess"], "dpeth": 3}
    with pytest.raises(ParamsError, match=r"unknown key\(s\) \['dpeth'\]"):
        section(params, "preprocess", PreprocessParams)
    del params["preprocess"]["dpeth"], params["preprocess"]["crop"]
    with pytest.raises(ParamsError, match=r"preprocess.crop: required key is missing"):
        section(params, "preprocess", PreprocessParams)


def test_missing_file():
    with pytest.raises(ParamsError, match="params file not found"):
        load_params("/nonexistent/params.yaml")
