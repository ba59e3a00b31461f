"""Each stage on paths: read its inputs, call the stage's one core function, write outputs.

The ``covidnet`` CLI (and so ``dvc.yaml``) and the Kubeflow components call these; nothing
here decides anything a stage module does not. Every output is written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from covidnet import atomic
from covidnet.params import is_synthetic, section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    """The ``paths`` section of params.yaml: where each stage reads and writes."""

    dicom: Path
    manifest: Path
    index: Path
    validation: Path
    cohort: Path
    flow: Path
    split: Path
    preprocessed: Path
    metrics: Path
    model: Path
    checkpoints: Path
    train_report: Path
    calibrator: Path
    evaluation: Path
    decision: Path
    predlog: Path
    monitor: Path

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Path | str | None) -> "Paths":
        """Paths from params, with any non-None keyword overriding its field."""
        base = section(params, "paths", cls)
        return dataclasses.replace(base, **{k: Path(v) for k, v in overrides.items() if v is not None})


def run_synth(params: dict[str, Any], paths: Paths):
    """Write the synthetic cohort (DICOM tree + manifest)."""
    from covidnet.synthetic.synth import SynthParams, synthesize

    return synthesize(section(params, "synth", SynthParams), paths.dicom, paths.manifest)


def load_index(index_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The header table and the files table written by :func:`run_validate`."""
    series = pd.read_csv(index_dir / "series.csv", dtype={"patient_id": str, "study_uid": str, "series_uid": str,
                                                          "study_date": str, "reason": str, "selection": str},
                         keep_default_na=False, na_values={"pixel_spacing_mm": [""], "slice_thickness_mm": [""],
                                                          "slice_spacing_mm": [""]})
    for col in ("eligible", "selected", "contrast"):
        series[col] = series[col].astype(str).str.lower().eq("true")
    files = pd.read_csv(index_dir / "files.csv", dtype={"series_uid": str, "path": str})
    return series, files


def run_validate(params: dict[str, Any], paths: Paths, progress: bool = True):
    """Index the DICOM tree (series table, files table, skipped files) and validate.

    Returns:
        ``(index, report)``: the :class:`covidnet.data.dicom.DicomIndex` and the
        :class:`covidnet.validate.suites.ValidationReport`. The index is written even when
        validation fails, so its tables can be inspected.
    """
    from covidnet.data.cohort import read_manifest
    from covidnet.data.dicom import SeriesParams, index_tree
    from covidnet.validate.suites import ValidateParams, validate_cohort

    manifest = read_manifest(paths.manifest)
    index = index_tree(paths.dicom, section(params, "series", SeriesParams), progress=progress)
    with atomic.atomic_path(paths.index, directory=True) as tmp:
        index.series.to_csv(tmp / "series.csv", index=False)
        index.files.to_csv(tmp / "files.csv", index=False)
        index.skipped.to_csv(tmp / "skipped.csv", index=False)
    known = None
    vparams = section(params, "validate", ValidateParams)
    if is_synthetic(params) and vparams.hospitals_known:
        known = [h["name"] for h in params["synth"]["hospitals"]]
    report = validate_cohort(manifest, index.series, vparams, paths.validation, known_hospitals=known)
    return index, report


def run_exclude(params: dict[str, Any], paths: Paths):
    """Apply the exclusion criteria; writes ``cohort.csv``, ``exclusions.csv``, ``flow.json``."""
    from covidnet.data.cohort import read_manifest
    from covidnet.data.exclude import ExcludeParams, apply_exclusions

    series, _files = load_index(paths.index)
    result = apply_exclusions(read_manifest(paths.manifest), series, section(params, "exclude", ExcludeParams))
    with atomic.atomic_path(paths.cohort, directory=True) as tmp:
        result.cohort.to_csv(tmp / "cohort.csv", index=False)
        result.exclusions.to_csv(tmp / "exclusions.csv", index=False)
        atomic.write_json(tmp / "flow.json", result.flow)
    return result


