"""Drift statistics (src/covidnet/monitor/drift.py) on numbers small enough to check by hand."""

import dataclasses
import math

import numpy as np
import pytest

from covidnet.monitor.drift import (
    SCORE,
    DriftParams,
    bin_fractions,
    ks,
    psi,
    quantile_edges,
    series_drift,
    table_series,
    window_verdict,
)
from covidnet.monitor.params import monitor_params
from covidnet.params import ParamsError, load_params
from support import REPO


def _params(**changes) -> DriftParams:
    """The repository's monitor.drift params with some values replaced."""
    base = monitor_params(load_params(REPO / "params.yaml")).drift
    return dataclasses.replace(base, **changes)


def test_quantile_edges_and_fractions():
    ref = np.arange(100.0)  # 0 .. 99
    edges = quantile_edges(ref, 4)
    np.testing.assert_allclose(edges, [24, 49, 74])  # reference values: the inverse empirical CDF
    np.testing.assert_allclose(bin_fractions(ref, edges), [0.25, 0.25, 0.25, 0.25])
    # Bin i holds edges[i-1] < x <= edges[i]; NaN is left out.
    np.testing.assert_allclose(bin_fractions([24.0, 24.8, 99.0, np.nan], edges), [1 / 3, 1 / 3, 0, 1 / 3])
    # A discrete reference: repeated quantiles merge into fewer bins.
    np.testing.assert_allclose(quantile_edges([2.5] * 6 + [5.0] * 4, 10), [2.5, 5.0])


def test_psi_by_hand():
    ref = np.arange(100.0)
    # Window fractions 0.4, 0.3, 0.2, 0.1 over the four reference quartiles (0.25 each):
    cur = np.concatenate([np.full(40, 10.0), np.full(30, 30.0), np.full(20, 60.0), np.full(10, 90.0)])
    expected = 0.15 * math.log(1.6) + 0.05 * math.log(1.2) - 0.05 * math.log(0.8) - 0.15 * math.log(0.4)
    assert psi(ref, cur, 4, 1e-4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2282175, abs=1e-7)
    assert psi(ref, ref, 4, 1e-4) == 0.0
    # Every value in the first bin: three empty bins, floored at epsilon.
    eps = 1e-4
    by_hand = 0.75 * math.log(4) + 3 * (eps - 0.25) * math.log(eps / 0.25)
    assert psi(ref, [0.0, 1.0, 2.0], 4, eps) == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(ValueError, match="no finite value"):
        psi(ref, [np.nan], 4, eps)


def test_ks_by_hand():
    stat, p = ks([1, 2, 3, 4], [5, 6, 7])
    assert stat == 1.0
    assert p == pytest.approx(2 / math.comb(7, 3))  # exact: 2 of the 35 orderings separate the samples
    stat, _ = ks([1, 2, 3, 4], [2.5, 3.5])  # CDF gap at 2: 0.5 vs 0.0
    assert stat == 0.5


def test_series_rule_and_bonferroni():
    ref = np.arange(100.0)
    shifted = ref[:40]  # all in the lower 40 %: PSI large, KS p tiny
    for rule, drift in (("psi", True), ("ks", True), ("both", True), ("either", True)):
        assert series_drift("x", ref, shifted, _params(rule=rule, bins=4), alpha=0.01).drifted is drift
    # A small shifted window: PSI over the threshold but KS not significant at alpha -> `both` says no.
    small = [0.0, 1.0, 2.0]
    s = series_drift("x", ref, small, _params(bins=4, psi_threshold=0.25), alpha=1e-6)
    assert s.psi > 0.25 and s.p_value > 1e-6
    assert s.drifted is False and series_drift("x", ref, small, _params(rule="psi", bins=4), 1e-6).drifted
    untested = series_drift("x", [], small, _params(), 0.01)
    assert untested.drifted is None and untested.reason == "no reference value"


def test_window_verdict_counts_and_statuses():
    rng = np.random.default_rng(0)
    ref = {"noise_hu": rng.normal(15, 3, 500), "lung_fraction": rng.uniform(0.2, 0.4, 500),
           "score": rng.uniform(0, 1, 500)}
    p = _params(features=("noise_hu", "lung_fraction"), score=True, min_window=30, min_drifted=1, rule="both")
    same = {"noise_hu": rng.normal(15, 3, 60), "lung_fraction": rng.uniform(0.2, 0.4, 60),
            "score": rng.uniform(0, 1, 60)}
    v = window_verdict(ref, same, p)
    assert v.status == "ok" and v.n == 60 and not v.drifted
    assert all(s.alpha == pytest.approx(p.ks_alpha / 3) for s in v.series)  # Bonferroni over 3 series
    noisy = {**same, "noise_hu": rng.normal(40, 3, 60)}
    v = window_verdict(ref, noisy, p)
    assert v.alarm and v.drifted == ["noise_hu"]
    assert v.as_dict()["series"]["noise_hu"]["current_median"] > 35
    few = {k: x[:10] for k, x in noisy.items()}
    assert window_verdict(ref, few, p).status == "insufficient"
    assert window_verdict(ref, noisy, dataclasses.replace(p, min_drifted=2)).status == "ok"
    # No score reference (a model trained before reference profiles): score untested, alpha over 2.
    v = window_verdict({k: ref[k] for k in ("noise_hu", "lung_fraction")}, noisy, p)
    assert v.series[-1].name == "score" and v.series[-1].drifted is None
    assert v.series[0].alpha == pytest.approx(p.ks_alpha / 2)


@pytest.mark.parametrize("changes,message", [
    ({"bins": 1}, r"monitor.drift.bins must be >= 2, got 1"),
    ({"rule": "any"}, r"monitor.drift.rule must be one of"),
    ({"ks_alpha": 0.0}, r"monitor.drift.ks_alpha must be in \(0, 1\), got 0.0"),
    ({"features": ("hu_p05", "shoe_size")}, r"\['shoe_size'\] not QC values"),
    ({"features": ("hu_p05",), "score": False, "min_drifted": 2}, "alarm could never fire"),
])
def test_params_validate_themselves(changes, message):
    with pytest.raises(ParamsError, match=message):
        _params(**changes)


def test_table_series_from_log_rows_and_from_a_reference():
    import pandas as pd

    p = _params(features=("noise_hu", "slice_spacing_mm"), score=True)
    rows = pd.DataFrame({"noise_hu": [10.0, None], "slice_spacing_mm": ["2.5", "x"], "score": [0.2, 0.9]})
    out = table_series(rows, p)
    assert list(out) == ["noise_hu", "slice_spacing_mm", SCORE]
    np.testing.assert_array_equal(out["noise_hu"], [10.0, np.nan])
    np.testing.assert_array_equal(out["slice_spacing_mm"], [2.5, np.nan])  # unparseable -> NaN, left out later
    np.testing.assert_array_equal(out[SCORE], [0.2, 0.9])
    qc = rows.drop(columns="score")
    assert SCORE not in table_series(qc, p)  # a reference without validation scores: score untested
    np.testing.assert_array_equal(table_series(qc, p, scores=[0.5])[SCORE], [0.5])
    assert list(table_series(rows, dataclasses.replace(p, score=False))) == ["noise_hu", "slice_spacing_mm"]
