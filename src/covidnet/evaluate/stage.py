"""The evaluate stage: the paper's Table 1, Table 2, Fig. 2, Fig. 4 and Supplementary Table 9.

Input is one row per patient (``patient_id,label,score`` with optional ``hospital`` and
``reader_<name>`` columns; label 1 = COVID-19, 0 = other pneumonia; score = probability of
COVID-19). :func:`evaluate_predictions` computes every figure with a percentile-bootstrap
CI over patients (all figures from the same resamples, see :mod:`covidnet.evaluate.metrics`), then
writes ``metrics.json`` (the contract below), ``roc.csv``, ``reliability.csv``, the PNG
plots and a Markdown and HTML report into one folder.

``metrics.json`` holds fractions in [0, 1]. A figure is ``{"value", "ci": [lo, hi]}``; an
undefined one (AUC with one class, PPV with no positive calls) is
``{"value": null, "ci": null, "reason": "..."}``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet import atomic
from covidnet.evaluate.metrics import (CALIBRATORS, CLASSES, FIGURES, Calibrator, agreement_indicators, bootstrap,
                              brier_score, cell_counts, confusion_indicators, expected_calibration_error, figure,
                              fit_calibrator, kappa_from_counts, rates, reliability_curve, score_stat,
                              undefined_reason)
from covidnet.params import ParamsError
from covidnet.errors import CovidnetError

__all__ = ["Calibrator", "EvaluateParams", "PredictionsError", "evaluate_predictions", "fit_calibrator",
           "log_to_mlflow", "read_predictions", "validate_predictions"]

log = logging.getLogger(__name__)

REQUIRED = ("patient_id", "label", "score")
READER_PREFIX = "reader_"
OUTPUT_FILES = ("metrics.json", "roc.csv", "reliability.csv", "report.md", "report.html", "roc.png",
                "confusion.png", "reliability.png", "tsne.png")
_MAX_SHOWN = 5


class PredictionsError(CovidnetError, ValueError):
    """A predictions table breaks a rule; the message names the file, column and line/row."""


@dataclass(frozen=True)
class EvaluateParams:
    """The ``evaluate`` section of params.yaml."""

    threshold: float = 0.5                 # score >= threshold calls COVID-19
    bootstrap: int = 10000                 # percentile-bootstrap replications over patients (0: no CIs)
    seed: int = 2021
    ci: float = 0.95
    calibration_bins: int = 10             # equal-width bins of the reliability curve and ECE
    calibrator: str = "none"               # none | temperature | isotonic (fitted on validation only)
    reader_groups: dict[str, str] = field(default_factory=dict)  # reader name -> group name
    tsne_perplexity: float = 30.0          # lowered to (n - 1) / 3 for small sets

    def __post_init__(self) -> None:
        checks = [
            ("threshold", 0.0 <= self.threshold <= 1.0, "must be in [0, 1]"),
            ("bootstrap", self.bootstrap >= 0, "must be >= 0"),
            ("ci", 0.0 < self.ci < 1.0, "must be in (0, 1), e.g. 0.95"),
            ("calibration_bins", self.calibration_bins >= 1, "must be >= 1"),
            ("calibrator", self.calibrator in CALIBRATORS, f"must be one of {list(CALIBRATORS)}"),
            ("tsne_perplexity", self.tsne_perplexity > 0, "must be > 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ParamsError(f"evaluate.{name} {rule}, got {getattr(self, name)!r}")
        for reader, group in self.reader_groups.items():
            if not str(reader).strip() or not isinstance(group, str) or not group.strip():
                raise ParamsError(f"evaluate.reader_groups: reader {reader!r} -> group {group!r}: names must be "
                                  "non-empty strings")


# --- input ------------------------------------------------------------------------------------

def _bad(source: str, column: str, rule: str, where: list[str], values: list[Any]) -> PredictionsError:
    shown = "; ".join(f"{w}: {v!r}" for w, v in zip(where[:_MAX_SHOWN], values[:_MAX_SHOWN]))
    more = f" (and {len(where) - _MAX_SHOWN} more)" if len(where) > _MAX_SHOWN else ""
    return PredictionsError(f"{source}: column {column!r} {rule}; {shown}{more}")


def validate_predictions(frame: pd.DataFrame, source: str = "predictions",
                         locations: list[str] | None = None) -> pd.DataFrame:
    """Check and type a predictions table (from a CSV or built in memory).

    Args:
        frame: ``patient_id, label, score`` and optional ``hospital``, ``reader_<name>``.
        source: named in errors (the file path).
        locations: how to name each row in errors (``line 7``); default ``row <index>``.

    Returns:
        A copy with ``patient_id``/``hospital`` as str, ``label`` and readers as int8,
        ``score`` as float64; other columns dropped (with a warning).

    Raises:
        PredictionsError: naming the column and the offending lines/rows and values.
    """
    frame = frame.rename(columns=lambda c: str(c).strip())
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise PredictionsError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}; expected "
                               "patient_id,label,score[,hospital][,reader_<name>...]")
    if len(frame) == 0:
        raise PredictionsError(f"{source}: no rows after the header (expected one row per patient)")
    where = np.array(locations if locations is not None else [f"row {i}" for i in frame.index], dtype=object)
    readers = [c for c in frame.columns if c.startswith(READER_PREFIX)]
    extra = [c for c in frame.columns if c not in (*REQUIRED, "hospital", *readers)]
    if extra:
        warnings.warn(f"{source}: ignoring column(s) {extra}", stacklevel=2)
    out = pd.DataFrame(index=frame.index)

    def text(col: str) -> pd.Series:
        values = frame[col].astype(str).str.strip()
        empty = frame[col].isna().to_numpy() | (values == "").to_numpy()
        if empty.any():
            raise _bad(source, col, "must not be empty", list(where[empty]), ["" for _ in where[empty]])
        return values

    def numeric(col: str, allowed: str) -> np.ndarray:
        values = pd.to_numeric(frame[col].astype(str).str.strip(), errors="coerce").to_numpy(np.float64)
        bad = ~(np.isin(values, (0.0, 1.0)) if allowed == "binary" else (values >= 0) & (values <= 1))
        if bad.any():
            rule = "must be 0 or 1" if allowed == "binary" else "must be a number in [0, 1] (not NaN)"
            raise _bad(source, col, rule, list(where[bad]), list(frame[col].to_numpy()[bad]))
        return values

    out["patient_id"] = text("patient_id")
    dup = out["patient_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        first = out["patient_id"][dup].iloc[0]
        lines = list(where[(out["patient_id"] == first).to_numpy()])
        raise PredictionsError(f"{source}: column 'patient_id' must be unique (one row per patient); "
                               f"{first!r} appears at {', '.join(lines)} ({int(dup.sum())} rows share an id)")
    out["label"] = numeric("label", "binary").astype(np.int8)
    out["score"] = numeric("score", "unit")
    if "hospital" in frame.columns:
        out["hospital"] = text("hospital")
    for col in readers:
        if not col[len(READER_PREFIX):].strip():
            raise PredictionsError(f"{source}: column {col!r} needs a reader name after {READER_PREFIX!r}")
        out[col] = numeric(col, "binary").astype(np.int8)
    return out.reset_index(drop=True)


def read_predictions(path: Path | str) -> pd.DataFrame:
    """Read and validate a predictions CSV; errors name the file and the 1-based CSV line.

    Raises:
        PredictionsError: file missing or empty, a column missing, NaN or out-of-range
            score, label or reader value not 0/1, empty or duplicate patient id.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise PredictionsError(f"{path}: the file is empty (expected a header patient_id,label,score and one "
                               "row per patient)") from None
    except pd.errors.ParserError as exc:
        raise PredictionsError(f"{path}: not a valid CSV: {exc}") from None
    lines = [f"line {i + 2}" for i in range(len(raw))]
    blank = (raw == "").all(axis=1).to_numpy() if len(raw.columns) else np.zeros(len(raw), bool)
    return validate_predictions(raw[~blank], str(path), [l for l, b in zip(lines, blank) if not b])


