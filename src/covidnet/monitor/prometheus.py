"""Prometheus metrics of the endpoint: predictions, scores, QC flags and rolling drift.

KServe's ``/metrics`` route encodes ``prometheus_client``'s default registry (``REGISTRY``,
``kserve/protocol/rest/server.py``), so :class:`MonitorMetrics` registers there by default
(tests pass their own ``CollectorRegistry``). One instance per served model; the series:

``covidnet_predictions_total{model,version,decision}``
    answered studies by decision (``covid19``, ``other_pneumonia``);
``covidnet_score{model,version}``
    histogram of the raw network score, ``monitor.drift.bins`` equal-width buckets on [0, 1];
``covidnet_qc_checked_total{model,version}``, ``covidnet_qc_out_of_range_total{model,version,field}``
    studies whose QC values were checked against the training range, and those with a value
    outside it, by QC field;
``covidnet_drift_psi{model,version,series}``, ``covidnet_drift_ks{...}``, ``covidnet_drift_ks_pvalue{...}``
    PSI, KS statistic and p-value of the last ``monitor.metrics_window`` answered studies
    against the model's reference profile (:func:`covidnet.monitor.drift.window_verdict`), per QC
    feature and for the score; computed when ``/metrics`` is scraped, not per request;
``covidnet_drift_window{model,version}``, ``covidnet_drift_alarm{model,version}``
    the studies in that window, and 1 when its verdict is an alarm (0 while the window is
    below ``monitor.drift.min_window``).

The rolling window lives in the process; :meth:`MonitorMetrics.seed` fills it from the
prediction log when the server starts, so a restart does not blind the drift gauges. With
several server processes each reports its own window (label the scrape by pod).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np
import pandas as pd

from covidnet.monitor.drift import SCORE, table_series, window_verdict
from covidnet.monitor.predlog import Prediction


class MonitorMetrics:
    """The endpoint's Prometheus metrics for one served model (module docstring).

    Args:
        model_name, model_version: label values of every series.
        reference: the model's reference profile (:class:`covidnet.model.reference.Reference`), or
            None (no drift gauges then, only counts).
        params: :class:`covidnet.monitor.params.MonitorParams` (drift rule, window size, bins).
        registry: where to register; default ``prometheus_client.REGISTRY`` (what KServe serves).
    """

    def __init__(self, model_name: str, model_version: str, reference, params, registry=None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        self.registry = registry if registry is not None else REGISTRY
        self.labels = {"model": model_name, "version": model_version}
        self.params = params
        self.reference = (None if reference is None else
                          table_series(reference.qc, params.drift, scores=reference.scores))
        self._window = {s: deque(maxlen=params.metrics_window) for s in params.drift.series}
        self._lock = threading.Lock()
        names = ("model", "version")
        buckets = [float(b) for b in np.linspace(0.0, 1.0, params.drift.bins + 1)[1:]]
        self.predictions = Counter("covidnet_predictions", "Answered studies by decision", [*names, "decision"],
                                   registry=self.registry)
        self.score = Histogram("covidnet_score", "Raw network score of answered studies (sigmoid, before "
                                                 "calibration)", names, buckets=buckets, registry=self.registry)
        self.qc_checked = Counter("covidnet_qc_checked", "Studies whose QC values were checked against the "
                                                         "training range", names, registry=self.registry)
        self.qc_out = Counter("covidnet_qc_out_of_range", "Studies with a QC value outside the training range, "
                                                          "by field", [*names, "field"], registry=self.registry)
        self._collectors = [self.predictions, self.score, self.qc_checked, self.qc_out]
        self.registry.register(self)  # the rolling drift gauges (collect() below)
        self._collectors.append(self)

    def close(self) -> None:
        """Unregister every series (a model unloaded, a test finished)."""
        for c in self._collectors:
            self.registry.unregister(c)
        self._collectors = []

    def observe(self, rows: Sequence[Prediction]) -> None:
        """Count answered studies and add them to the rolling window."""
        for r in rows:
            self.predictions.labels(**self.labels, decision=r.decision).inc()
            self.score.labels(**self.labels).observe(float(r.score))
            if r.qc_out_of_range is not None:
                self.qc_checked.labels(**self.labels).inc()
                for f in r.qc_out_of_range:
                    self.qc_out.labels(**self.labels, field=f).inc()
        with self._lock:
            for r in rows:
                for s, window in self._window.items():
                    v = r.score if s == SCORE else r.qc.get(s)
                    window.append(np.nan if v is None else float(v))

    def seed(self, frame: pd.DataFrame) -> int:
        """Fill the rolling window from log rows (:meth:`covidnet.monitor.predlog.PredictionLog.recent`); the count."""
        with self._lock:
            for s, values in table_series(frame, self.params.drift).items():
                self._window[s].extend(values.tolist())
        return int(min(len(frame), self.params.metrics_window))

    def verdict(self):
        """The rolling window's :class:`covidnet.monitor.drift.Verdict` (None without a reference)."""
        if self.reference is None:
            return None
        with self._lock:
            current = {s: np.array(w, np.float64) for s, w in self._window.items()}
        return window_verdict(self.reference, current, self.params.drift)

    def describe(self) -> list:
        return list(self._families())

    def collect(self):
        yield from self._families(self.verdict())

    def _families(self, verdict=None):
        from prometheus_client.core import GaugeMetricFamily

        names = ["model", "version"]
        psi = GaugeMetricFamily("covidnet_drift_psi", "PSI of the rolling window against the reference, per series",
                                labels=[*names, "series"])
        ks = GaugeMetricFamily("covidnet_drift_ks", "Two-sample KS statistic of the rolling window against the "
                                                    "reference, per series", labels=[*names, "series"])
        pvalue = GaugeMetricFamily("covidnet_drift_ks_pvalue", "KS p-value of the rolling window, per series",
                                   labels=[*names, "series"])
        size = GaugeMetricFamily("covidnet_drift_window", "Answered studies in the rolling drift window", labels=names)
        alarm = GaugeMetricFamily("covidnet_drift_alarm", "1 when the rolling window's drift verdict is an alarm",
                                  labels=names)
        values = [self.labels["model"], self.labels["version"]]
        if verdict is not None:
            for s in verdict.series:
                if s.drifted is not None:
                    psi.add_metric([*values, s.name], s.psi)
                    ks.add_metric([*values, s.name], s.ks)
                    pvalue.add_metric([*values, s.name], s.p_value)
            size.add_metric(values, verdict.n)
            alarm.add_metric(values, 1.0 if verdict.alarm else 0.0)
        return [psi, ks, pvalue, size, alarm]

    def exposition(self) -> str:
        """The registry's text exposition (what ``/metrics`` answers)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

