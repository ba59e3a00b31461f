"""validate_cohort end to end: real Great Expectations runs over small tables built here, messages, output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from covidnet.data.cohort import PATIENT_COLUMNS, SCAN_COLUMNS, Manifest
from covidnet.params import load_params, section
from covidnet.validate import cohort as cohort_mod
from covidnet.validate.cohort import validate_cohort
from covidnet.validate.suites import ValidateParams
from support import REPO

PARAMS_FILE = REPO / "params.yaml"
HOSPITALS = ["hospital_a", "hospital_b"]


@pytest.fixture(scope="module")
def params() -> ValidateParams:
    return section(load_params(PARAMS_FILE), "validate", ValidateParams)


def _cohort() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Six patients (3 COVID-19), eight studies, one selected series each plus a localizer."""
    patients = pd.DataFrame(
        [
            ["P01", "hospital_a", "covid", "SARS-CoV-2", "2020-02-01", "F", "54"],
            ["P02", "hospital_a", "covid", "SARS-CoV-2", "2020-02-10", "M", "61"],
            ["P03", "hospital_b", "covid", "SARS-CoV-2", "2020-03-05", "O", "47"],
            ["P04", "hospital_a", "non_covid", "influenza A", "", "F", "70"],
            ["P05", "hospital_b", "non_covid", "bacterial", "", "M", "35"],
            ["P06", "hospital_b", "non_covid", "RSV", "", "F", "8"],
        ],
        columns=list(PATIENT_COLUMNS),
    )
    scans = pd.DataFrame(
        [
            ["P01", "1.2.1", "1.2.1.1", "2020-02-03", "0"],
            ["P01", "1.2.2", "", "2020-02-09", "0"],
            ["P02", "1.2.3", "1.2.3.1", "2020-02-12", "1"],
            ["P03", "1.2.4", "1.2.4.1", "2020-03-06", "0"],
            ["P04", "1.2.5", "1.2.5.1", "2020-01-20", "0"],
            ["P04", "1.2.6", "", "2020-01-27", "0"],
            ["P05", "1.2.7", "1.2.7.1", "2020-04-01", "0"],
            ["P06", "1.2.8", "1.2.8.1", "2020-05-11", "0"],
        ],
        columns=list(SCAN_COLUMNS),
    )
    rows = []
    for scan in scans.itertuples():
        common = dict(patient_id=scan.patient_id, study_uid=scan.study_uid, study_date=scan.scan_date)
        rows.append(
            dict(
                common,
                series_uid=f"{scan.study_uid}.1",
                modality="CT",
                series_description="CHEST",
                image_type="ORIGINAL\\PRIMARY\\AXIAL",
                contrast=False,
                n_slices=48,
                pixel_spacing_mm=0.7,
                slice_thickness_mm=5.0,
                slice_spacing_mm=5.0,
                eligible=True,
                reason="",
                selected=True,
            )
        )
        # Not selected, so not validated: would break modality, slice and spacing rules.
        rows.append(
            dict(
                common,
                series_uid=f"{scan.study_uid}.9",
                modality="OT",
                series_description="LOCALIZER",
                image_type="ORIGINAL\\PRIMARY\\LOCALIZER",
                contrast=False,
                n_slices=1,
                pixel_spacing_mm=50.0,
                slice_thickness_mm=float("nan"),
                slice_spacing_mm=float("nan"),
                eligible=False,
                reason="not axial",
                selected=False,
            )
        )
    series = pd.DataFrame(rows)
    for col, value in dict(manufacturer="SIEMENS", model="X", kernel="B70f", transfer_syntax="1.2.840.10008.1.2.1").items():
        series[col] = value
    series["rows"] = 96
    series["columns"] = 96
    series["n_files"] = series["n_slices"]
    return patients, scans, series


def _run(tmp_path: Path, params: ValidateParams, patients=None, scans=None, series=None, **kwargs):
    base_patients, base_scans, base_series = _cohort()
    manifest = Manifest(
        patients=base_patients if patients is None else patients,
        scans=base_scans if scans is None else scans,
    )
    out = tmp_path / "validation"
    report = validate_cohort(
        manifest, base_series if series is None else series, params, out, known_hospitals=HOSPITALS, **kwargs
    )
    return report, out


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory, params):
    return _run(tmp_path_factory.mktemp("valid"), params)