# --- figures ------------------------------------------------------------------------------------

def _reader_names(preds: pd.DataFrame) -> list[str]:
    return [c[len(READER_PREFIX):] for c in preds.columns if c.startswith(READER_PREFIX)]


def _nested(point: dict, samples: dict, prefix: str, params: EvaluateParams) -> dict[str, Any]:
    def fig(name: str) -> dict[str, Any]:
        return figure(point[prefix + name], samples.get(prefix + name), params.ci,
                      undefined_reason(name, params.threshold))

    out: dict[str, Any] = {"accuracy": fig("accuracy")}
    if prefix + "auc" in point:
        out["auc"] = fig("auc")
    for cls in CLASSES:
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


# --- the stage -----------------------------------------------------------------------------------

def _tsne(features: np.ndarray, perplexity: float, seed: int) -> tuple[np.ndarray | None, str]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 4:
        return None, f"t-SNE needs at least 4 patients, got {n}"
    x = features.reshape(n, -1).astype(np.float64)
    if x.shape[1] > 50:
        x = PCA(n_components=min(50, n), random_state=seed).fit_transform(x)
    p = min(perplexity, (n - 1) / 3)
    note = f"perplexity {p:g}" + (f" (lowered from {perplexity:g} for {n} patients)" if p < perplexity else "")
    return TSNE(n_components=2, perplexity=p, init="pca", random_state=seed).fit_transform(x), note


