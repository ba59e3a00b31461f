"""The evaluate stage: the paper's Table 1, Table 2, Fig. 2, Fig. 4 and Supplementary Table 9.

Input is one row per patient (:mod:`covidnet.evaluate.predictions`).
:func:`evaluate_predictions` computes every figure (:mod:`covidnet.evaluate.figures`) with a percentile-bootstrap
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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet import atomic
from covidnet.evaluate.ceiling import phantom_ceiling
from covidnet.evaluate.figures import compute_metrics, flat_metrics, headline
from covidnet.evaluate.metrics import (
    Calibrator,
    brier_score,
    expected_calibration_error,
    fit_calibrator,
    reliability_curve,
)
from covidnet.evaluate.params import EvaluateParams
from covidnet.evaluate.predictions import read_predictions, validate_predictions

log = logging.getLogger(__name__)

OUTPUT_FILES = ("metrics.json", "roc.csv", "reliability.csv", "report.md", "report.html", "roc.png",
                "confusion.png", "reliability.png", "tsne.png", "saliency.png")


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
                         calibrator: Calibrator | None = None, provenance: dict[str, str] | None = None,
                         saliency: dict[str, Any] | None = None, saliency_figure: Path | None = None,
                         links: dict[str, str] | None = None, ceiling: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
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
        provenance: what the report says it is about (model version, training run, commit,
            profile); the report also says when it was written. Not in ``metrics.json``, whose
            content depends on the figures alone.
        saliency: the lesion check of the set's explanations
            (:func:`covidnet.evaluate.saliency.set_saliency`), into ``metrics.json`` and the report.
        saliency_figure: its top true positives (a PNG), shown in the report.
        links: ``{text: relative URL}`` the report links to (the cohort's flow diagram).
        ceiling: the phantom's own AUC on the set (:func:`covidnet.evaluate.ceiling.phantom_ceiling`).

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
    if saliency is not None:
        metrics["saliency"] = saliency
    if ceiling is not None:
        metrics["phantom_ceiling"] = ceiling
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

        if saliency_figure is not None:
            shutil.copyfile(saliency_figure, tmp / "saliency.png")
        report.write_report(tmp, metrics, roc, curves, embedding=embedding, labels=y, wrong=wrong,
                            tsne_note=tsne_note, provenance=provenance, links=links)
        for name in OUTPUT_FILES:
            if (tmp / name).exists():
                os.replace(tmp / name, out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)  # a stale plot from an earlier run
    log.info("evaluate %s: %d patients, outputs in %s", title, len(preds), out_dir)
    return metrics


# --- MLflow ----------------------------------------------------------------------------------------


def log_to_mlflow(metrics: dict[str, Any], out_dir: Path | str) -> None:
    """Log the set's headline figures (:func:`covidnet.evaluate.figures.headline`, as
    ``<title>.auc``, ``<title>.auc_lo``, ...) and its size as metrics, and the report files with the
    full ``metrics.json`` as artifacts (under ``evaluate/<title>``): a run page a person can read.

    Uses the active run; without one, opens a run for this call and ends it.
    """
    import contextlib

    import mlflow

    out_dir = Path(out_dir)
    run = contextlib.nullcontext() if mlflow.active_run() is not None else mlflow.start_run()
    with run:
        title = metrics["title"]
        mlflow.log_metrics({f"{title}.{k}": v for k, v in headline(metrics).items()})
        mlflow.set_tags({f"{metrics['title']}_synthetic": str(metrics["synthetic"]).lower(),
                         f"{metrics['title']}_threshold": str(metrics["threshold"])})
        for name in OUTPUT_FILES:
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name), artifact_path=f"evaluate/{metrics['title']}")


# --- the trained model ----------------------------------------------------------------------------

def _explain_set(model, preds: pd.DataFrame, paths: dict[str, str], preprocessed: Path, lesions_dir: Path | None,
                 explain, hu_window: tuple[float, float], params: EvaluateParams, folder: Path, scratch: Path,
                 synthetic: bool) -> tuple[dict[str, Any], Path | None]:
    """A set's maps (written to ``folder/saliency.npz``), their lesion check and the top-k figure (in ``scratch``)."""
    from covidnet.evaluate.saliency import MAPS_FILE, plot_top, set_saliency, write_maps

    def load(scan_id: str) -> np.ndarray:
        return np.load(preprocessed / paths[scan_id]).astype(np.float32)

    summary, maps = set_saliency(model, load, preds, lesions_dir, explain, hu_window, threshold=params.threshold,
                                 reps=params.bootstrap, seed=params.seed, level=params.ci)
    folder.mkdir(parents=True, exist_ok=True)
    write_maps(folder / MAPS_FILE, maps)
    figure = plot_top(scratch, load, maps, preds, lesions_dir, threshold=params.threshold, top_k=explain.top_k,
                      slices=explain.figure_slices, synthetic=synthetic)
    return summary, figure