def test_valid_cohort_passes_and_writes_outputs(valid_run):
    report, out = valid_run
    assert report.success, report.format()
    assert report.failures == []
    assert report.counts["patients"]["rows"] == 6
    assert report.counts["series"]["rows"] == 8  # the localizers are not selected
    assert all(c["expectations"] > 0 and c["failed"] == 0 for c in report.counts.values())
    summary = json.loads((out / "results.json").read_text())
    assert summary["success"] is True
    assert set(summary["suites"]) == {"patients", "scans", "series"}
    for suite in ("patients", "scans", "series"):
        raw = json.loads((out / "gx" / f"{suite}.json").read_text())
        assert raw["success"] is True and raw["results"]
    assert (out / "index.html").is_file() and "cdn" not in (out / "index.html").read_text().lower()
    assert "validation passed" in report.format()
    assert not list(out.parent.glob(".validation.tmp-*"))


def _one_failure(report, column: str):
    assert not report.success
    matching = [f for f in report.failures if f.column == column]
    assert matching, report.format()
    return matching


def test_duplicate_patient_names_both_lines(tmp_path, params):
    patients, _, _ = _cohort()
    patients.loc[4, "patient_id"] = "P02"  # line 6 repeats line 3
    report, out = _run(tmp_path, params, patients=patients)
    (failure,) = [f for f in _one_failure(report, "patient_id") if f.suite == "patients"]
    assert failure.expectation == "expect_column_values_to_be_unique"
    text = report.format()
    assert "patients.csv: column 'patient_id' has 2 duplicated value(s): 'P02' (lines 3, 6)" in text
    summary = json.loads((out / "results.json").read_text())
    (entry,) = summary["suites"]["patients"]["failed_expectations"]
    assert entry["unexpected_count"] == 2
    assert [e["line"] for e in entry["examples"]] == [3, 6]


def test_unknown_label(tmp_path, params):
    patients, _, _ = _cohort()
    patients.loc[5, "label"] = "viral"
    report, out = _run(tmp_path, params, patients=patients)
    _one_failure(report, "label")
    assert "patients.csv: column 'label' has 1 value(s) not in ['covid','non_covid']: 'viral' (line 7)" in report.format()
    summary = json.loads((out / "results.json").read_text())
    assert summary["success"] is False
    (entry,) = summary["suites"]["patients"]["failed_expectations"]
    assert entry["unexpected_values"] == ["viral"] and entry["kwargs"]["value_set"] == ["covid", "non_covid"]


def test_unparseable_pcr_date(tmp_path, params):
    patients, _, _ = _cohort()
    patients.loc[1, "pcr_positive_date"] = "2020-02-30"
    patients.loc[2, "pcr_positive_date"] = "05/03/2020"
    report, _ = _run(tmp_path, params, patients=patients)
    failures = _one_failure(report, "pcr_positive_date")
    kinds = {f.expectation for f in failures}
    assert kinds == {"expect_column_values_to_match_regex", "expect_column_values_to_match_strftime_format"}
    text = report.format()
    assert "'2020-02-30' (line 3)" in text
    assert "column 'pcr_positive_date' has 1 value(s) that are not YYYY-MM-DD: '05/03/2020' (line 4)" in text


def test_covid_without_pcr_date_and_non_covid_with_one(tmp_path, params):
    patients, _, _ = _cohort()
    patients.loc[0, "pcr_positive_date"] = ""
    patients.loc[3, "pcr_positive_date"] = "2020-01-10"
    report, _ = _run(tmp_path, params, patients=patients)
    text = report.format()
    assert "column 'pcr_positive_date' has 1 empty value(s) where label == 'covid': empty (line 2)" in text
    assert "has 1 value(s) that must be empty where label == 'non_covid': '2020-01-10' (line 5)" in text


def test_scan_for_unknown_patient(tmp_path, params):
    _, scans, _ = _cohort()
    scans.loc[6, "patient_id"] = "P99"
    report, _ = _run(tmp_path, params, scans=scans)
    failures = _one_failure(report, "patient_id")
    assert {f.suite for f in failures} == {"scans"}
    assert "scans.csv: column 'patient_id' has 1 value(s) not in patients.csv: 'P99' (line 8)" in report.format()