def evaluate_predictions(preds: pd.DataFrame, params: EvaluateParams, out_dir: Path | str, *, synthetic: bool,
                         title: str = "test", features: np.ndarray | None = None,
                         calibrator: Calibrator | None = None) -> dict[str, Any]:
    """Compute every figure and write the report folder.

    Args:
        preds: one row per patient (validated again here, so a frame built in memory works).
        params: the ``evaluate`` section.
        out_dir: folder for the outputs (:data:`OUTPUT_FILES`); each file is replaced
            atomically after all were produced, other files in the folder are left alone.
        synthetic: whether the patients are synthetic (said in the metrics and reports).
        title: the set's name (``test``, ``external``); prefixes the MLflow metric names.
        features: ``(N, C)`` features before the final fully-connected layer, rows in the
            order of ``preds``; adds the t-SNE plot (Fig. 2 form).
        calibrator: when given, the calibration of ``calibrator.apply(score)`` is reported
            beside the raw one. Every other figure uses the raw scores.

    Returns:
        The ``metrics.json`` content.
    """
    preds = validate_predictions(preds, f"predictions ({title})")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", title):
        raise ValueError(f"title {title!r} must be letters, digits, '_', '.' or '-' (it names MLflow metrics)")
    if features is not None and (features.ndim < 2 or len(features) != len(preds)):
        raise ValueError(f"features must be (N, C) with N = {len(preds)} rows of the predictions, got "
                         f"{features.shape}")
    metrics = {"title": title, "synthetic": bool(synthetic), **compute_metrics(preds, params)}
    y, s = preds["label"].to_numpy(), preds["score"].to_numpy()
    curves = {"raw": reliability_curve(s, y, params.calibration_bins)}
    if calibrator is not None:
        cs = calibrator.apply(s)
        curves[f"calibrated ({calibrator.kind})"] = reliability_curve(cs, y, params.calibration_bins)
        metrics["calibration"]["calibrated"] = {"kind": calibrator.kind, "ece": expected_calibration_error(
            cs, y, params.calibration_bins), "brier": brier_score(cs, y)}
    if len(np.unique(y)) == 2:
        from sklearn.metrics import roc_curve

        fpr, tpr, thr = roc_curve(y, s)
        roc = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})
    else:
        roc = pd.DataFrame({"fpr": [], "tpr": [], "threshold": []})
    embedding, tsne_note = (None, "")
    if features is not None:
        embedding, tsne_note = _tsne(np.asarray(features), params.tsne_perplexity, params.seed)
        metrics["tsne"] = {"n": int(len(preds)), "note": tsne_note}
    wrong = (s >= params.threshold) != y.astype(bool)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".evaluate-", dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        atomic.write_json(tmp / "metrics.json", metrics)
        atomic.write_csv(tmp / "roc.csv", roc)
        atomic.write_csv(tmp / "reliability.csv", pd.concat(
            [pd.DataFrame({"scores": k, **v}) for k, v in curves.items()], ignore_index=True))
        from covidnet.evaluate import report  # matplotlib: only when a report is written

        report.write_report(tmp, metrics, roc, curves, embedding=embedding, labels=y, wrong=wrong,
                            tsne_note=tsne_note)
        for name in OUTPUT_FILES:
            if (tmp / name).exists():
                os.replace(tmp / name, out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)  # a stale plot from an earlier run
    log.info("evaluate %s: %d patients, outputs in %s", title, len(preds), out_dir)
    return metrics


# --- MLflow ----------------------------------------------------------------------------------------

