"""The ``validate`` stage: Great Expectations suites over the manifest and the DICOM headers.

Three suites run, each over one table:

``patients`` (``patients.csv``, every column text)
    ``patient_id`` present and unique; ``label`` in :data:`covidnet.data.cohort.LABELS`;
    ``hospital`` present (and known, when a list is given); ``pcr_positive_date`` present
    for COVID-19 patients, empty for the others, a valid ``YYYY-MM-DD`` date not before
    ``scan_date_min``; ``sex`` in F/M/O; ``age`` a whole number within ``age``.

``scans`` (``scans.csv``, every column text)
    ``study_uid`` present, unique, a DICOM UID; ``series_uid`` a DICOM UID or empty;
    ``patient_id`` one of the patients; ``scan_date`` a valid date not before
    ``scan_date_min``; ``motion_artifact`` 0 or 1.

``series`` (the header table of the series selected for each study, :mod:`covidnet.data.dicom`)
    modality CT; pixel spacing, slice thickness and slice count within their ranges;
    ``study_date`` a valid date not before ``scan_date_min`` and equal to the study's
    ``scan_date`` in ``scans.csv`` (helper column ``scan_date_matches``); ``series_uid``
    unique; ``patient_id`` and ``study_uid`` known to the manifest.

Failing data never raises: :func:`validate_cohort` returns a :class:`ValidationReport` and
the CLI stops the run when it is not a success. Every number comes from
:class:`ValidateParams` (the ``validate:`` section of ``params.yaml``).

Output folder (written all or nothing)::

    results.json        our summary: per suite, success and each failed expectation with
                        its unexpected values and where they are (CSV line or UIDs)
    gx/<suite>.json     Great Expectations' own validation result
    data_docs/          Great Expectations' Data Docs site (open index.html)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from covidnet.atomic import atomic_path
from covidnet.data.cohort import LABELS, PATIENTS_FILE, SCANS_FILE, Manifest

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
GX_DIR = "gx"
DATA_DOCS_DIR = "data_docs"

SUITES = ("patients", "scans", "series")
#: Where each suite's rows come from, as named in messages.
SUITE_SOURCE = {"patients": PATIENTS_FILE, "scans": SCANS_FILE, "series": "series table"}

ISO_DATE_REGEX = r"^\d{4}-\d{2}-\d{2}$"
ISO_DATE_FORMAT = "%Y-%m-%d"
UID_REGEX = r"^[0-9]+(?:\.[0-9]+)*$"
INTEGER_REGEX = r"^[0-9]+$"
SEXES = ("F", "M", "O")
MOTION_FLAGS = ("0", "1")
MODALITY = "CT"
DATE_SCOPES = ("all", "covid")

#: Columns of the series table this stage reads (the table may hold more).
SERIES_COLUMNS = (
    "patient_id",
    "study_uid",
    "series_uid",
    "study_date",
    "modality",
    "n_slices",
    "pixel_spacing_mm",
    "slice_thickness_mm",
    "selected",
)
_SERIES_NUMERIC = ("n_slices", "pixel_spacing_mm", "slice_thickness_mm")
_SERIES_TEXT = ("patient_id", "study_uid", "series_uid", "study_date", "modality")

# Helper columns added to the tables Great Expectations sees.
_LINE = "line"  # 1-based CSV line number (the header is line 1)
_ROW = "row"  # 0-based row of the series table
_LABEL = "patient_label"  # the patient's label, joined in for date rules scoped to COVID-19
_MATCH = "scan_date_matches"
# Examples located by UIDs that Failure.format() prints (results.json keeps max_examples).
_FORMAT_UID_EXAMPLES = 5


@dataclass(frozen=True)
class ValidateParams:
    """The ``validate:`` section of ``params.yaml``.

    Attributes:
        hospitals_known: the CLI passes the configured hospitals as ``known_hospitals``
            (synthetic cohorts only); :func:`validate_cohort` itself only reads the list.
        pixel_spacing_mm: inclusive range of the selected series' in-plane spacing (mm).
        slice_thickness_mm: inclusive range of their slice thickness (mm).
        slices: inclusive range of their number of slices.
        scan_date_min: ISO date no scan, study or PCR date may precede.
        scan_date_min_scope: ``all`` applies ``scan_date_min`` to every patient;
            ``covid`` to COVID-19 patients only (older non-COVID controls allowed).
        age: inclusive range of the age in years.
        uid_max_length: the longest DICOM UID accepted (characters).
        max_examples: unexpected values kept per failed expectation.
    """

    hospitals_known: bool
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: tuple[float, float]
    slices: tuple[int, int]
    scan_date_min: str
    scan_date_min_scope: str
    age: tuple[int, int]
    uid_max_length: int
    max_examples: int

    def __post_init__(self) -> None:
        for name in ("pixel_spacing_mm", "slice_thickness_mm", "slices", "age"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"validate.{name}: expected [low, high] with low <= high, got {list(value)}")
        if not re.match(ISO_DATE_REGEX, self.scan_date_min):
            raise ValueError(f"validate.scan_date_min: expected YYYY-MM-DD, got {self.scan_date_min!r}")
        try:
            dt.datetime.strptime(self.scan_date_min, ISO_DATE_FORMAT)
        except ValueError:
            raise ValueError(f"validate.scan_date_min: not a valid date: {self.scan_date_min!r}") from None
        if self.scan_date_min_scope not in DATE_SCOPES:
            raise ValueError(
                f"validate.scan_date_min_scope: expected one of {list(DATE_SCOPES)}, got {self.scan_date_min_scope!r}"
            )
        if self.uid_max_length < 1:
            raise ValueError(f"validate.uid_max_length: must be positive, got {self.uid_max_length}")
        if self.max_examples < 1:
            raise ValueError(f"validate.max_examples: must be positive, got {self.max_examples}")


@dataclass(frozen=True)
class Failure:
    """One failed expectation.

    Attributes:
        suite: ``patients``, ``scans`` or ``series``.
        source: the file or table the suite read (``patients.csv``...).
        expectation: the Great Expectations type, e.g. ``expect_column_values_to_be_in_set``.
        column: the column as the user knows it (helper columns are named by their source).
        message: one readable line, without the examples.
        unexpected_count: how many rows broke the rule.
        examples: up to ``max_examples`` dicts: ``value`` plus ``line`` (manifest files) or
            ``row``, ``study_uid``, ``series_uid`` (series table), and any extra columns that
            explain the value.
    """

    suite: str
    source: str
    expectation: str
    column: str
    message: str
    unexpected_count: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    def format(self) -> str:
        """``<source>: <message>: <value> (<where>), ...``."""
        # Line numbers are short, so every kept example is shown; UIDs are long: a few.
        by_line = all(_LINE in e for e in self.examples)
        shown = self.examples if by_line else self.examples[:_FORMAT_UID_EXAMPLES]
        rendered = _render_examples(shown)
        more = self.unexpected_count - len(shown)
        if rendered and more > 0:
            rendered += f", ... ({more} more in {RESULTS_FILE})"
        return f"{self.source}: {self.message}" + (f": {rendered}" if rendered else "")


@dataclass
class ValidationReport:
    """What :func:`validate_cohort` found.

    Attributes:
        success: every expectation of every suite passed.
        failures: the failed expectations, suite by suite.
        counts: per suite, ``rows`` validated, ``expectations`` evaluated and ``failed``.
    """

    success: bool
    failures: list[Failure]
    counts: dict[str, dict[str, int]]

    def format(self) -> str:
        """A readable multi-line summary: one line per failed expectation, naming where."""
        total = sum(c["expectations"] for c in self.counts.values())
        failed = sum(c["failed"] for c in self.counts.values())
        if self.success:
            return f"validation passed: {total} expectations over {len(self.counts)} suites"
        lines = [f"validation failed: {failed} of {total} expectations"]
        lines += [f"  {failure.format()}" for failure in self.failures]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Tables as Great Expectations sees them


def _text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of a text table with empty strings as missing values (GX's nulls)."""
    out = frame.astype(object).copy()
    return out.where(out.notna() & (out != ""), None)


