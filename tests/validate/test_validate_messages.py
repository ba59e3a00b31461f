"""Failures as readable lines: the rule in words, each value and where it is (no Great Expectations needed)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from covidnet.validate.messages import Failure, ValidationReport, _describe, _plain, _summarize


def _failure(examples, count):
    return Failure("series", "series table", "expect_column_values_to_be_between", "n_slices",
                   "column 'n_slices' has 9 value(s) outside [16, 2000]", count, examples)


def test_line_examples_are_all_shown_and_grouped_by_value():
    examples = [{"value": "P2", "line": 3}, {"value": "P2", "line": 6}, {"value": None, "line": 9}]
    text = Failure("patients", "patients.csv", "expect_column_values_to_be_unique", "patient_id",
                   "column 'patient_id' has 3 duplicated value(s)", 3, examples).format()
    assert text == "patients.csv: column 'patient_id' has 3 duplicated value(s): 'P2' (lines 3, 6), empty (line 9)"


def test_uid_examples_are_cut_to_five_and_point_to_results_json():
    examples = [{"value": 4, "row": i, "patient_id": f"P{i}", "study_uid": f"1.{i}", "series_uid": f"1.{i}.1"}
                for i in range(7)]
    text = _failure(examples, 9).format()
    assert "4 (patient P0, series 1.0.1; patient P1, series 1.1.1;" in text and "P5" not in text
    assert text.endswith(", ... (4 more in results.json)")
    assert _failure([{"value": 4, "row": 3}], 1).format().endswith(": 4 (series table row 3)")


def test_report_format():
    counts = {"patients": {"rows": 2, "expectations": 10, "failed": 0},
              "series": {"rows": 2, "expectations": 5, "failed": 1}}
    failed = ValidationReport(False, [_failure([], 9)], counts).format()
    assert failed.splitlines() == ["validation failed: 1 of 15 expectations",
                                   "  series table: column 'n_slices' has 9 value(s) outside [16, 2000]"]
    assert ValidationReport(True, [], counts).format() == "validation passed: 15 expectations over 2 suites"


@pytest.mark.parametrize("kind,kwargs,meta,expected", [
    ("expect_column_values_to_be_between", {"column": "a", "min_value": 0.5}, {}, "1 value(s) below 0.5"),
    ("expect_column_values_to_be_between", {"column": "a", "max_value": 3.0}, {}, "1 value(s) above 3"),
    ("expect_column_value_lengths_to_be_between", {"column": "a", "max_value": 64}, {},
     "1 value(s) of length above 64"),
    ("expect_column_values_to_match_regex", {"column": "a", "regex": "^x$"}, {}, "1 value(s) not matching '^x$'"),
    ("expect_column_values_to_be_in_set", {"column": "a", "value_set": ["x"]}, {"rule": "scans.csv"},
     "1 value(s) not in scans.csv"),
    ("expect_column_values_to_be_increasing", {"column": "a"}, {}, "1 unexpected value(s) (expect_column_values_to_be_increasing)"),
])
def test_describe(kind, kwargs, meta, expected):
    assert _describe(kind, kwargs, meta, "a", 1) == f"column 'a' has {expected}"


def test_describe_names_the_row_condition():
    condition = {"column": {"name": "label"}, "operator": "==", "parameter": "covid", "type": "comparison"}
    text = _describe("expect_column_values_to_not_be_null", {"column": "d", "row_condition": condition}, {}, "d", 2)
    assert text == "column 'd' has 2 empty value(s) where label == 'covid'"


@pytest.mark.parametrize("value,plain", [(np.int64(3), 3), (np.float64("nan"), None), (5.0, 5), (2.5, 2.5),
                                         (dt.date(2020, 3, 1), "2020-03-01"), ("x", "x")])
def test_plain(value, plain):
    assert _plain(value) == plain


def _result(items, success=False):
    return {"success": success, "results": items, "statistics": {"evaluated_expectations": len(items)}}


def test_summarize_keeps_max_examples_and_shown_columns():
    frame = pd.DataFrame({"line": [2, 3, 4], "study_date": ["a", "b", "c"], "scan_date": ["a", "x", "y"]})
    item = {"success": False,
            "expectation_config": {"type": "expect_column_values_to_be_in_set",
                                   "kwargs": {"column": "m", "value_set": [True], "batch_id": "b"},
                                   "meta": {"column": "study_date", "rule": "dates differ",
                                            "show": ["study_date", "scan_date"]}},
            "result": {"unexpected_count": 2, "unexpected_index_list": [{"m": False, "line": 3}, {"m": False, "line": 4}]}}
    entry, (failure,) = _summarize("scans", _result([item]), frame, ["line"], max_examples=1)
    assert failure.source == "scans.csv" and failure.column == "study_date" and failure.unexpected_count == 2
    assert failure.examples == [{"value": False, "line": 3, "shown": {"study_date": "b", "scan_date": "x"}}]
    (failed,) = entry["failed_expectations"]
    assert failed["gx_column"] == "m" and "batch_id" not in failed["kwargs"] and failed["unexpected_values"] == [False]
    assert (entry["rows"], entry["evaluated_expectations"], entry["success"]) == (3, 1, False)


def test_summarize_raises_when_gx_could_not_evaluate():
    item = {"success": False, "expectation_config": {"type": "expect_column_values_to_be_null", "kwargs": {"column": "c"}},
            "exception_info": {"raised_exception": True, "exception_message": "KeyError: 'c'"}}
    with pytest.raises(ValueError, match="suite 'patients': expect_column_values_to_be_null on column 'c' could not be "
                                         "evaluated: KeyError: 'c'"):
        _summarize("patients", _result([item]), pd.DataFrame({"line": [2]}), ["line"], max_examples=5)
