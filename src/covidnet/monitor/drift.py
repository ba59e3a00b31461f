"""Drift statistics: served values against a model's reference, as pure functions.

For each monitored series (a QC feature, or the network's raw score) a window of served
values is compared with the reference values of the model that served them
(:mod:`covidnet.model.reference`: its training scans' QC values, its validation scores):

* **PSI**, the population stability index ``sum_i (q_i - p_i) ln(q_i / p_i)`` over bins whose
  edges are the reference's quantiles ``1/bins ... (bins-1)/bins`` (:func:`quantile_edges`; each bin holds about
  ``1/bins`` of the reference; repeated edges of a discrete feature are merged, giving fewer
  bins); ``p`` and ``q`` are the reference and window fractions, each raised to at least
  ``epsilon`` so that an empty bin gives a large but finite term. PSI grows with the shift;
  0.1 and 0.25 are the conventional "moderate" and "large" marks. On small windows PSI is
  biased upwards (about ``(bins - 1) / n`` for a window of ``n`` from the reference itself),
  which is why the default rule also asks for a significant KS test.
* **KS**, the two-sample Kolmogorov-Smirnov statistic (the largest gap between the two
  empirical CDFs) and its p-value (``scipy.stats.ks_2samp``, two-sided). With ``k`` series
  tested in one window, each is tested at ``ks_alpha / k`` (Bonferroni), so ``ks_alpha`` is
  the family-wise level of the window.

A series *drifts* by ``rule``: ``psi`` (PSI > ``psi_threshold``), ``ks`` (p < ``ks_alpha / k``),
``both`` (the two together: a shift that is large *and* significant) or ``either``. A window
*alarms* when at least ``min_drifted`` series drift; a window with fewer than ``min_window``
values is ``insufficient`` and never alarms. Non-finite values are left out of both samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from covidnet.params import ParamsError

RULES = ("psi", "ks", "both", "either")
SCORE = "score"  # the name of the score series beside the QC features


@dataclass(frozen=True)
class DriftParams:
    """The ``monitor.drift`` section of params.yaml."""

    window_hours: float                # `covidnet monitor drift` default window: the last N hours
    min_window: int                    # fewer values in a window: verdict `insufficient`, no alarm
    bins: int                          # PSI bins (reference quantiles)
    epsilon: float                     # PSI: each bin fraction raised to at least this
    psi_threshold: float               # a series drifts by PSI when PSI > this
    ks_alpha: float                    # family-wise KS level of a window (Bonferroni over its series)
    rule: str                          # psi | ks | both | either
    min_drifted: int                   # series that must drift for an alarm
    features: tuple[str, ...]          # QC features monitored (columns of reference/qc.csv)
    score: bool                        # also monitor the raw score against the validation scores

    def __post_init__(self) -> None:
        checks = [
            ("window_hours", self.window_hours > 0, "must be > 0"),
            ("min_window", self.min_window >= 2, "must be >= 2"),
            ("bins", self.bins >= 2, "must be >= 2"),
            ("epsilon", 0 < self.epsilon < 1, "must be in (0, 1)"),
            ("psi_threshold", self.psi_threshold > 0, "must be > 0"),
            ("ks_alpha", 0 < self.ks_alpha < 1, "must be in (0, 1)"),
            ("rule", self.rule in RULES, f"must be one of {list(RULES)}"),
            ("min_drifted", self.min_drifted >= 1, "must be >= 1"),
            ("features", len(self.features) + int(self.score) >= 1, "and score: monitor at least one series"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ParamsError(f"monitor.drift.{name} {rule}, got {getattr(self, name)!r}")
        from covidnet.preprocess.qc import QC_VALUES

        unknown = [f for f in self.features if f not in QC_VALUES]
        if unknown:
            raise ParamsError(f"monitor.drift.features: {unknown} not QC values; known: {list(QC_VALUES)}")
        if self.min_drifted > len(self.features) + int(self.score):
            raise ParamsError(f"monitor.drift.min_drifted {self.min_drifted} exceeds the {len(self.series)} "
                              "monitored series: the alarm could never fire")

    @property
    def series(self) -> tuple[str, ...]:
        """The monitored series: the QC features, then ``score`` when enabled."""
        return (*self.features, SCORE) if self.score else tuple(self.features)


def table_series(frame: Any, params: DriftParams, scores: Any = None) -> dict[str, np.ndarray]:
    """The monitored series of a table: each QC feature column (``params.features``) and, with
    ``params.score``, :data:`SCORE` from ``scores`` (default: the table's ``score`` column).

    Args:
        frame: a pandas table: rows of the prediction log, or a reference's QC table.
        params: which series are monitored.
        scores: the score values when they are not a column of ``frame`` (a reference's
            validation scores); a series with no values is left out (reported untested).
    """
    import pandas as pd

    out = {f: pd.to_numeric(frame[f], errors="coerce").to_numpy(np.float64) for f in params.features if f in frame}
    if params.score:
        values = frame["score"] if scores is None and "score" in frame else scores
        if values is not None:
            out[SCORE] = np.asarray(values, np.float64)
    return out


def _finite(values: Any) -> np.ndarray:
    v = np.asarray(values, np.float64).ravel()
    return v[np.isfinite(v)]


def quantile_edges(reference: Any, bins: int) -> np.ndarray:
    """Interior bin edges: the reference's ``k / bins`` quantiles, ``k = 1 .. bins - 1``, deduplicated.

    The quantiles are reference values (the inverse of the empirical CDF, no interpolation), so a
    discrete feature such as the slice spacing is binned at its own values. Bin ``i`` holds ``edges[i-1] < x <= edges[i]`` (the first and last bins are open).

    Raises:
        ValueError: no finite reference value.
    """
    ref = _finite(reference)
    if ref.size == 0:
        raise ValueError("quantile_edges: the reference holds no finite value")
    return np.unique(np.quantile(ref, np.arange(1, bins) / bins, method="inverted_cdf"))


def bin_fractions(values: Any, edges: np.ndarray) -> np.ndarray:
    """The fraction of ``values`` in each of the ``len(edges) + 1`` bins of :func:`quantile_edges`."""
    v = _finite(values)
    counts = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    return counts / max(v.size, 1)


def psi(reference: Any, current: Any, bins: int, epsilon: float) -> float:
    """Population stability index of ``current`` against ``reference`` (module docstring).

    Args:
        reference: reference values (e.g. the training scans' noise in HU).
        current: the window's values of the same quantity.
        bins: bins from the reference's quantiles (fewer when quantiles repeat).
        epsilon: floor of each bin fraction.

    Raises:
        ValueError: either sample holds no finite value.
    """
    cur = _finite(current)
    if cur.size == 0:
        raise ValueError("psi: the current window holds no finite value")
    edges = quantile_edges(reference, bins)
    p = np.maximum(bin_fractions(reference, edges), epsilon)
    q = np.maximum(bin_fractions(cur, edges), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and two-sided p-value (``scipy.stats.ks_2samp``).

    Raises:
        ValueError: either sample holds no finite value.
    """
    from scipy.stats import ks_2samp

    ref, cur = _finite(reference), _finite(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("ks: both samples need a finite value")
    res = ks_2samp(ref, cur)
    return float(res.statistic), float(res.pvalue)


@dataclass(frozen=True)
class SeriesDrift:
    """One series of one window: the statistics and whether it drifts (``None``: not tested)."""

    name: str
    n_reference: int
    n_current: int
    psi: float | None
    ks: float | None
    p_value: float | None
    alpha: float | None                # the KS level this series was tested at (Bonferroni)
    drifted: bool | None
    reference_median: float | None
    current_median: float | None
    reason: str | None = None          # why it was not tested


@dataclass(frozen=True)
class Verdict:
    """A window's verdict: ``ok``, ``alarm`` or ``insufficient`` (too few values to judge)."""

    status: str
    n: int
    drifted: list[str]
    series: list[SeriesDrift]

    @property
    def alarm(self) -> bool:
        return self.status == "alarm"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "alarm": self.alarm, "n": self.n, "drifted": list(self.drifted),
                "series": {s.name: asdict(s) for s in self.series}}


def _median(v: np.ndarray) -> float | None:
    return float(np.median(v)) if v.size else None


def series_drift(name: str, reference: Any, current: Any, params: DriftParams, alpha: float) -> SeriesDrift:
    """PSI and KS of one series, and whether it drifts by ``params.rule`` at KS level ``alpha``."""
    ref, cur = _finite(reference), _finite(current)
    base = {"name": name, "n_reference": int(ref.size), "n_current": int(cur.size),
            "reference_median": _median(ref), "current_median": _median(cur)}
    if ref.size == 0 or cur.size == 0:
        why = "no reference value" if ref.size == 0 else "no finite value in the window"
        return SeriesDrift(**base, psi=None, ks=None, p_value=None, alpha=None, drifted=None, reason=why)
    value = psi(ref, cur, params.bins, params.epsilon)
    stat, p = ks(ref, cur)
    by_psi, by_ks = value > params.psi_threshold, p < alpha
    drifted = {"psi": by_psi, "ks": by_ks, "both": by_psi and by_ks, "either": by_psi or by_ks}[params.rule]
    return SeriesDrift(**base, psi=value, ks=stat, p_value=p, alpha=alpha, drifted=bool(drifted))


def window_verdict(reference: dict[str, Any], current: dict[str, Any], params: DriftParams) -> Verdict:
    """Judge one window of served values against the reference.

    Args:
        reference: ``{series: values}`` of the model's reference (QC features of its training
            scans; ``score``: its validation scores).
        current: ``{series: values}`` of the window (one value per served study).
        params: thresholds and the alarm rule.

    Returns:
        The :class:`Verdict`. A series missing from ``reference`` is reported untested (e.g. a
        model without a score reference); ``n`` is the number of studies in the window.
    """
    names = params.series
    n = max((len(np.asarray(current.get(s, []), dtype=np.float64).ravel()) for s in names), default=0)
    testable = [s for s in names if _finite(reference.get(s, [])).size and _finite(current.get(s, [])).size]
    alpha = params.ks_alpha / max(len(testable), 1)
    results = [series_drift(s, reference.get(s, []), current.get(s, []), params, alpha) for s in names]
    drifted = [r.name for r in results if r.drifted]
    if n < params.min_window:
        status = "insufficient"
    else:
        status = "alarm" if len(drifted) >= params.min_drifted else "ok"
    return Verdict(status=status, n=n, drifted=drifted, series=results)