def _as_date(value: Any) -> dt.date | None:
    if not isinstance(value, str) or not re.match(ISO_DATE_REGEX, value):
        return None
    try:
        return dt.datetime.strptime(value, ISO_DATE_FORMAT).date()
    except ValueError:
        return None


def _date_column(values: pd.Series) -> pd.Series:
    """ISO text -> ``datetime.date`` objects (None where empty or invalid: other rules report those)."""
    return pd.Series([_as_date(v) for v in values], index=values.index, dtype=object)


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: required column(s) {missing} missing; found {list(frame.columns)}")


def _patients_frame(patients: pd.DataFrame) -> pd.DataFrame:
    frame = _text_frame(patients)
    frame[_LINE] = range(2, len(frame) + 2)
    frame["age_years"] = pd.to_numeric(frame["age"], errors="coerce").astype(float)
    frame["pcr_positive_date_value"] = _date_column(frame["pcr_positive_date"])
    frame[_LABEL] = frame["label"]
    frame.index = range(len(frame))
    return frame


def _labels_by_patient(patients: pd.DataFrame) -> dict[str, str]:
    first = patients.drop_duplicates("patient_id", keep="first")
    return {p: lab for p, lab in zip(first["patient_id"], first["label"]) if p}


def _scans_frame(scans: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    frame = _text_frame(scans)
    frame[_LINE] = range(2, len(frame) + 2)
    frame["scan_date_value"] = _date_column(frame["scan_date"])
    frame[_LABEL] = [labels.get(p) for p in frame["patient_id"]]
    frame.index = range(len(frame))
    return frame


def _as_bool(values: pd.Series, what: str) -> pd.Series:
    if values.dtype == bool:
        return values
    mapping = {"true": True, "false": False, "1": True, "0": False}
    converted = values.map(lambda v: v if isinstance(v, bool) else mapping.get(str(v).strip().lower()))
    bad = values[converted.isna()]
    if len(bad):
        raise ValueError(f"{what}: expected true/false, got {bad.iloc[0]!r} (row {bad.index[0]})")
    return converted.astype(bool)


def _series_frame(series: pd.DataFrame, scans: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    _require_columns(series, SERIES_COLUMNS, "series table")
    table = series.reset_index(drop=True)
    selected = _as_bool(table["selected"], "series table column 'selected'")
    frame = table.loc[selected, list(SERIES_COLUMNS[:-1])].copy()
    frame.insert(0, _ROW, frame.index.astype(int))
    frame[list(_SERIES_TEXT)] = _text_frame(frame[list(_SERIES_TEXT)])
    for col in _SERIES_NUMERIC:
        try:
            frame[col] = pd.to_numeric(frame[col], errors="raise").astype(float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"series table column {col!r}: expected numbers: {exc}") from None
    frame["study_date_value"] = _date_column(frame["study_date"])
    studies = scans.drop_duplicates("study_uid", keep="first")
    scan_dates = {uid: date for uid, date in zip(studies["study_uid"], studies["scan_date"]) if uid}
    frame["scan_date"] = [scan_dates.get(uid) or None for uid in frame["study_uid"]]
    frame[_MATCH] = [
        None if (study is None or scan is None) else bool(study == scan)
        for study, scan in zip(frame["study_date"], frame["scan_date"])
    ]
    frame[_MATCH] = frame[_MATCH].astype(object)
    frame[_LABEL] = [labels.get(p) for p in frame["patient_id"]]
    frame.index = range(len(frame))
    return frame


# ---------------------------------------------------------------------------------------
# Suites


def _date_rules(gx: Any, column: str, value_column: str, params: ValidateParams, *, required: bool) -> list[Any]:
    """Not null (when required), ``YYYY-MM-DD``, a real date, not before ``scan_date_min``."""
    from great_expectations.expectations.row_conditions import Column

    e = gx.expectations
    rules = [e.ExpectColumnValuesToNotBeNull(column=column)] if required else []
    rules += [
        e.ExpectColumnValuesToMatchRegex(column=column, regex=ISO_DATE_REGEX, meta={"rule": "YYYY-MM-DD"}),
        e.ExpectColumnValuesToMatchStrftimeFormat(column=column, strftime_format=ISO_DATE_FORMAT),
    ]
    scope = {}
    if params.scan_date_min_scope == "covid":
        scope = {"row_condition": Column(_LABEL) == "covid"}
    rules.append(
        e.ExpectColumnValuesToBeBetween(
            column=value_column, min_value=params.scan_date_min, meta={"column": column}, **scope
        )
    )
    return rules


def _uid_rules(gx: Any, column: str, params: ValidateParams) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToMatchRegex(column=column, regex=UID_REGEX, meta={"rule": "a DICOM UID (digits and dots)"}),
        e.ExpectColumnValueLengthsToBeBetween(column=column, max_value=params.uid_max_length),
    ]


def _patients_suite(gx: Any, params: ValidateParams, known_hospitals: list[str] | None) -> list[Any]:
    from great_expectations.expectations.row_conditions import Column

    e = gx.expectations
    rules = [
        e.ExpectColumnValuesToNotBeNull(column="patient_id"),
        e.ExpectColumnValuesToBeUnique(column="patient_id"),
        e.ExpectColumnValuesToNotBeNull(column="label"),
        e.ExpectColumnValuesToBeInSet(column="label", value_set=list(LABELS)),
        e.ExpectColumnValuesToNotBeNull(column="hospital"),
    ]
    if known_hospitals is not None:
        rules.append(e.ExpectColumnValuesToBeInSet(column="hospital", value_set=sorted(known_hospitals)))
    rules += [
        e.ExpectColumnValuesToNotBeNull(column="pcr_positive_date", row_condition=Column("label") == "covid"),
        e.ExpectColumnValuesToBeNull(column="pcr_positive_date", row_condition=Column("label") == "non_covid"),
    ]
    # The PCR date is checked against scan_date_min only for COVID-19 patients: the others have none.
    date_rules = _date_rules(gx, "pcr_positive_date", "pcr_positive_date_value", params, required=False)
    rules += date_rules
    rules += [
        e.ExpectColumnValuesToNotBeNull(column="sex"),
        e.ExpectColumnValuesToBeInSet(column="sex", value_set=list(SEXES)),
        e.ExpectColumnValuesToNotBeNull(column="age"),
        e.ExpectColumnValuesToMatchRegex(column="age", regex=INTEGER_REGEX, meta={"rule": "a whole number of years"}),
        e.ExpectColumnValuesToBeBetween(
            column="age_years", min_value=params.age[0], max_value=params.age[1], meta={"column": "age"}
        ),
    ]
    return rules


def _scans_suite(gx: Any, params: ValidateParams, patient_ids: list[str]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToNotBeNull(column="patient_id"),
        e.ExpectColumnValuesToBeInSet(column="patient_id", value_set=patient_ids, meta={"rule": "patients.csv"}),
        e.ExpectColumnValuesToNotBeNull(column="study_uid"),
        e.ExpectColumnValuesToBeUnique(column="study_uid"),
        *_uid_rules(gx, "study_uid", params),
        *_uid_rules(gx, "series_uid", params),
        *_date_rules(gx, "scan_date", "scan_date_value", params, required=True),
        e.ExpectColumnValuesToNotBeNull(column="motion_artifact"),
        e.ExpectColumnValuesToBeInSet(column="motion_artifact", value_set=list(MOTION_FLAGS)),
    ]


def _series_suite(gx: Any, params: ValidateParams, patient_ids: list[str], study_uids: list[str]) -> list[Any]:
    e = gx.expectations
    return [
        e.ExpectColumnValuesToNotBeNull(column="modality"),
        e.ExpectColumnValuesToBeInSet(column="modality", value_set=[MODALITY]),
        e.ExpectColumnValuesToNotBeNull(column="pixel_spacing_mm"),
        e.ExpectColumnValuesToBeBetween(
            column="pixel_spacing_mm", min_value=params.pixel_spacing_mm[0], max_value=params.pixel_spacing_mm[1]
        ),
        e.ExpectColumnValuesToBeBetween(
            column="slice_thickness_mm",
            min_value=params.slice_thickness_mm[0],
            max_value=params.slice_thickness_mm[1],
        ),
        e.ExpectColumnValuesToNotBeNull(column="n_slices"),
        e.ExpectColumnValuesToBeBetween(column="n_slices", min_value=params.slices[0], max_value=params.slices[1]),
        *_date_rules(gx, "study_date", "study_date_value", params, required=True),
        e.ExpectColumnValuesToNotBeNull(column="series_uid"),
        e.ExpectColumnValuesToBeUnique(column="series_uid"),
        e.ExpectColumnValuesToBeInSet(column="patient_id", value_set=patient_ids, meta={"rule": "patients.csv"}),
        e.ExpectColumnValuesToBeInSet(column="study_uid", value_set=study_uids, meta={"rule": "scans.csv"}),
        e.ExpectColumnValuesToBeInSet(
            column=_MATCH,
            value_set=[True],
            meta={
                "column": "study_date",
                "rule": "DICOM study date differs from scans.csv scan_date",
                "show": ["study_date", "scan_date"],
            },
        ),
    ]


# ---------------------------------------------------------------------------------------
# Turning GX results into our summary


def _plain(value: Any) -> Any:
    """A JSON-friendly Python value (numpy scalars, dates, NaN)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()[:10]
    return value


def _condition_text(condition: Any) -> str:
    if not condition:
        return ""
    if isinstance(condition, dict):
        col = condition.get("column", {})
        col = col.get("name") if isinstance(col, dict) else col
        if {"operator", "parameter"} <= set(condition):
            return f" where {col} == {condition['parameter']!r}" if condition["operator"] == "==" else (
                f" where {col} {condition['operator']} {condition['parameter']!r}"
            )
    return f" where {condition}"


def _describe(kind: str, kwargs: dict[str, Any], meta: dict[str, Any], column: str, count: int) -> str:
    rule = meta.get("rule")
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if kind == "expect_column_values_to_not_be_null":
        body = f"{count} empty value(s)"
    elif kind == "expect_column_values_to_be_null":
        body = f"{count} value(s) that must be empty"
    elif kind == "expect_column_values_to_be_unique":
        body = f"{count} duplicated value(s)"
    elif kind == "expect_column_values_to_be_in_set" and column != kwargs.get("column"):
        body = f"{count} value(s) where {rule}" if rule else f"{count} value(s) not in {kwargs['value_set']}"
    elif kind == "expect_column_values_to_be_in_set":
        allowed = f"{rule}" if rule else "[" + ",".join(repr(v) for v in kwargs["value_set"]) + "]"
        body = f"{count} value(s) not in {allowed}"
    elif kind == "expect_column_values_to_match_regex":
        body = f"{count} value(s) that are not {rule}" if rule else f"{count} value(s) not matching {kwargs['regex']!r}"
    elif kind == "expect_column_values_to_match_strftime_format":
        body = f"{count} value(s) that are not valid dates ({kwargs['strftime_format']})"
    elif kind in ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"):
        what = "value(s) of length" if "lengths" in kind else "value(s)"
        if low is not None and high is not None:
            body = f"{count} {what} outside [{_plain(low)}, {_plain(high)}]"
        elif low is not None:
            body = f"{count} {what} before {low}" if isinstance(low, str) else f"{count} {what} below {_plain(low)}"
        else:
            body = f"{count} {what} above {_plain(high)}"
    else:
        body = f"{count} unexpected value(s) ({rule or kind})"
    return f"column {column!r} has {body}{_condition_text(kwargs.get('row_condition'))}"


def _where(example: dict[str, Any]) -> str:
    if _LINE in example:
        return f"line {example[_LINE]}"
    parts = []
    if example.get("patient_id"):
        parts.append(f"patient {example['patient_id']}")
    if example.get("series_uid"):
        parts.append(f"series {example['series_uid']}")
    elif example.get("study_uid"):
        parts.append(f"study {example['study_uid']}")
    return ", ".join(parts) or f"series table row {example.get(_ROW)}"


def _render_examples(examples: list[dict[str, Any]]) -> str:
    """Group examples by value: ``'P2' (lines 3, 4)``, ``7.5 (patient P2, series 1.2.3)``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for example in examples:
        shown = example.get("shown")
        if shown:
            key = " vs ".join(f"{k} {v!r}" if v is not None else f"{k} empty" for k, v in shown.items())
        else:
            value = example.get("value")
            key = "empty" if value is None else repr(value)
        groups.setdefault(key, []).append(example)
    parts = []
    for key, members in groups.items():
        if all(_LINE in m for m in members):
            lines = ", ".join(str(m[_LINE]) for m in members)
            where = f"line{'s' if len(members) > 1 else ''} {lines}"
        else:
            where = "; ".join(_where(m) for m in members)
        parts.append(f"{key} ({where})")
    return ", ".join(parts)


def _summarize(
    suite: str, result: dict[str, Any], frame: pd.DataFrame, index_columns: list[str], params: ValidateParams
) -> tuple[dict[str, Any], list[Failure]]:
    failures = []
    failed_entries = []
    key = index_columns[0]
    by_key = frame.set_index(key, drop=False)
    for item in result["results"]:
        if item["success"]:
            continue
        config = item["expectation_config"]
        kind = config["type"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        meta = config.get("meta") or {}
        exception = item.get("exception_info") or {}
        messages = [v.get("exception_message") for v in exception.values() if isinstance(v, dict)]
        if exception.get("raised_exception") or any(messages):
            detail = exception.get("exception_message") or next((m for m in messages if m), "unknown error")
            raise ValueError(
                f"validate: suite {suite!r}: {kind} on column {kwargs.get('column')!r} could not be evaluated: {detail}"
            )
        gx_column = kwargs.get("column", "")
        column = meta.get("column", gx_column)
        res = item.get("result") or {}
        count = int(res.get("unexpected_count") or 0)
        examples = []
        for entry in (res.get("unexpected_index_list") or [])[: params.max_examples]:
            example: dict[str, Any] = {"value": _plain(entry.get(gx_column))}
            for col in index_columns:
                example[col] = _plain(entry.get(col))
            if meta.get("show"):
                row = by_key.loc[entry[key]]
                example["shown"] = {c: _plain(row[c]) for c in meta["show"]}
            examples.append(example)
        message = _describe(kind, kwargs, meta, column, count)
        failure = Failure(suite, SUITE_SOURCE[suite], kind, column, message, count, examples)
        failures.append(failure)
        failed_entries.append(
            {
                "expectation": kind,
                "column": column,
                "gx_column": gx_column,
                "kwargs": json.loads(json.dumps(kwargs, default=str)),
                "message": message,
                "unexpected_count": count,
                "unexpected_values": [e["value"] for e in examples],
                "examples": examples,
            }
        )
    stats = result.get("statistics", {})
    entry = {
        "source": SUITE_SOURCE[suite],
        "success": bool(result["success"]),
        "rows": len(frame),
        "evaluated_expectations": int(stats.get("evaluated_expectations", len(result["results"]))),
        "failed_expectations": failed_entries,
    }
    return entry, failures


# ---------------------------------------------------------------------------------------
# Running


def _run_suites(
    work: Path,
    tables: dict[str, tuple[pd.DataFrame, list[Any], list[str]]],
    max_examples: int,
) -> tuple[dict[str, dict[str, Any]], Path]:
    """Run each suite through a file-backed GX context in ``work``; return results and the docs site."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(work))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.enable_analytics(False)
    source = context.data_sources.add_pandas("cohort")
    results = {}
    for name, (frame, rules, index_columns) in tables.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for rule in rules:
            suite.add_expectation(rule)
        definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name=name))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"validate_{name}",
                validation_definitions=[definition],
                actions=[],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": index_columns,
                    "partial_unexpected_count": max_examples,
                },
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        (suite_result,) = outcome.run_results.values()
        results[name] = suite_result.to_json_dict()
        logger.info("suite %s: success=%s", name, suite_result.success)
    context.build_data_docs()
    sites = context.get_docs_sites_urls()
    site = Path(sites[0]["site_url"].removeprefix("file://")).parent
    return results, site


def validate_cohort(
    manifest: Manifest,
    series: pd.DataFrame,
    params: ValidateParams,
    out_dir: Path,
    *,
    known_hospitals: list[str] | None = None,
) -> ValidationReport:
    """Run the ``patients``, ``scans`` and ``series`` suites and write their results.

    Args:
        manifest: ``patients.csv`` and ``scans.csv`` as text tables (:func:`covidnet.data.cohort.read_manifest`).
        series: the header table of :mod:`covidnet.data.dicom`, one row per series; only rows
            whose ``selected`` is true are validated.
        params: the ``validate:`` section of ``params.yaml``.
        out_dir: folder for ``results.json``, ``gx/<suite>.json`` and ``data_docs/``;
            replaced as a whole, only once everything is written.
        known_hospitals: when given, every ``patients.csv`` hospital must be one of these.

    Returns:
        The report; failing data does not raise (check ``report.success``).

    Raises:
        ValueError: a table lacks a column this stage reads, a column cannot be typed, or
            an expectation could not be evaluated (a bug, not bad data).
    """
    from covidnet.data.cohort import PATIENT_COLUMNS, SCAN_COLUMNS

    _require_columns(manifest.patients, PATIENT_COLUMNS, PATIENTS_FILE)
    _require_columns(manifest.scans, SCAN_COLUMNS, SCANS_FILE)
    patients = _patients_frame(manifest.patients)
    labels = _labels_by_patient(patients)
    scans = _scans_frame(manifest.scans, labels)
    series_frame = _series_frame(series, manifest.scans, labels)

    import great_expectations as gx

    patient_ids = sorted({p for p in patients["patient_id"] if p is not None})
    study_uids = sorted({s for s in scans["study_uid"] if s is not None})
    series_index = [_ROW, "patient_id", "study_uid", "series_uid"]
    tables = {
        "patients": (patients, _patients_suite(gx, params, known_hospitals), [_LINE]),
        "scans": (scans, _scans_suite(gx, params, patient_ids), [_LINE]),
        "series": (series_frame, _series_suite(gx, params, patient_ids, study_uids), series_index),
    }
    out_dir = Path(out_dir)
    with atomic_path(out_dir, directory=True) as tmp, tempfile.TemporaryDirectory(prefix="covidnet-gx-") as work:
        raw, site = _run_suites(Path(work), tables, params.max_examples)
        (tmp / GX_DIR).mkdir()
        summary: dict[str, Any] = {"success": True, "params": _params_dict(params), "suites": {}}
        failures: list[Failure] = []
        counts: dict[str, dict[str, int]] = {}
        for name, (frame, _rules, index_columns) in tables.items():
            (tmp / GX_DIR / f"{name}.json").write_text(json.dumps(raw[name], indent=2, default=str) + "\n")
            entry, suite_failures = _summarize(name, raw[name], frame, index_columns, params)
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
        shutil.copytree(site, tmp / DATA_DOCS_DIR)
    report = ValidationReport(success=bool(summary["success"]), failures=failures, counts=counts)
    logger.info("validation %s: %s", "passed" if report.success else "failed", out_dir)
    return report


def _params_dict(params: ValidateParams) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(params).items()}


def _write_results(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
