"""Metric kernels, the vectorised percentile bootstrap over patients, and score calibrators.

:func:`bootstrap` draws a block of ``B`` resamples of ``n`` patients as one ``(B, n)`` index
array, and every statistic is evaluated on the whole block at once, with no Python loop
over replicates. A replicate's confusion counts and AUC come from one ``bincount`` of its
patients' (score group, label) cells (:func:`score_stat`); other binary raters from the
draw counts per patient times indicator columns (``w @ indicator``). The point estimate is
the same function on the sample itself, so estimate and replicates cannot drift apart.

Labels: 1 = COVID-19, 0 = other pneumonia. Scores: probability of COVID-19 in [0, 1].
A call is COVID-19 when ``score >= threshold``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FIGURES = ("sensitivity", "specificity", "ppv", "npv", "f1")
CALIBRATORS = ("none", "temperature", "isotonic")

StatFn = Callable[[np.ndarray], dict[str, np.ndarray]]

_EPS = 1e-7


# --- confusion counts and the figures derived from them -------------------------------------

def confusion_indicators(labels: np.ndarray, calls: np.ndarray) -> np.ndarray:
    """``(n, 4)`` indicator columns ``tp, fp, tn, fn`` for binary ``labels`` and ``calls``."""
    y = np.asarray(labels, bool)
    c = np.asarray(calls, bool)
    return np.stack([y & c, ~y & c, ~y & ~c, y & ~c], axis=1).astype(np.float64)


def rates(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and, for each class taken as positive, the five figures of the paper's Table 1.

    Works elementwise on arrays of counts (one per replicate); a figure whose denominator is
    zero is NaN. Keys: ``accuracy``, ``covid.sensitivity`` ... ``non_covid.f1``.
    """
    tp, fp, tn, fn = (np.asarray(x, np.float64) for x in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"accuracy": (tp + tn) / (tp + fp + tn + fn)}
        for name, (p, fp_, n, fn_) in {"covid": (tp, fp, tn, fn), "non_covid": (tn, fn, tp, fp)}.items():
            out[f"{name}.sensitivity"] = p / (p + fn_)
            out[f"{name}.specificity"] = n / (n + fp_)
            out[f"{name}.ppv"] = p / (p + fp_)
            out[f"{name}.npv"] = n / (n + fn_)
            out[f"{name}.f1"] = 2 * p / (2 * p + fp_ + fn_)
    return out


def undefined_reason(name: str, threshold: float) -> str:
    """Why figure ``name`` (a :func:`rates` key or ``auc``/``kappa``) has a zero denominator."""
    cls, _, fig = name.rpartition(".")
    pos, neg = ("COVID-19", "non-COVID-19") if cls != "non_covid" else ("non-COVID-19", "COVID-19")
    reasons = {
        "sensitivity": f"no {pos} patients in the sample",
        "specificity": f"no {neg} patients in the sample",
        "ppv": f"no patient called {pos} at threshold {threshold:g}",
        "npv": f"no patient called {neg} at threshold {threshold:g}",
        "f1": f"no {pos} patients and none called {pos} at threshold {threshold:g}",
        "accuracy": "no patients",
        "auc": "AUC needs both classes; only one is present",
        "kappa": "both raters gave every patient the same single rating (expected agreement is 1)",
    }
    return reasons[fig]


def auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC per row from ``(B, G)`` counts of COVID-19 (``pos``) and other (``neg``) patients
    in ``G`` groups of equal score, ascending.

    AUC = P(a COVID-19 patient scores above another patient) + 0.5 P(tie), which is what
    ``sklearn.metrics.roc_auc_score`` computes; exact integer sums. NaN where a row lacks a class.
    """
    below2 = 2 * np.cumsum(neg, axis=1) - neg  # twice (negatives strictly below + half the tied ones)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.einsum("ij,ij->i", pos, below2) / (2.0 * pos.sum(axis=1) * neg.sum(axis=1))


def kappa_from_counts(both: np.ndarray, only_a: np.ndarray, only_b: np.ndarray,
                      neither: np.ndarray) -> np.ndarray:
    """Cohen's kappa from the 2x2 agreement counts of two binary raters (NaN if undefined)."""
    n = both + only_a + only_b + neither
    with np.errstate(divide="ignore", invalid="ignore"):
        pa, pb = (both + only_a) / n, (both + only_b) / n
        observed = (both + neither) / n
        expected = pa * pb + (1 - pa) * (1 - pb)
        return (observed - expected) / (1 - expected)


