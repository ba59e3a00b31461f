"""The ``validate`` stage's pure function: manifest and series table in, results folder out.

:func:`validate_cohort` types the tables (:mod:`covidnet.validate.tables`), builds the three
suites (:mod:`covidnet.validate.suites`), runs them through Great Expectations
(:mod:`covidnet.validate.gx`) and summarises the results (:mod:`covidnet.validate.messages`).
Failing data never raises: it returns a :class:`covidnet.validate.messages.ValidationReport`
and the CLI stops the run when it is not a success.

Output folder (written all or nothing)::

    results.json        our summary: per suite, success and each failed expectation with
                        its unexpected values and where they are (CSV line or UIDs)
    gx/<suite>.json     Great Expectations' own validation result
    index.html          every expectation of every suite, passed or failed: one self-contained
                        page that opens offline (:mod:`covidnet.validate.page`; Great
                        Expectations' Data Docs load their CSS/JS from a CDN, so they are not kept)
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from covidnet.atomic import atomic_path
from covidnet.data.cohort import PATIENT_COLUMNS, PATIENTS_FILE, SCAN_COLUMNS, SCANS_FILE, Manifest
from covidnet.pages import to_html
from covidnet.validate.gx import _run_suites
from covidnet.validate.messages import RESULTS_FILE, Failure, ValidationReport, _summarize
from covidnet.validate.page import PAGE_FILE, validation_blocks
from covidnet.validate.suites import ValidateParams, _patients_suite, _scans_suite, _series_suite
from covidnet.validate.tables import (
    _LINE,
    _ROW,
    _labels_by_patient,
    _patients_frame,
    _require_columns,
    _scans_frame,
    _series_frame,
)

logger = logging.getLogger(__name__)

GX_DIR = "gx"


def validate_cohort(
    manifest: Manifest,
    series: pd.DataFrame,
    params: ValidateParams,
    out_dir: Path,
    *,
    known_hospitals: list[str] | None = None,
    synthetic: bool = False,
) -> ValidationReport:
    """Run the ``patients``, ``scans`` and ``series`` suites and write their results.

    Args:
        manifest: ``patients.csv`` and ``scans.csv`` as text tables (:func:`covidnet.data.cohort.read_manifest`).
        series: the header table of :mod:`covidnet.data.dicom`, one row per series; only rows
            whose ``selected`` is true are validated.
        params: the ``validate:`` section of ``params.yaml``.
        out_dir: folder for ``results.json``, ``gx/<suite>.json`` and ``index.html``;
            replaced as a whole, only once everything is written.
        known_hospitals: when given, every ``patients.csv`` hospital must be one of these.
        synthetic: the cohort is synthetic (the page says so).

    Returns:
        The report; failing data does not raise (check ``report.success``).

    Raises:
        ValueError: a table lacks a column this stage reads, a column cannot be typed, or
            an expectation could not be evaluated (a bug, not bad data).
    """
    _require_columns(manifest.patients, PATIENT_COLUMNS, PATIENTS_FILE)
    _require_columns(manifest.scans, SCAN_COLUMNS, SCANS_FILE)
    patients = _patients_frame(manifest.patients)
    labels = _labels_by_patient(patients)
    scans = _scans_frame(manifest.scans, labels)
    series_frame = _series_frame(series, manifest.scans, labels)

    patient_ids = sorted({p for p in patients["patient_id"] if p is not None})
    study_uids = sorted({s for s in scans["study_uid"] if s is not None})
    series_index = [_ROW, "patient_id", "study_uid", "series_uid"]
    tables = {
        "patients": (patients, _patients_suite(params, known_hospitals), [_LINE]),
        "scans": (scans, _scans_suite(params, patient_ids), [_LINE]),
        "series": (series_frame, _series_suite(params, patient_ids, study_uids), series_index),
    }
    out_dir = Path(out_dir)
    with atomic_path(out_dir, directory=True) as tmp, tempfile.TemporaryDirectory(prefix="covidnet-gx-") as work:
        raw = _run_suites(Path(work), tables, params.max_examples)
        (tmp / GX_DIR).mkdir()
        summary: dict[str, Any] = {"success": True, "params": _params_dict(params), "suites": {}}
        failures: list[Failure] = []
        counts: dict[str, dict[str, int]] = {}
        for name, (frame, _rules, index_columns) in tables.items():
            (tmp / GX_DIR / f"{name}.json").write_text(json.dumps(raw[name], indent=2, default=str) + "\n")
            entry, suite_failures = _summarize(name, raw[name], frame, index_columns, params.max_examples)
            summary["suites"][name] = entry
            summary["success"] = summary["success"] and entry["success"]
            failures += suite_failures
            counts[name] = {
                "rows": entry["rows"],
                "expectations": entry["evaluated_expectations"],
                "failed": len(entry["failed_expectations"]),
            }
        summary["counts"] = counts
        _write_results(tmp / RESULTS_FILE, summary)
        (tmp / PAGE_FILE).write_text(to_html(validation_blocks(summary, raw, failures, synthetic=synthetic), tmp))
    report = ValidationReport(success=bool(summary["success"]), failures=failures, counts=counts)
    logger.info("validation %s: %s", "passed" if report.success else "failed", out_dir)
    return report


def _params_dict(params: ValidateParams) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(params).items()}


def _write_results(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
