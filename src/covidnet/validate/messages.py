"""What the ``validate`` stage reports: failed expectations as readable lines that say where.

:func:`_summarize` turns one suite's Great Expectations result (its JSON dict) into our
summary entry and a :class:`Failure` per failed expectation; a failure names the column as
the user knows it, the rule in words, and each unexpected value with where it is: the CSV
line of a manifest row, or the patient and series of a series-table row. Examples are
grouped by value: ``'P2' (lines 3, 4)``. :class:`ValidationReport` collects the failures of
every suite. Nothing here imports Great Expectations.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from covidnet.validate.suites import SUITE_SOURCE
from covidnet.validate.tables import _LINE, _ROW

#: The summary file of the output folder; it keeps every example a message leaves out.
RESULTS_FILE = "results.json"
# Examples located by UIDs that Failure.format() prints (results.json keeps max_examples).
_FORMAT_UID_EXAMPLES = 5


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
    """What :func:`covidnet.validate.cohort.validate_cohort` found.

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
    suite: str, result: dict[str, Any], frame: pd.DataFrame, index_columns: list[str], max_examples: int
) -> tuple[dict[str, Any], list[Failure]]:
    """One suite's GX result (``to_json_dict()``) -> its ``results.json`` entry and its failures.

    Args:
        suite: ``patients``, ``scans`` or ``series``.
        result: the suite's validation result as GX writes it.
        frame: the table the suite ran over (:mod:`covidnet.validate.tables`).
        index_columns: the columns that locate a row (``line``, or ``row`` and the UIDs);
            the first is unique per row.
        max_examples: unexpected values kept per failed expectation.

    Raises:
        ValueError: an expectation could not be evaluated (a bug, not bad data).
    """
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
        for entry in (res.get("unexpected_index_list") or [])[:max_examples]:
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