def test_spacing_out_of_range(tmp_path, params):
    _, _, series = _cohort()
    series.loc[4, "pixel_spacing_mm"] = 12.5  # the selected series of study 1.2.3
    report, out = _run(tmp_path, params, series=series)
    (failure,) = _one_failure(report, "pixel_spacing_mm")
    assert failure.examples[0]["study_uid"] == "1.2.3" and failure.examples[0]["row"] == 4
    low, high = params.pixel_spacing_mm
    assert (
        f"series table: column 'pixel_spacing_mm' has 1 value(s) outside [{low}, {int(high)}]: "
        "12.5 (patient P02, series 1.2.3.1)"
    ) in report.format()
    summary = json.loads((out / "results.json").read_text())
    (entry,) = summary["suites"]["series"]["failed_expectations"]
    assert entry["examples"][0]["series_uid"] == "1.2.3.1"


def test_too_few_slices(tmp_path, params):
    _, _, series = _cohort()
    series.loc[series["selected"], "n_slices"] = params.slices[0] - 1  # all 8 selected series
    report, out = _run(tmp_path, params, series=series)
    (failure,) = _one_failure(report, "n_slices")
    assert failure.unexpected_count == 8
    text = report.format()
    assert f"series table: column 'n_slices' has 8 value(s) outside [{params.slices[0]}, {params.slices[1]}]: " in text
    assert f"{params.slices[0] - 1} (patient P01, series 1.2.1.1; patient P01, series 1.2.2.1;" in text
    assert "... (3 more in results.json)" in text  # long UIDs: a few in the message, all in the file
    summary = json.loads((out / "results.json").read_text())
    (entry,) = summary["suites"]["series"]["failed_expectations"]
    assert len(entry["examples"]) == 8


def test_date_mismatch_between_manifest_and_headers(tmp_path, params):
    _, _, series = _cohort()
    series.loc[2, "study_date"] = "2020-02-10"  # scans.csv says 2020-02-09 for study 1.2.2
    report, _ = _run(tmp_path, params, series=series)
    (failure,) = _one_failure(report, "study_date")
    assert failure.examples[0]["shown"] == {"study_date": "2020-02-10", "scan_date": "2020-02-09"}
    assert (
        "series table: column 'study_date' has 1 value(s) where DICOM study date differs from scans.csv scan_date: "
        "study_date '2020-02-10' vs scan_date '2020-02-09' (patient P01, series 1.2.2.1)"
    ) in report.format()


def test_study_before_first_covid_cases(tmp_path, params):
    _, scans, series = _cohort()
    scans.loc[0, "scan_date"] = "2019-11-03"
    series.loc[0, "study_date"] = "2019-11-03"
    report, _ = _run(tmp_path, params, scans=scans, series=series)
    text = report.format()
    assert "scans.csv: column 'scan_date' has 1 value(s) before 2019-12-01: '2019-11-03' (line 2)" in text
    assert "series table: column 'study_date' has 1 value(s) before 2019-12-01" in text


@pytest.mark.slow
def test_date_min_scope_covid_allows_older_controls(tmp_path, params):
    from dataclasses import replace

    _, scans, series = _cohort()
    for frame, col in ((scans, "scan_date"), (series, "study_date")):
        frame.loc[frame["study_uid"] == "1.2.5", col] = "2019-06-01"  # P04: non-COVID control
        frame.loc[frame["study_uid"] == "1.2.1", col] = "2019-11-01"  # P01: COVID-19
    covid_only = replace(params, scan_date_min_scope="covid")
    report, _ = _run(tmp_path, covid_only, scans=scans, series=series)
    text = report.format()
    assert "where patient_label == 'covid'" in text
    assert "'2019-11-01' (line 2)" in text and "2019-06-01" not in text


def test_unknown_hospital(tmp_path, params):
    patients, _, _ = _cohort()
    patients.loc[2, "hospital"] = "hospital_z"
    report, _ = _run(tmp_path, params, patients=patients)
    assert "column 'hospital' has 1 value(s) not in ['hospital_a','hospital_b']: 'hospital_z' (line 4)" in report.format()


def test_missing_series_column_is_a_usage_error(tmp_path, params):
    _, _, series = _cohort()
    with pytest.raises(ValueError, match=r"series table: required column\(s\) \['n_slices'\] missing"):
        _run(tmp_path, params, series=series.drop(columns=["n_slices"]))


def test_failure_keeps_previous_output_intact(tmp_path, params, monkeypatch):
    out = tmp_path / "validation"
    out.mkdir()
    (out / "results.json").write_text('{"previous": true}\n')

    def boom(path, summary):
        (path.parent / "half.json").write_text("{")
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort_mod, "_write_results", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _run(tmp_path, params)
    assert json.loads((out / "results.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["validation"]