def run_split(params: dict[str, Any], paths: Paths):
    """Split the cohort by patient; writes the split table, the flow report and the metrics.

    Returns:
        ``(split, flow)``: the split table and the full flow counts.
    """
    import json

    from covidnet.data.flow import flow_metrics, render_flow
    from covidnet.data.split import SplitParams, split_cohort, split_counts

    cohort = pd.read_csv(paths.cohort / "cohort.csv", dtype=str, keep_default_na=False)
    cohort["scan_order"] = cohort["scan_order"].astype(int)
    split = split_cohort(cohort, section(params, "split", SplitParams))
    flow = json.loads((paths.cohort / "flow.json").read_text())
    flow["split"] = split_counts(split)
    flow["synthetic"] = is_synthetic(params)
    atomic.write_csv(paths.split, split)
    with atomic.atomic_path(paths.flow, directory=True) as tmp:
        atomic.write_json(tmp / "flow.json", flow)
        (tmp / "flow.md").write_text(render_flow(flow, synthetic=flow["synthetic"]))
    atomic.write_json(paths.metrics, flow_metrics(flow))
    return split, flow


def run_preprocess(params: dict[str, Any], paths: Paths, progress: bool = True):
    """Preprocess every scan of the split into ``paths.preprocessed``."""
    from covidnet.preprocess.stage import PreprocessParams, preprocess_cohort

    split = pd.read_csv(paths.split, dtype=str, keep_default_na=False)
    series, files = load_index(paths.index)
    return preprocess_cohort(split, series, files, paths.dicom, paths.preprocessed,
                             section(params, "preprocess", PreprocessParams), progress=progress)


def run_train(params: dict[str, Any], paths: Paths, resume: str = "auto", track: bool = True,
              progress: bool = True):
    """Train on the preprocessed tensors; track the run in MLflow."""
    from covidnet.model.network import ModelParams
    from covidnet.preprocess.stage import PreprocessParams, params_dict
    from covidnet.tracking import data_version, git_commit, mlflow_params
    from covidnet.train.loop import TrainParams, TrainPaths, train_model

    index = pd.read_csv(paths.preprocessed / "index.csv", dtype=str, keep_default_na=False)
    provenance = {"git_commit": git_commit(), "data_version": data_version(paths.preprocessed),
                  "synthetic": str(is_synthetic(params)).lower(), "profile": params["profile"]}
    return train_model(
        index,
        TrainPaths(preprocessed=paths.preprocessed, model=paths.model, checkpoints=paths.checkpoints,
                   report=paths.train_report),
        section(params, "model", ModelParams),
        section(params, "train", TrainParams),
        params_dict(section(params, "preprocess", PreprocessParams)),
        resume=resume,
        mlflow_params=mlflow_params(params) if track else None,
        provenance=provenance,
        progress=progress,
    )


def run_evaluate(params: dict[str, Any], paths: Paths, predictions: Path | None = None, out: Path | None = None):
    """Evaluate the trained model on the test sets, or (``predictions``) any predictions CSV.

    Returns:
        ``{set: metrics}``.
    """
    from covidnet.evaluate.stage import EvaluateParams, evaluate_model, evaluate_predictions, read_predictions

    eparams = section(params, "evaluate", EvaluateParams)
    synthetic = is_synthetic(params)
    if predictions is not None:
        out = out or paths.evaluation / "predictions"
        return {"predictions": evaluate_predictions(read_predictions(predictions), eparams, out,
                                                    synthetic=synthetic, title="predictions")}
    from covidnet.tracking import configure, mlflow_params

    configure(mlflow_params(params))
    index = pd.read_csv(paths.preprocessed / "index.csv", dtype=str, keep_default_na=False)
    return evaluate_model(index, paths.preprocessed, paths.model, eparams, out or paths.evaluation, paths.calibrator,
                          synthetic=synthetic)


def run_promote(params: dict[str, Any], paths: Paths, rollback: bool = False):
    """Register the evaluated model and apply the gate (writes ``paths.decision``), or roll back.

    Returns:
        The :class:`covidnet.promote.stage.Decision`, or with ``rollback`` the
        :class:`covidnet.promote.stage.Rollback`.
    """
    from covidnet.promote import stage as promote_
    from covidnet.tracking import git_commit, mlflow_params

    tracking = mlflow_params(params)
    if rollback:
        return promote_.rollback(tracking)
    promote_params = section(params, "promote", promote_.PromoteParams)
    provenance = {"git_commit": git_commit(), "data_version": promote_.cohort_version(paths.cohort),
                  "params_hash": promote_.params_hash(params), "synthetic": str(is_synthetic(params)).lower(),
                  "profile": params["profile"]}
    return promote_.promote(paths.model, paths.evaluation, promote_params, tracking,
                            provenance=provenance, decision_path=paths.decision)