def evaluate_model(index: pd.DataFrame, preprocessed: Path | str, model_dir: Path | str, params: EvaluateParams,
                   out_dir: Path | str, calibrator_path: Path | str, *, synthetic: bool,
                   sets: tuple[str, ...] = ("test", "external"), run_id: str | None = None,
                   headline_path: Path | str | None = None, explain=None, lesions_dir: Path | None = None,
                   findings_csv: Path | None = None, links: dict[str, str] | None = None
                   ) -> dict[str, dict[str, Any]]:
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
            serving; with ``run_id`` it is also logged into the training run's ``covidnet/``
            artifact folder (the model folder), so the registered version has it.
        synthetic: whether the cohort is synthetic.
        sets: the splits to evaluate (test sets keep each patient's first scan).
        run_id: the MLflow run that trained the model (its figures are logged there), or None
            (an untracked model: nothing is logged).
        headline_path: a folder for the headline figures, ``<set>.json`` each (``{auc, auc_lo,
            sens, spec, n}``: what ``dvc metrics show`` prints, a row per set);
            ``out_dir/metrics.json`` has every figure.
        explain: :class:`covidnet.model.explain.ExplainParams`: a saliency map of every scan of
            each set (``<set>/saliency.npz``), checked against ``lesions_dir``'s planted lesions
            (:mod:`covidnet.evaluate.saliency`); None: no maps.
        lesions_dir: the synthetic cohort's ground truth in the tensor grid, or None.
        findings_csv: its planted patterns per scan (the phantom's own AUC on each set,
            :mod:`covidnet.evaluate.ceiling`), or None.
        links: ``{text: URL relative to out_dir}`` each set's report links to.

    Returns:
        ``{set: metrics}`` for each set that has patients.
    """
    import torch

    from covidnet.data.cohort import LABEL_TO_INT
    from covidnet.model.card import MODEL_ARTIFACT, ModelCard
    from covidnet.model.inference import score, sigmoid
    from covidnet.tracking import git_commit

    model, card = ModelCard.load(model_dir)
    provenance = {"model": f"{Path(model_dir)} ({card.version(model_dir)})", "training run": run_id or "untracked",
                  "tensors": card.provenance.get("tensors_version", ""), "profile": card.provenance.get("profile", ""),
                  "commit": git_commit()}
    preprocessed = Path(preprocessed)
    batch = int(card.config["train"].get("micro_batch_size") or card.config["train"]["batch_size"])

    def rows_path(split: str) -> dict[str, str]:
        rows = index[index["split"] == split]
        return dict(zip(rows["scan_id"], rows["path"]))

    def scored(split: str) -> tuple[pd.DataFrame, np.ndarray]:
        rows = index[index["split"] == split].reset_index(drop=True)
        tensors = (torch.from_numpy(np.stack([np.load(preprocessed / p).astype(np.float32)
                                              for p in rows["path"][s : s + batch]]))
                   for s in range(0, len(rows), batch))
        logits, feats = score(model, tensors, with_features=True) if len(rows) else (np.zeros(0), np.zeros((0, 1)))
        preds = pd.DataFrame({"patient_id": rows["patient_id"], "label": rows["label"].map(LABEL_TO_INT),
                              "score": sigmoid(logits), "hospital": rows["hospital"], "scan_id": rows["scan_id"],
                              "series_uid": rows["series_uid"]})
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
        set_links = {text: os.path.relpath(out_dir / href, folder) for text, href in (links or {}).items()}
        with tempfile.TemporaryDirectory(prefix="covidnet-saliency-") as tmp:
            summary, figure_path = None, None
            if explain is not None:
                window = (float(card.config["preprocess"]["hu_min"]), float(card.config["preprocess"]["hu_max"]))
                summary, figure_path = _explain_set(model, preds, rows_path(name), preprocessed, lesions_dir, explain,
                                                    window, params, folder, Path(tmp), synthetic)
            ceiling = phantom_ceiling(preds, findings_csv, reps=params.bootstrap, seed=params.seed, level=params.ci)
            results[name] = evaluate_predictions(preds.drop(columns=["scan_id", "series_uid"]), params, folder,
                                                 synthetic=synthetic, title=name, features=feats,
                                                 calibrator=calibrator, provenance=provenance, saliency=summary,
                                                 saliency_figure=figure_path, links=set_links, ceiling=ceiling)
        atomic.write_csv(folder / "predictions.csv", preds)
    atomic.write_json(out_dir / "metrics.json", {name: flat_metrics(m) for name, m in results.items()})
    if headline_path is not None:
        with atomic.atomic_path(headline_path, directory=True) as tmp:
            for name, m in results.items():
                atomic.write_json(tmp / f"{name}.json", headline(m))
    run_id = run_id or card.mlflow_run_id
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


def run_evaluate(params: dict[str, Any], paths, predictions: Path | None = None, out: Path | None = None,
                 run_id: str | None = None) -> EvaluateResult:
    """The ``evaluate`` stage: the trained model on the test sets, or (``predictions``) any predictions CSV.

    Args:
        params: merged params (``evaluate``, ``mlflow``, ``data``).
        paths: a :class:`covidnet.paths.Paths`; the model's figures go to ``out`` or
            ``paths.evaluation``, the calibrator to ``paths.calibrator``.
        predictions: a predictions CSV to evaluate instead of the model (written to ``out``,
            default ``paths.evaluation/predictions``).
        run_id: the MLflow run that trained the model; by default the run that
            ``paths.train_report``'s run record names for this very model (none when it names
            another one).
    """
    from covidnet.params import is_synthetic, section

    eparams = section(params, "evaluate", EvaluateParams)
    synthetic = is_synthetic(params)
    if predictions is not None:
        out = out or paths.evaluation / "predictions"
        return EvaluateResult({"predictions": evaluate_predictions(read_predictions(predictions), eparams, out,
                                                                   synthetic=synthetic, title="predictions")})
    from covidnet.data.cohort import FINDINGS_FILE, LESIONS_DIR
    from covidnet.model.card import ModelCard
    from covidnet.model.explain import ExplainParams
    from covidnet.tracking import configure, mlflow_params, run_of

    index = pd.read_csv(paths.preprocessed / "index.csv", dtype=str, keep_default_na=False)
    out = out or paths.evaluation
    lesions, findings = paths.manifest / LESIONS_DIR, paths.manifest / FINDINGS_FILE
    flow = paths.flow / "flow.md"
    if run_id is None and ModelCard.is_folder(paths.model):
        run_id = run_of(paths.train_report, ModelCard.digest(paths.model))
    if run_id:  # the figures go into the run that trained the model; an untracked model touches no store
        configure(mlflow_params(params))
    return EvaluateResult(evaluate_model(index, paths.preprocessed, paths.model, eparams, out, paths.calibrator,
                                         synthetic=synthetic, run_id=run_id, headline_path=paths.headline,
                                         explain=section(params, "explain", ExplainParams),
                                         lesions_dir=lesions if lesions.is_dir() else None,
                                         findings_csv=findings if findings.is_file() else None,
                                         links={"The cohort's flow diagram (the paper's Fig. 1)":
                                                os.path.relpath(flow, out)} if flow.is_file() else None))
