"""The paper's figures of one set with percentile-bootstrap CIs over patients (Tables 1, 2; Fig. 4; Supp. Table 9).

:func:`compute_metrics` returns the nested ``metrics.json`` contract: fractions in [0, 1], a
figure is ``{"value", "ci": [lo, hi]}``, an undefined one ``{"value": null, "ci": null,
"reason": ...}``; :func:`flat_metrics` flattens it for trackers.
"""

from __future__ import annotations

import re
import warnings
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from covidnet.data.cohort import LABELS
from covidnet.evaluate.metrics import (
    FIGURES,
    agreement_indicators,
    bootstrap,
    brier_score,
    cell_counts,
    confusion_indicators,
    expected_calibration_error,
    figure,
    kappa_from_counts,
    rates,
    score_stat,
    undefined_reason,
)
from covidnet.evaluate.params import EvaluateParams
from covidnet.evaluate.predictions import READER_PREFIX


def _reader_names(preds: pd.DataFrame) -> list[str]:
    return [c[len(READER_PREFIX):] for c in preds.columns if c.startswith(READER_PREFIX)]


def _nested(point: dict, samples: dict, prefix: str, params: EvaluateParams) -> dict[str, Any]:
    def fig(name: str) -> dict[str, Any]:
        return figure(point[prefix + name], samples.get(prefix + name), params.ci,
                      undefined_reason(name, params.threshold))

    out: dict[str, Any] = {"accuracy": fig("accuracy")}
    if prefix + "auc" in point:
        out["auc"] = fig("auc")
    for cls in LABELS:
        out[cls] = {f: fig(f"{cls}.{f}") for f in FIGURES}
    return out


def _confusion(labels: np.ndarray, calls: np.ndarray) -> dict[str, int]:
    tp, fp, tn, fn = confusion_indicators(labels, calls).sum(axis=0).astype(int)
    return {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}


def _summary(values: list[float], what: str) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], np.float64)
    if len(v) == 0:
        return {"median": None, "iqr": None, "n": 0, "reason": f"no defined kappa {what}"}
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"median": float(med), "iqr": [float(q1), float(q3)], "n": int(len(v))}


def compute_metrics(preds: pd.DataFrame, params: EvaluateParams) -> dict[str, Any]:
    """Every figure of ``metrics.json`` for validated predictions (no files written)."""
    n = len(preds)
    y = preds["label"].to_numpy(np.int8)
    s = preds["score"].to_numpy(np.float64)
    calls = s >= params.threshold
    readers = _reader_names(preds)
    raters = {"model": calls, **{r: preds[READER_PREFIX + r].to_numpy(bool) for r in readers}}
    pairs = [("model", r) for r in readers] + list(combinations(readers, 2))
    blocks = [confusion_indicators(y, raters[r]) for r in readers] + [agreement_indicators(raters[a], raters[b])
                                                                      for a, b in pairs]
    design = np.concatenate(blocks, axis=1) if blocks else None
    model = score_stat(y, s, params.threshold)

    def stat(idx: np.ndarray) -> dict[str, np.ndarray]:
        out = model(idx)
        if design is None:
            return out
        counts = cell_counts(idx, np.arange(n), n) @ design  # (B, n) draws per patient x indicators
        for i, r in enumerate(readers):
            out.update({f"reader:{r}/{k}": v for k, v in rates(*counts[:, 4 * i:4 * i + 4].T).items()})
        base = 4 * len(readers)
        for j, (a, b) in enumerate(pairs):
            out[f"kappa:{a}|{b}"] = kappa_from_counts(*counts[:, base + 4 * j:base + 4 * j + 4].T)
        return out

    point, samples = bootstrap(n, stat, reps=params.bootstrap, seed=params.seed)
    metrics: dict[str, Any] = {"n": int(n), "n_positive": int(y.sum()), "threshold": params.threshold}
    metrics.update(_nested(point, samples, "", params))
    metrics["confusion"] = _confusion(y, calls)
    metrics["per_hospital"] = _per_hospital(preds, params)
    metrics["kappa"] = _kappa(point, samples, readers, pairs, params)
    metrics["readers"] = {r: {"group": params.reader_groups.get(r, "ungrouped"),
                              **_nested(point, samples, f"reader:{r}/", params),
                              "confusion": _confusion(y, raters[r])} for r in readers}
    metrics["calibration"] = {"ece": expected_calibration_error(s, y, params.calibration_bins),
                              "brier": brier_score(s, y), "bins": params.calibration_bins}
    metrics["bootstrap"] = {"replications": params.bootstrap, "seed": params.seed, "ci_level": params.ci,
                            "method": "percentile bootstrap over patients"}
    return metrics


def _per_hospital(df: pd.DataFrame, params: EvaluateParams) -> dict[str, Any]:
    if "hospital" not in df.columns:
        return {}
    out = {}
    for name, sub in df.groupby("hospital", sort=True):
        y, s = sub["label"].to_numpy(), sub["score"].to_numpy()
        calls = s >= params.threshold
        model = score_stat(y, s, params.threshold)

        def stat(idx: np.ndarray, model=model) -> dict[str, np.ndarray]:
            r = model(idx)
            return {k: r[f"covid.{k}"] for k in ("sensitivity", "specificity")}

        point, samples = bootstrap(len(sub), stat, reps=params.bootstrap, seed=params.seed)
        out[str(name)] = {"n": int(len(sub)), "confusion": _confusion(y, calls),
                          **{k: figure(point[k], samples[k], params.ci, undefined_reason(k, params.threshold))
                             for k in ("sensitivity", "specificity")}}
    return out


