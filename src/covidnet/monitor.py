"""Drift reports over the prediction log: ``covidnet monitor drift``.

:func:`drift_report` reads the log's rows of a time window (:mod:`covidnet.predlog`), groups
them by the model version that served them, finds each version's reference profile
(:mod:`covidnet.reference`: in a local model folder whose version matches, else in the MLflow
registry, where the profile travels in the training run's ``covidnet/reference`` artifacts),
and judges each group with :func:`covidnet.drift.window_verdict`: per QC feature and for the
score, PSI and KS against the reference, plus the score distribution (quantiles, fraction
called COVID-19) beside the validation one. The report is written as ``drift.json`` and
``drift.html`` (atomically) and its ``alarm`` is what ``covidnet monitor drift`` turns into
exit status 3 for alerting.

The monitor's parameters are the ``monitor`` section of params.yaml (:class:`MonitorParams`).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.drift import SCORE, DriftParams, window_verdict
from covidnet.params import ParamsError
from covidnet.predlog import LogParams
from covidnet.reference import Reference, ReferenceError, load_reference

log = logging.getLogger(__name__)

#: Exit status of `covidnet monitor drift` (and `performance`) when the alarm is raised.
ALARM_EXIT = 3


@dataclass(frozen=True)
class FeedbackParams:
    """The ``monitor.feedback`` section of params.yaml."""

    pcr_max_days: int                  # a PCR result labels its patient's predictions within this many days

    def __post_init__(self) -> None:
        if self.pcr_max_days < 0:
            raise ParamsError(f"monitor.feedback.pcr_max_days must be >= 0, got {self.pcr_max_days!r}")


@dataclass(frozen=True)
class MonitorParams:
    """The ``monitor`` section of params.yaml."""

    log: LogParams
    drift: DriftParams
    metrics_window: int                # /metrics: rolling drift over the last N answered studies
    feedback: FeedbackParams

    def __post_init__(self) -> None:
        if self.metrics_window < self.drift.min_window:
            raise ParamsError(f"monitor.metrics_window {self.metrics_window!r} must be >= monitor.drift.min_window "
                              f"{self.drift.min_window} (else the /metrics alarm can never be judged)")


def monitor_params(params: dict[str, Any]) -> MonitorParams:
    """The ``monitor`` section of merged params (errors name the file and the dotted key)."""
    from covidnet.params import section

    return section(params, "monitor", MonitorParams)
