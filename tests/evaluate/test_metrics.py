"""Metric kernels and the vectorised bootstrap against scikit-learn, replicate by replicate."""

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, precision_score, recall_score, roc_auc_score

from covidnet.evaluate.metrics import (
    Calibrator,
    agreement_indicators,
    auc_from_counts,
    bootstrap,
    cell_counts,
    expected_calibration_error,
    figure,
    fit_calibrator,
    kappa_from_counts,
    rates,
    resample_indices,
    score_stat,
)


def _data(n, seed, decimals=1):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(decimals)  # rounding makes many ties
    return y, s


@pytest.mark.parametrize("decimals", [1, 2, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_auc_equals_sklearn_with_ties(seed, decimals):
    y, s = _data(200, seed, decimals)
    point, _ = bootstrap(len(y), score_stat(y, s, 0.5), reps=0, seed=0)
    assert point["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # integer weights = a sample with repeats, as scikit-learn's sample_weight
    w = np.random.default_rng(seed).integers(0, 4, size=len(y))
    uniq, group = np.unique(s, return_inverse=True)
    pos, neg = (np.bincount(group, w * (y == v), minlength=len(uniq))[None] for v in (1, 0))
    assert auc_from_counts(pos, neg)[0] == pytest.approx(roc_auc_score(y, s, sample_weight=w))


def test_every_replicate_equals_sklearn_on_the_resample():
    y, s = _data(80, 3)
    idx = resample_indices(np.random.default_rng(7), len(y), 40)
    got = score_stat(y, s, 0.5)(idx)
    for b, i in enumerate(idx):
        yb, sb = y[i], s[i]
        pred = (sb >= 0.5).astype(int)
        assert got["accuracy"][b] == pytest.approx(accuracy_score(yb, pred))
        assert got["covid.sensitivity"][b] == pytest.approx(recall_score(yb, pred))
        assert got["covid.specificity"][b] == pytest.approx(recall_score(yb, pred, pos_label=0))
        assert got["covid.ppv"][b] == pytest.approx(precision_score(yb, pred))
        assert got["covid.npv"][b] == pytest.approx(precision_score(yb, pred, pos_label=0))
        assert got["covid.f1"][b] == pytest.approx(f1_score(yb, pred))
        assert got["non_covid.sensitivity"][b] == pytest.approx(recall_score(yb, pred, pos_label=0))
        assert got["non_covid.f1"][b] == pytest.approx(f1_score(yb, pred, pos_label=0))
        assert got["auc"][b] == pytest.approx(roc_auc_score(yb, sb))


def test_cell_counts_are_multinomial_draws():
    idx = resample_indices(np.random.default_rng(0), 50, 2000)
    w = cell_counts(idx, np.arange(50), 50)
    assert w.shape == (2000, 50) and (w.sum(axis=1) == 50).all()
    assert w.mean() == pytest.approx(1.0) and w.var() == pytest.approx(1 - 1 / 50, rel=0.05)
    np.testing.assert_array_equal(w[3], np.bincount(idx[3], minlength=50))


def test_bootstrap_cis_agree_with_a_plain_sklearn_loop():
    """Independent resamples: CIs agree within Monte Carlo error of the loop's few replicates."""
    y, s = _data(60, 11, decimals=2)
    _, vec = bootstrap(len(y), score_stat(y, s, 0.5), reps=10000, seed=1)
    rng, loop = np.random.default_rng(99), {"accuracy": [], "covid.sensitivity": [], "auc": []}
    reps = 400
    for _ in range(reps):
        i = rng.integers(0, len(y), len(y))
        pred = (s[i] >= 0.5).astype(int)
        loop["accuracy"].append(accuracy_score(y[i], pred))
        loop["covid.sensitivity"].append(recall_score(y[i], pred, zero_division=np.nan))
        loop["auc"].append(roc_auc_score(y[i], s[i]) if len(set(y[i])) == 2 else np.nan)
    sub = np.random.default_rng(5)
    for name, values in loop.items():
        v = vec[name][np.isfinite(vec[name])]
        # Monte Carlo SE of a 2.5 / 97.5 percentile from `reps` replicates, by subsampling ours
        draws = np.array([np.quantile(sub.choice(v, reps), [0.025, 0.975]) for _ in range(300)])
        tol = 4 * draws.std(axis=0) + 1e-9
        diff = np.abs(np.nanquantile(values, [0.025, 0.975]) - np.quantile(v, [0.025, 0.975]))
        assert (diff <= tol).all(), (name, diff, tol)


def test_undefined_rates_are_nan():
    r = rates(np.array([0.0]), np.array([0.0]), np.array([5.0]), np.array([0.0]))
    assert np.isnan(r["covid.sensitivity"][0]) and np.isnan(r["covid.ppv"][0]) and np.isnan(r["covid.f1"][0])
    assert r["covid.specificity"][0] == 1.0 and r["accuracy"][0] == 1.0
    assert figure(np.nan, None, 0.95, "why") == {"value": None, "ci": None, "reason": "why"}
    f = figure(0.5, np.array([0.4, np.nan, 0.6]), 0.95, "why")
    assert f["undefined_replicates"] == 1 and 0.4 <= f["ci"][0] < f["ci"][1] <= 0.6


@pytest.mark.parametrize("seed", range(5))
def test_kappa_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(50) < 0.5
    b = np.where(rng.random(50) < 0.7, a, rng.random(50) < 0.5)
    k = kappa_from_counts(*agreement_indicators(a, b).sum(axis=0))
    assert k == pytest.approx(cohen_kappa_score(a, b))


def test_kappa_undefined_when_both_constant():
    a = np.ones(10, bool)
    assert np.isnan(kappa_from_counts(*agreement_indicators(a, a).sum(axis=0)))
    # one constant rater against a varying one is defined (0)
    assert kappa_from_counts(*agreement_indicators(a, np.arange(10) < 5).sum(axis=0)) == pytest.approx(0.0)


def _overconfident(n, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    true_p = 1 / (1 + np.exp(-rng.normal(1.2 * (2 * y - 1), 1.5)))
    y = (rng.random(n) < true_p).astype(int)  # labels drawn from the true probabilities
    z = np.log(true_p / (1 - true_p))
    return y, 1 / (1 + np.exp(-3 * z))  # scores 3x too confident


@pytest.mark.parametrize("kind", ["temperature", "isotonic"])
def test_calibrators_reduce_ece_and_round_trip(kind):
    yv, sv = _overconfident(2000, 0)
    yt, st = _overconfident(2000, 1)
    cal = fit_calibrator(sv, yv, kind)
    before, after = expected_calibration_error(st, yt, 10), expected_calibration_error(cal.apply(st), yt, 10)
    assert after < 0.6 * before, (before, after)
    if kind == "temperature":
        assert cal.temperature == pytest.approx(3.0, rel=0.2)
        assert ((cal.apply(st) >= 0.5) == (st >= 0.5)).all()  # the 0.5 decision is kept
    else:
        iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(sv, yv)
        np.testing.assert_allclose(cal.apply(st), iso.predict(st))
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    np.testing.assert_array_equal(again.apply(st), cal.apply(st))


def test_calibrator_errors():
    with pytest.raises(ValueError, match="'platt' is not one of"):
        fit_calibrator(np.array([0.2, 0.8]), np.array([0, 1]), "platt")
    with pytest.raises(ValueError, match="one class only"):
        fit_calibrator(np.array([0.2, 0.8]), np.array([1, 1]), "temperature")
    with pytest.raises(ValueError, match="unknown key"):
        Calibrator.from_dict({"kind": "none", "slope": 2})
    assert fit_calibrator(np.array([0.2, 0.8]), np.array([0, 1]), "none").apply(np.array([0.3]))[0] == 0.3