def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics named ``<title>_<figure>`` (``test_auc``, ``test_auc_ci_lo``); nulls left out."""
    t = metrics["title"]
    out: dict[str, float] = {f"{t}_n": metrics["n"], f"{t}_n_positive": metrics["n_positive"]}

    def safe(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name)

    def put(name: str, fig: dict[str, Any]) -> None:
        if fig.get("value") is not None:
            out[name] = fig["value"]
        if fig.get("ci"):
            out[f"{name}_ci_lo"], out[f"{name}_ci_hi"] = fig["ci"]

    def rows(prefix: str, block: dict[str, Any]) -> None:
        for key in ("accuracy", "auc"):
            if key in block:
                put(f"{prefix}_{key}", block[key])
        for cls in CLASSES:
            for f in FIGURES:
                put(f"{prefix}_{cls}_{f}", block[cls][f])
        out.update({f"{prefix}_{k}": v for k, v in block["confusion"].items()})

    rows(t, metrics)
    for name, h in metrics["per_hospital"].items():
        out.update({f"{t}_hospital_{safe(name)}_{k}": v for k, v in h["confusion"].items()})
        for k in ("sensitivity", "specificity"):
            put(f"{t}_hospital_{safe(name)}_{k}", h[k])
    for name, r in metrics["readers"].items():
        rows(f"{t}_reader_{safe(name)}", r)
    for name, fig in metrics["kappa"]["model_vs_reader"].items():
        put(f"{t}_kappa_model_{safe(name)}", fig)
    for name, fig in metrics["kappa"]["reader_vs_reader"].items():
        put(f"{t}_kappa_{safe(name.replace(' vs ', '__'))}", fig)
    cal = metrics["calibration"]
    out.update({f"{t}_ece": cal["ece"], f"{t}_brier": cal["brier"]})
    if "calibrated" in cal:
        out.update({f"{t}_calibrated_ece": cal["calibrated"]["ece"], f"{t}_calibrated_brier": cal["calibrated"]["brier"]})
    return {k: float(v) for k, v in out.items()}


def log_to_mlflow(metrics: dict[str, Any], out_dir: Path | str) -> None:
    """Log :func:`flat_metrics` and the report files (under ``evaluate/<title>``) to MLflow.

    Uses the active run; without one, opens a run for this call and ends it.
    """
    import contextlib

    import mlflow

    out_dir = Path(out_dir)
    run = contextlib.nullcontext() if mlflow.active_run() is not None else mlflow.start_run()
    with run:
        mlflow.log_metrics(flat_metrics(metrics))
        mlflow.set_tags({f"{metrics['title']}_synthetic": str(metrics["synthetic"]).lower(),
                         f"{metrics['title']}_threshold": str(metrics["threshold"])})
        for name in OUTPUT_FILES:
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), artifact_path=f"evaluate/{metrics['title']}")


# --- the trained model ----------------------------------------------------------------------------

def evaluate_model(index: pd.DataFrame, preprocessed: Path | str, model_dir: Path | str, params: EvaluateParams,
                   out_dir: Path | str, calibrator_path: Path | str, *, synthetic: bool,
                   sets: tuple[str, ...] = ("test", "external")) -> dict[str, dict[str, Any]]:
    """The ``evaluate`` stage for a trained model: score each test set and report it.

    Args:
        index: the preprocessed index (``scan_id, patient_id, label, split, hospital, path``).
        preprocessed: the folder the index's paths are relative to.
        model_dir: the ``train`` stage's model folder.
        params: the ``evaluate`` section.
        out_dir: receives ``<set>/`` (the :func:`evaluate_predictions` outputs plus
            ``predictions.csv``) for each set present, and ``metrics.json`` (every set's
            scalar figures, for ``dvc metrics``).
        calibrator_path: where the calibrator fitted on the validation split is written
            (``{"kind": "none"}`` when ``params.calibrator`` is ``none``), beside the model for
            serving; with a tracked model it is also logged into the training run's
            ``covidnet/`` artifact folder (the model folder), so the registered version has it.
        synthetic: whether the cohort is synthetic.
        sets: the splits to evaluate (test sets keep each patient's first scan).

    Returns:
        ``{set: metrics}`` for each set that has patients.
    """
    import torch

    from covidnet.data.cohort import LABEL_TO_INT
    from covidnet.model.card import MODEL_ARTIFACT, ModelCard
    from covidnet.model.inference import score, sigmoid

    model, card = ModelCard.load(model_dir)
    preprocessed = Path(preprocessed)
    batch = int(card.config["train"].get("micro_batch_size") or card.config["train"]["batch_size"])

    def scored(split: str) -> tuple[pd.DataFrame, np.ndarray]:
        rows = index[index["split"] == split].reset_index(drop=True)
        tensors = (torch.from_numpy(np.stack([np.load(preprocessed / p).astype(np.float32)
                                              for p in rows["path"][s : s + batch]]))
                   for s in range(0, len(rows), batch))
        logits, feats = score(model, tensors, with_features=True) if len(rows) else (np.zeros(0), np.zeros((0, 1)))
        preds = pd.DataFrame({"patient_id": rows["patient_id"], "label": rows["label"].map(LABEL_TO_INT),
                              "score": sigmoid(logits), "hospital": rows["hospital"], "scan_id": rows["scan_id"]})
        return preds, feats

    calibrator = None
    if params.calibrator != "none":
        val, _ = scored("val")
        calibrator = fit_calibrator(val["score"].to_numpy(), val["label"].to_numpy(), params.calibrator)
    atomic.write_json(calibrator_path, calibrator.to_dict() if calibrator else {"kind": "none"})

    out_dir = Path(out_dir)
    results: dict[str, dict[str, Any]] = {}
    for name in sets:
        preds, feats = scored(name)
        if preds.empty:
            log.warning("evaluate: the %s split is empty; no report for it", name)
            continue
        folder = out_dir / name
        results[name] = evaluate_predictions(preds.drop(columns=["scan_id"]), params, folder, synthetic=synthetic,
                                             title=name, features=feats, calibrator=calibrator)
        atomic.write_csv(folder / "predictions.csv", preds)
    atomic.write_json(out_dir / "metrics.json", {name: flat_metrics(m) for name, m in results.items()})
    run_id = card.mlflow_run_id
    if run_id:
        import mlflow

        with mlflow.start_run(run_id=run_id):
            for name, m in results.items():
                log_to_mlflow(m, out_dir / name)
            # Beside the model folder train logged, so a registered version carries its calibrator (serving).
            mlflow.log_dict(calibrator.to_dict() if calibrator else {"kind": "none"}, f"{MODEL_ARTIFACT}/{ModelCard.CALIBRATOR}")
    return results


@dataclass(frozen=True)
class EvaluateResult:
    """The metrics of each evaluated set (``{"test": ..., "external": ...}``, or ``{"predictions": ...}``)."""

    sets: dict[str, dict[str, Any]]

    def summary(self) -> str:
        lines = []
        for name, m in self.sets.items():
            auc, ci = m["auc"]["value"], m["auc"].get("ci")
            auc_text = "n/a" if auc is None else f"{auc:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
            lines.append(f"{name}: {m['n']} patients, AUC {auc_text}, accuracy {m['accuracy']['value']:.3f}")
        return "; ".join(lines)


def run_evaluate(params: dict[str, Any], paths, predictions: Path | None = None, out: Path | None = None
                 ) -> EvaluateResult:
    """The ``evaluate`` stage: the trained model on the test sets, or (``predictions``) any predictions CSV.

    Args:
        params: merged params (``evaluate``, ``mlflow``, ``data``).
        paths: a :class:`covidnet.paths.Paths`; the model's figures go to ``out`` or
            ``paths.evaluation``, the calibrator to ``paths.calibrator``.
        predictions: a predictions CSV to evaluate instead of the model (written to ``out``,
            default ``paths.evaluation/predictions``).
    """
    from covidnet.params import is_synthetic, section

    eparams = section(params, "evaluate", EvaluateParams)
    synthetic = is_synthetic(params)
    if predictions is not None:
        out = out or paths.evaluation / "predictions"
        return EvaluateResult({"predictions": evaluate_predictions(read_predictions(predictions), eparams, out,
                                                                   synthetic=synthetic, title="predictions")})
    from covidnet.tracking import configure, mlflow_params

    configure(mlflow_params(params))
    index = pd.read_csv(paths.preprocessed / "index.csv", dtype=str, keep_default_na=False)
    return EvaluateResult(evaluate_model(index, paths.preprocessed, paths.model, eparams, out or paths.evaluation,
                                         paths.calibrator, synthetic=synthetic))
