"""The validation page: every expectation of every suite, passed or failed, in one self-contained HTML file.

Great Expectations' Data Docs load their CSS and JavaScript from a CDN, so offline (a hospital
network is often air-gapped) their pages are blank; this page is built from the same results
with :mod:`covidnet.pages` and loads nothing.
"""

from __future__ import annotations

from typing import Any

from covidnet.pages import Block
from covidnet.validate.messages import Failure

#: The page in the validate stage's output folder.
PAGE_FILE = "index.html"


def _rule(config: dict[str, Any]) -> str:
    kwargs = config.get("kwargs", {})
    args = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column", "row_condition", "condition_parser")}
    rule = (config.get("meta") or {}).get("rule")
    text = rule or ", ".join(f"{k}={v!r}" for k, v in args.items())
    condition = kwargs.get("row_condition")
    return text + (f" (where {condition})" if condition else "")


def validation_blocks(summary: dict[str, Any], raw: dict[str, dict[str, Any]], failures: list[Failure], *,
                      synthetic: bool) -> list[Block]:
    """The page's content.

    Args:
        summary: ``results.json``'s content (per suite: source, rows, success).
        raw: each suite's Great Expectations result (its JSON dict).
        failures: the failed expectations, readable (:class:`covidnet.validate.messages.Failure`).
        synthetic: whether the cohort is synthetic (said at the top).
    """
    ok = summary["success"]
    blocks: list[Block] = [("h1", "Validation of the cohort: " + ("all expectations met" if ok else "FAILED"))]
    if synthetic:
        blocks.append(("p", "**Synthetic data**: this cohort is synthetic; nothing here describes real patients."))
    counts = summary["counts"]
    blocks.append(("table", (["suite", "source", "rows", "expectations", "failed"],
                             [[name, summary["suites"][name]["source"], str(c["rows"]), str(c["expectations"]),
                               str(c["failed"])] for name, c in counts.items()])))
    if failures:
        blocks += [("h2", "Failed expectations"), ("list", [f.format() for f in failures])]
    for name, result in raw.items():
        rows = []
        for item in result.get("results", []):
            config = item.get("expectation_config", {})
            found = (item.get("result") or {}).get("unexpected_count")
            rows.append([config.get("kwargs", {}).get("column", ""), config.get("type", ""), _rule(config),
                         "passed" if item.get("success") else f"FAILED ({found} row(s))"])
        blocks += [("h2", f"Suite {name} ({summary['suites'][name]['source']})"),
                   ("table", (["column", "expectation", "rule", "result"], rows))]
    return blocks
