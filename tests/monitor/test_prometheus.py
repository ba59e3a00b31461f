"""Prometheus metrics (src/covidnet/monitor/prometheus.py): the exposition parses with prometheus_client's
parser and carries the counts, the score histogram, QC flags and the rolling drift gauges."""

import dataclasses
import datetime as dt

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from covidnet.model.reference import load_reference
from covidnet.monitor.params import monitor_params
from covidnet.monitor.prometheus import MonitorMetrics
from covidnet.params import load_params
from support import REPO
from support.monitor import model_folder, rows

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    want = {"model": "covidnet", "version": "v1", **labels}
    hits = [v for (n, ls), v in samples.items() if n == name and dict(ls) == want]
    assert len(hits) == 1, (name, labels, [k for k in samples if k[0] == name])
    return hits[0]


@pytest.fixture()
def metrics(tmp_path):
    params = dataclasses.replace(monitor_params(load_params(REPO / "params.yaml")), metrics_window=100)
    m = MonitorMetrics("covidnet", "v1", load_reference(model_folder(tmp_path / "model")), params, CollectorRegistry())
    yield m
    m.close()


def test_counts_histogram_qc_and_a_calm_window(metrics):
    calm = [dataclasses.replace(r, qc_out_of_range=()) for r in rows("v1", 60, T0, seed=1)]  # all in range
    calm[0] = dataclasses.replace(calm[0], qc_out_of_range=("noise_hu", "hu_p05"))
    calm[1] = dataclasses.replace(calm[1], qc_out_of_range=None)  # no QC reference: not checked
    metrics.observe(calm)
    samples = _samples(metrics.exposition())
    n_covid = sum(r.decision == "covid19" for r in calm)
    assert _value(samples, "covidnet_predictions_total", decision="covid19") == n_covid
    assert _value(samples, "covidnet_predictions_total", decision="other_pneumonia") == 60 - n_covid
    assert _value(samples, "covidnet_score_count") == 60
    assert _value(samples, "covidnet_score_bucket", le="0.5") == sum(r.score <= 0.5 for r in calm)
    assert _value(samples, "covidnet_score_sum") == pytest.approx(sum(r.score for r in calm))
    assert _value(samples, "covidnet_qc_checked_total") == 59
    assert _value(samples, "covidnet_qc_out_of_range_total", field="noise_hu") == 1
    assert _value(samples, "covidnet_drift_window") == 60 and _value(samples, "covidnet_drift_alarm") == 0
    for series in ("noise_hu", "lung_fraction", "score"):
        assert 0 <= _value(samples, "covidnet_drift_psi", series=series) < 0.25
        assert 0 <= _value(samples, "covidnet_drift_ks", series=series) <= 1
        assert 0 <= _value(samples, "covidnet_drift_ks_pvalue", series=series) <= 1


def test_the_window_slides_into_an_alarm_and_back(metrics):
    metrics.observe(rows("v1", 60, T0, seed=1))
    metrics.observe(rows("v1", 100, T0, seed=2, noise=35.0))  # the window (100) now holds noisy studies only
    samples = _samples(metrics.exposition())
    assert _value(samples, "covidnet_drift_alarm") == 1 and _value(samples, "covidnet_drift_window") == 100
    assert _value(samples, "covidnet_drift_psi", series="noise_hu") > 0.25
    assert metrics.verdict().drifted == ["noise_hu"]
    metrics.observe(rows("v1", 100, T0, seed=3))  # calm again: the noisy studies slide out
    assert _value(_samples(metrics.exposition()), "covidnet_drift_alarm") == 0


def test_seed_from_the_log_and_no_reference(tmp_path, metrics):
    frame = pd.DataFrame([r.row() for r in rows("v1", 40, T0, seed=4, noise=35.0)])
    assert metrics.seed(frame) == 40
    assert metrics.verdict().n == 40 and metrics.verdict().alarm  # drifting already at start-up
    params = monitor_params(load_params(REPO / "params.yaml"))
    bare = MonitorMetrics("covidnet", "v1", None, params, CollectorRegistry())
    bare.observe(rows("v1", 5, T0, seed=5))
    names = {f.name for f in text_string_to_metric_families(bare.exposition())}
    assert {"covidnet_predictions", "covidnet_score", "covidnet_drift_alarm"} <= names
    assert bare.verdict() is None
    bare.close()
    MonitorMetrics("covidnet", "v1", None, params, bare.registry).close()  # re-registering after close works
