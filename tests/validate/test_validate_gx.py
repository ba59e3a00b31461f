"""The Great Expectations runner: the only module that imports GX, and the rules it turns into GX expectations."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from covidnet.params import load_params, section
from covidnet.validate.gx import _expectation
from covidnet.validate.suites import Rule, ValidateParams, _patients_suite, _scans_suite, _series_suite
from support import REPO


def test_importing_the_validate_package_does_not_import_great_expectations():
    code = ("import sys\n"
            "import covidnet.validate.stage, covidnet.validate.cohort, covidnet.validate.gx\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'great_expectations')\n"
            "assert not loaded, loaded[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_rule_becomes_the_gx_expectation_it_names():
    gx = pytest.importorskip("great_expectations")
    params = replace(section(load_params(REPO / "params.yaml"), "validate", ValidateParams), scan_date_min_scope="covid")
    rules = [*_patients_suite(params, ["h1"]), *_scans_suite(params, ["P1"]), *_series_suite(params, ["P1"], ["1.2"])]
    for rule in rules:
        config = _expectation(gx, rule).configuration.to_json_dict()
        assert config["type"] == rule.expectation
        assert config["kwargs"]["column"] == rule.column
        assert config["meta"] == rule.kwargs.get("meta", {})
        condition = config["kwargs"].get("row_condition")
        if rule.when is None:
            assert not condition
        else:
            assert (condition["column"]["name"], condition["operator"], condition["parameter"]) == (
                rule.when[0], "==", rule.when[1])


def test_unknown_expectation_is_named():
    gx = pytest.importorskip("great_expectations")
    with pytest.raises(ValueError, match="no Great Expectations expectation 'expect_column_to_be_purple'"):
        _expectation(gx, Rule("expect_column_to_be_purple", "x"))
