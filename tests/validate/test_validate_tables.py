"""The tables as Great Expectations sees them: nulls, typed helper columns, where each row came from."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from covidnet.data.cohort import PATIENT_COLUMNS
from covidnet.validate.tables import (
    SERIES_COLUMNS,
    _as_date,
    _labels_by_patient,
    _patients_frame,
    _require_columns,
    _scans_frame,
    _series_frame,
)


def _patients() -> pd.DataFrame:
    return pd.DataFrame([
        ["P1", "h", "covid", "SARS-CoV-2", "2020-02-30", "F", "54"],
        ["P2", "", "non_covid", "RSV", "", "M", "abc"],
    ], columns=list(PATIENT_COLUMNS))


def test_patients_frame_nulls_lines_and_typed_columns():
    frame = _patients_frame(_patients())
    assert list(frame["line"]) == [2, 3]  # the header is line 1
    assert frame.loc[1, "hospital"] is None and frame.loc[1, "pcr_positive_date"] is None
    assert frame.loc[0, "age_years"] == 54.0 and pd.isna(frame.loc[1, "age_years"])
    assert frame.loc[0, "pcr_positive_date_value"] is None  # not a real date: other rules report it
    assert list(frame["patient_label"]) == ["covid", "non_covid"]


@pytest.mark.parametrize("text,date", [("2020-03-01", dt.date(2020, 3, 1)), ("2020-02-30", None), ("01/03/2020", None),
                                       (None, None)])
def test_as_date(text, date):
    assert _as_date(text) == date


def test_scans_frame_joins_the_patient_label():
    labels = _labels_by_patient(_patients_frame(_patients()))
    scans = pd.DataFrame({"patient_id": ["P2", "P9"], "study_uid": ["1.1", "1.2"], "series_uid": ["", "1.2.1"],
                          "scan_date": ["2020-03-01", "x"], "motion_artifact": ["0", "1"]})
    frame = _scans_frame(scans, labels)
    assert list(frame["patient_label"]) == ["non_covid", None]
    assert list(frame["scan_date_value"]) == [dt.date(2020, 3, 1), None]
    assert frame.loc[0, "series_uid"] is None


def _series(selected) -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": ["P1", "P1", "P2"], "study_uid": ["1.1", "1.1", "1.2"], "series_uid": ["1.1.1", "1.1.9", "1.2.1"],
        "study_date": ["2020-03-01", "2020-03-01", "2020-03-05"], "modality": ["CT", "OT", "CT"],
        "n_slices": [40, 1, 40], "pixel_spacing_mm": [0.7, 50.0, 0.7], "slice_thickness_mm": [5.0, None, 5.0],
        "selected": selected, "extra": 1,
    })


def test_series_frame_keeps_selected_rows_with_their_row_and_date_match():
    scans = pd.DataFrame({"study_uid": ["1.1", "1.2"], "scan_date": ["2020-03-01", "2020-03-04"]})
    frame = _series_frame(_series(["true", "0", "1"]), scans, {"P1": "covid"})
    assert list(frame["row"]) == [0, 2] and list(frame["series_uid"]) == ["1.1.1", "1.2.1"]
    assert list(frame["scan_date_matches"]) == [True, False]
    assert list(frame["patient_label"]) == ["covid", None]
    assert "extra" not in frame and frame["n_slices"].dtype == float


def test_series_frame_errors_name_the_column_and_row():
    scans = pd.DataFrame({"study_uid": ["1.1"], "scan_date": ["2020-03-01"]})
    with pytest.raises(ValueError, match=r"column 'selected': expected true/false, got 'maybe' \(row 1\)"):
        _series_frame(_series([True, "maybe", False]), scans, {})
    bad = _series([True, True, True])
    bad["n_slices"] = ["40", "forty", "40"]
    with pytest.raises(ValueError, match="series table column 'n_slices': expected numbers"):
        _series_frame(bad, scans, {})


def test_require_columns_lists_missing_and_found():
    with pytest.raises(ValueError, match=r"series table: required column\(s\) \['modality'\] missing"):
        _require_columns(_series([True] * 3).drop(columns=["modality"]), SERIES_COLUMNS, "series table")