def _kappa(point: dict, samples: dict, readers: list[str], pairs: list[tuple[str, str]],
           params: EvaluateParams) -> dict[str, Any]:
    reason = undefined_reason("kappa", params.threshold)
    figs = {(a, b): figure(point[f"kappa:{a}|{b}"], samples[f"kappa:{a}|{b}"], params.ci, reason) for a, b in pairs}
    out: dict[str, Any] = {
        "model_vs_reader": {b: figs[(a, b)] for a, b in pairs if a == "model"},
        "reader_vs_reader": {f"{a} vs {b}": figs[(a, b)] for a, b in pairs if a != "model"},
        "groups": {},
    }
    if not readers:
        out["reason"] = f"no reader columns ({READER_PREFIX}<name>) in the predictions"
        return out
    unknown = sorted(set(params.reader_groups) - set(readers))
    if unknown:
        warnings.warn(f"evaluate.reader_groups names reader(s) {unknown} with no {READER_PREFIX}<name> column",
                      stacklevel=3)
    groups: dict[str, list[str]] = {}
    for r in readers:
        groups.setdefault(params.reader_groups.get(r, "ungrouped"), []).append(r)
    for g, members in sorted(groups.items()):
        within = [figs[(a, b)]["value"] for a, b in pairs if a in members and b in members]
        out["groups"][g] = {"readers": members,
                            "model_vs_reader": _summary([figs[("model", r)]["value"] for r in members],
                                                        "between the model and these readers"),
                            "reader_vs_reader": _summary(within, "between two readers of this group")}
    return out


#: The few figures of a set a person reads first (``dvc metrics show``, the MLflow run's metrics):
#: name -> (dotted figure in ``metrics.json``, ``value`` or the CI's ``lo``).
HEADLINE = {"auc": ("auc", "value"), "auc_lo": ("auc", "lo"), "sens": ("covid.sensitivity", "value"),
            "spec": ("covid.specificity", "value")}


def headline(metrics: dict[str, Any], digits: int = 3) -> dict[str, float]:
    """:data:`HEADLINE` of one set's metrics, rounded to ``digits``, and its patient count ``n``; an
    undefined figure is left out."""
    out: dict[str, float] = {}
    for name, (dotted, part) in HEADLINE.items():
        fig: Any = metrics
        for key in dotted.split("."):
            fig = fig[key]
        value = fig.get("value") if part == "value" else (fig.get("ci") or [None])[0]
        if value is not None:
            out[name] = round(float(value), digits)
    out["n"] = int(metrics["n"])
    return out


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Every scalar figure of one set, named without the set (``auc``, ``auc_ci_lo``,
    ``covid_sensitivity``, ``hospital_<name>_tp``, ``reader_<name>_accuracy``); nulls left out."""
    out: dict[str, float] = {"n": metrics["n"], "n_positive": metrics["n_positive"]}

    def name(*parts: str) -> str:
        return "_".join(re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in parts if p)

    def put(key: str, fig: dict[str, Any]) -> None:
        if fig.get("value") is not None:
            out[key] = fig["value"]
        if fig.get("ci"):
            out[f"{key}_ci_lo"], out[f"{key}_ci_hi"] = fig["ci"]

    def rows(prefix: str, block: dict[str, Any]) -> None:
        for key in ("accuracy", "auc"):
            if key in block:
                put(name(prefix, key), block[key])
        for cls in LABELS:
            for f in FIGURES:
                put(name(prefix, cls, f), block[cls][f])
        out.update({name(prefix, k): v for k, v in block["confusion"].items()})

    rows("", metrics)
    for hospital, h in metrics["per_hospital"].items():
        out.update({name("hospital", hospital, k): v for k, v in h["confusion"].items()})
        for k in ("sensitivity", "specificity"):
            put(name("hospital", hospital, k), h[k])
    for reader, r in metrics["readers"].items():
        rows(name("reader", reader), r)
    for reader, fig in metrics["kappa"]["model_vs_reader"].items():
        put(name("kappa_model", reader), fig)
    for pair, fig in metrics["kappa"]["reader_vs_reader"].items():
        put(name("kappa", pair.replace(" vs ", "__")), fig)
    if metrics.get("phantom_ceiling"):
        put("phantom_ceiling_auc", metrics["phantom_ceiling"]["auc"])
    sal = metrics.get("saliency") or {}
    if "enrichment" in sal:
        put("saliency_enrichment", sal["enrichment"])
        for anchor, fig in (sal.get("anchors") or {}).items():
            if "enrichment" in fig:
                put(name("saliency", anchor, "enrichment"), fig["enrichment"])
    cal = metrics["calibration"]
    out.update({"ece": cal["ece"], "brier": cal["brier"]})
    if "calibrated" in cal:
        out.update({"calibrated_ece": cal["calibrated"]["ece"], "calibrated_brier": cal["calibrated"]["brier"]})
    return {k: float(v) for k, v in out.items()}
