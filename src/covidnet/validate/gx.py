"""The Great Expectations runner: the one module that imports ``great_expectations``.

The import happens inside :func:`_run_suites`, so importing the ``validate`` package (the CLI,
the KFP components) stays fast; only running the stage pays for GX. Each suite's
:class:`covidnet.validate.suites.Rule` list becomes a GX expectation suite, checked by a
checkpoint against its table, in a file-backed context in a scratch folder (no Data Docs: the
stage writes its own page, :mod:`covidnet.validate.page`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from covidnet.validate.suites import Rule

logger = logging.getLogger(__name__)


def _expectation(gx: Any, rule: Rule) -> Any:
    """The GX expectation object of a rule (``expect_column_values_to_be_in_set`` -> ``ExpectColumnValuesToBeInSet``)."""
    from great_expectations.expectations.row_conditions import Column

    name = "".join(part.capitalize() for part in rule.expectation.split("_"))
    cls = getattr(gx.expectations, name, None)
    if cls is None:
        raise ValueError(f"validate: no Great Expectations expectation {rule.expectation!r} (class {name})")
    kwargs = dict(rule.kwargs)
    if rule.when is not None:
        column, value = rule.when
        kwargs["row_condition"] = Column(column) == value
    return cls(column=rule.column, **kwargs)


def _run_suites(
    work: Path,
    tables: dict[str, tuple[pd.DataFrame, list[Rule], list[str]]],
    max_examples: int,
) -> dict[str, dict[str, Any]]:
    """Run each suite through a file-backed GX context in ``work``.

    Args:
        work: an empty scratch folder for the GX project (context, stores).
        tables: per suite name, ``(frame, rules, index_columns)``: the table, its rules, and
            the columns that locate an unexpected row in the result.
        max_examples: unexpected values GX lists per failed expectation.

    Returns:
        Each suite's validation result as a JSON dict.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx_log = logging.getLogger("great_expectations")  # an INFO line per expectation otherwise
    gx_log.setLevel(max(gx_log.getEffectiveLevel(), logging.WARNING))

    context = gx.get_context(mode="file", project_root_dir=str(work))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.enable_analytics(False)
    source = context.data_sources.add_pandas("cohort")
    results = {}
    for name, (frame, rules, index_columns) in tables.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for rule in rules:
            suite.add_expectation(_expectation(gx, rule))
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
    return results