def agreement_indicators(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, 4)`` indicator columns ``both, only_a, only_b, neither`` of two binary raters."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return np.stack([a & b, a & ~b, ~a & b, ~a & ~b], axis=1).astype(np.float64)


# --- the bootstrap ------------------------------------------------------------------------------

def resample_indices(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``(reps, n)`` positions of ``reps`` resamples of ``n`` patients with replacement."""
    return rng.integers(0, n, size=(reps, n), dtype=np.int32 if reps * max(n, 2) < 2**31 else np.int64)


def cell_counts(idx: np.ndarray, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """``(B, n_codes)`` counts of each code among the resampled patients ``idx`` ``(B, n)``.

    ``codes`` ``(n,)`` gives each patient's cell (e.g. ``2 * score group + label``); with
    ``codes = arange(n)`` the result is how often each patient was drawn.
    """
    b = idx.shape[0]
    drawn = np.asarray(codes, idx.dtype)[idx]
    drawn += (np.arange(b, dtype=idx.dtype) * n_codes)[:, None]
    return np.bincount(drawn.ravel(), minlength=b * n_codes).reshape(b, n_codes)


def score_stat(labels: np.ndarray, scores: np.ndarray, threshold: float) -> StatFn:
    """The statistic of :func:`rates` and ``auc`` for one scorer, for :func:`bootstrap`.

    Patients are binned into (score group, label) cells once; a replicate is then one
    ``bincount`` of its resampled cells, and the confusion counts at ``threshold`` and the
    AUC (ties included) follow from cumulative sums over the ascending score groups.
    """
    y = np.asarray(labels, np.int64)
    uniq, group = np.unique(np.asarray(scores, np.float64), return_inverse=True)
    n_groups, below = len(uniq), int(np.searchsorted(uniq, threshold, side="left"))
    codes = 2 * group.ravel() + y

    def stat(idx: np.ndarray) -> dict[str, np.ndarray]:
        k = cell_counts(idx, codes, 2 * n_groups).reshape(len(idx), n_groups, 2)
        neg, pos = k[:, :, 0], k[:, :, 1]
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        fn = pos[:, :below].sum(axis=1)
        tn = neg[:, :below].sum(axis=1)
        return {**rates(n_pos - fn, n_neg - tn, tn, fn), "auc": auc_from_counts(pos, neg)}

    return stat


def bootstrap(n: int, stat: StatFn, *, reps: int, seed: int,
              block: int | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Point estimates and ``reps`` percentile-bootstrap replicates of every statistic.

    Args:
        n: number of patients (the resampling unit).
        stat: maps ``(B, n)`` resampled patient positions to ``{name: (B,) values}``.
        reps: replicates.
        seed: seeds ``numpy.random.default_rng``; the same seed and ``n`` draw the same
            resamples, so separate calls on the same patients are paired.
        block: replicates per block (memory about ``16 * block * n`` bytes); default keeps
            a block near 0.5 M draws.

    Returns:
        ``(point, samples)``: ``{name: float}`` (NaN when undefined), from ``stat`` on the
        sample itself, and ``{name: (reps,)}``.
    """
    point = {k: float(v[0]) for k, v in stat(np.arange(n)[None]).items()}
    block = block or max(1, min(reps, 500_000 // max(n, 1)))
    rng = np.random.default_rng(seed)
    parts = [stat(resample_indices(rng, n, min(block, reps - start))) for start in range(0, reps, block)]
    samples = {k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0) for k in point}
    return point, samples


def figure(value: float, samples: np.ndarray | None, level: float, reason: str) -> dict[str, Any]:
    """One figure for metrics.json: ``{"value", "ci"}``, or nulls with ``reason``.

    The CI is the percentile interval of the replicates where the figure is defined; when
    some replicates are undefined (e.g. no positive call in a resample) their number is
    given as ``undefined_replicates``.
    """
    if not np.isfinite(value):
        return {"value": None, "ci": None, "reason": reason}
    out: dict[str, Any] = {"value": float(value), "ci": None}
    if samples is None or len(samples) == 0:
        out["reason_ci"] = "no bootstrap replicates"
        return out
    ok = np.isfinite(samples)
    if not ok.any():
        out["reason_ci"] = f"undefined in every bootstrap replicate: {reason}"
        return out
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(samples[ok], [alpha, 1 - alpha])
    out["ci"] = [float(lo), float(hi)]
    if not ok.all():
        out["undefined_replicates"] = int((~ok).sum())
    return out


# --- calibration ----------------------------------------------------------------------------

def reliability_curve(scores: np.ndarray, labels: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Equal-width bins of ``scores`` on [0, 1]: count, mean score and fraction COVID-19 per bin."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    which = np.clip((s * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_score = np.bincount(which, s, minlength=bins) / count
        frac_pos = np.bincount(which, y, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {"bin_lo": edges[:-1], "bin_hi": edges[1:], "n": count.astype(int),
            "mean_score": mean_score, "fraction_covid": frac_pos}


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE: the count-weighted mean of |fraction COVID-19 - mean score| over equal-width bins."""
    curve = reliability_curve(scores, labels, bins)
    used = curve["n"] > 0
    gaps = np.abs(curve["fraction_covid"][used] - curve["mean_score"][used])
    return float(np.sum(curve["n"][used] * gaps) / len(np.asarray(scores)))


def brier_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between the score and the label."""
    return float(np.mean((np.asarray(scores, np.float64) - np.asarray(labels, np.float64)) ** 2))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from raw scores to calibrated probabilities, saved beside the model.

    ``kind`` is ``none`` (identity), ``temperature`` (``sigmoid(logit(s) / temperature)``)
    or ``isotonic`` (piecewise-linear through ``x``/``y`` knots, clipped at the ends, as
    scikit-learn's ``IsotonicRegression.predict``). Temperature scaling keeps the ranking
    and the decision at threshold 0.5; isotonic regression may change both.
    """

    kind: str = "none"
    temperature: float = 1.0
    x: tuple[float, ...] = field(default_factory=tuple)
    y: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in CALIBRATORS:
            raise ValueError(f"calibrator kind {self.kind!r} is not one of {list(CALIBRATORS)}")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"calibrator temperature must be a positive number, got {self.temperature!r}")
        if self.kind == "isotonic" and (len(self.x) == 0 or len(self.x) != len(self.y)):
            raise ValueError(f"isotonic calibrator needs equal-length non-empty knots, got {len(self.x)} x "
                             f"and {len(self.y)} y")

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw ``scores`` (same shape)."""
        s = np.asarray(scores, np.float64)
        if self.kind == "temperature":
            return 1.0 / (1.0 + np.exp(-_logit(s) / self.temperature))
        if self.kind == "isotonic":
            return np.interp(s, self.x, self.y)
        return s.copy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (no pickle): ``{"kind", "temperature", "x", "y"}``."""
        return {"kind": self.kind, "temperature": float(self.temperature),
                "x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibrator":
        """Rebuild from :meth:`to_dict` output."""
        unknown = sorted(set(data) - {"kind", "temperature", "x", "y"})
        if unknown:
            raise ValueError(f"calibrator: unknown key(s) {unknown}")
        return cls(kind=data.get("kind", "none"), temperature=float(data.get("temperature", 1.0)),
                   x=tuple(float(v) for v in data.get("x", ())), y=tuple(float(v) for v in data.get("y", ())))


def fit_calibrator(val_scores: np.ndarray, val_labels: np.ndarray, kind: str) -> Calibrator:
    """Fit a calibrator on the validation split only (never on a test set).

    Args:
        val_scores: ``(n,)`` raw probabilities of COVID-19 in [0, 1].
        val_labels: ``(n,)`` 0/1 labels.
        kind: ``none``, ``temperature`` (one temperature on the logits, minimising the
            negative log-likelihood with ``scipy.optimize.minimize_scalar``) or ``isotonic``.
    """
    if kind not in CALIBRATORS:
        raise ValueError(f"calibrator kind {kind!r} is not one of {list(CALIBRATORS)}")
    s = np.asarray(val_scores, np.float64)
    y = np.asarray(val_labels, np.float64)
    if s.shape != y.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"fit_calibrator: scores {s.shape} and labels {y.shape} must be equal non-empty 1-D")
    if kind == "none":
        return Calibrator()
    if len(np.unique(y)) < 2:
        raise ValueError(f"fit_calibrator({kind!r}): the validation labels hold one class only")
    if kind == "temperature":
        from scipy.optimize import minimize_scalar

        z = _logit(s)

        def nll(log_t: float) -> float:
            zt = z / np.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, zt) - y * zt))

        res = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded")
        return Calibrator(kind="temperature", temperature=float(np.exp(res.x)))
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return Calibrator(kind="isotonic", x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))
