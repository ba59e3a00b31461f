"""The suites as data: ValidateParams and the rules of each suite (no Great Expectations needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from covidnet.params import load_params, section
from covidnet.validate.suites import (
    SUITE_SOURCE,
    SUITES,
    Rule,
    ValidateParams,
    _patients_suite,
    _scans_suite,
    _series_suite,
)
from support import REPO

PARAMS_FILE = REPO / "params.yaml"


@pytest.fixture(scope="module")
def params() -> ValidateParams:
    return section(load_params(PARAMS_FILE), "validate", ValidateParams)


def test_params_section_matches_dataclass(params):
    assert params.scan_date_min == "2019-12-01"
    assert params.slices[0] <= params.slices[1]
    tiny = section(load_params(PARAMS_FILE, profile="tiny"), "validate", ValidateParams)
    assert tiny.slices[0] == 8


def test_bad_params_raise():
    with pytest.raises(ValueError, match="scan_date_min"):
        ValidateParams(
            hospitals_known=True,
            pixel_spacing_mm=(0.3, 5.0),
            slice_thickness_mm=(0.5, 6.0),
            slices=(16, 2000),
            scan_date_min="01/12/2019",
            scan_date_min_scope="all",
            age=(0, 120),
            uid_max_length=64,
            max_examples=20,
            min_studies=1,
        )


@pytest.mark.parametrize("change,message", [
    (dict(slices=(20, 10)), r"validate.slices: expected \[low, high\] with low <= high, got \[20, 10\]"),
    (dict(scan_date_min="2019-02-30"), "not a valid date: '2019-02-30'"),
    (dict(scan_date_min_scope="none"), "expected one of \\['all', 'covid'\\], got 'none'"),
    (dict(uid_max_length=0), "uid_max_length: must be positive, got 0"),
    (dict(max_examples=0), "max_examples: must be positive, got 0"),
])
def test_bad_params_name_the_key_and_value(params, change, message):
    with pytest.raises(ValueError, match=message):
        replace(params, **change)


def _all_rules(params, known=None):
    return {
        "patients": _patients_suite(params, known),
        "scans": _scans_suite(params, ["P1"]),
        "series": _series_suite(params, ["P1"], ["1.2"]),
    }


def test_three_suites_of_rules_named_as_gx_results_name_them(params):
    rules = _all_rules(params)
    assert tuple(rules) == SUITES and set(SUITE_SOURCE) == set(SUITES)
    for suite in rules.values():
        assert suite and all(isinstance(r, Rule) and r.expectation.startswith("expect_column_") for r in suite)


def test_known_hospitals_add_one_sorted_rule(params):
    def hospital_sets(rules):
        return [r.kwargs["value_set"] for r in rules
                if r.column == "hospital" and r.expectation == "expect_column_values_to_be_in_set"]

    assert hospital_sets(_patients_suite(params, None)) == []
    assert hospital_sets(_patients_suite(params, ["h_b", "h_a"])) == [["h_a", "h_b"]]


def test_ranges_come_from_params(params):
    series = _series_suite(params, [], [])
    (n_slices,) = [r for r in series if r.column == "n_slices" and "min_value" in r.kwargs]
    assert (n_slices.kwargs["min_value"], n_slices.kwargs["max_value"]) == params.slices
    (age,) = [r for r in _patients_suite(params, None) if r.column == "age_years"]
    assert (age.kwargs["min_value"], age.kwargs["max_value"]) == params.age and age.kwargs["meta"] == {"column": "age"}


@pytest.mark.parametrize("scope,when", [("all", None), ("covid", ("patient_label", "covid"))])
def test_date_min_scope_conditions_only_the_min_date_rules(params, scope, when):
    rules = [r for suite in _all_rules(replace(params, scan_date_min_scope=scope)).values() for r in suite]
    date_min = [r for r in rules if r.kwargs.get("min_value") == params.scan_date_min]
    assert {r.column for r in date_min} == {"pcr_positive_date_value", "scan_date_value", "study_date_value"}
    assert all(r.when == when for r in date_min)
    conditioned = {(r.column, r.when) for r in rules if r.when is not None and r not in date_min}
    assert conditioned == {("pcr_positive_date", ("label", "covid")), ("pcr_positive_date", ("label", "non_covid"))}
