"""The ``promote`` stage: register the evaluated model in the MLflow registry and gate it.

Every run of :func:`promote` registers a new version of ``mlflow.registered_model`` from the
training run's logged model (``runs:/<run_id>/model``, the run named in the model card) and
tags it with its provenance (git commit, DVC hash of the cohort, hash of the merged params,
synthetic or not) and the test set's figures with their CIs (``test.auc``,
``test.auc.ci`` ...). Then the gate decides, from the ``promote`` section of params.yaml:

``auc_lower``
    the lower CI bound of the test AUC (from ``metrics.json``) >= ``min_auc_lower``;
``sensitivity_lower``
    the lower CI bound of the COVID-19 sensitivity at ``evaluate.threshold`` >=
    ``min_sensitivity_lower``;
``champion_auc_difference`` (when ``compare_with_champion``)
    a paired percentile bootstrap over patients of AUC(new) - AUC(champion) on the same test
    set (the same resampled patients score both models, matched by ``patient_id``): the
    rule passes unless the lower bound of its ``ci`` interval is below ``-max_auc_drop``,
    i.e. a new model is promoted unless it is demonstrably worse than the champion by more
    than ``max_auc_drop``. With no champion yet the rule passes (nothing to compare with).
    It *fails* when the champion's test predictions cannot be paired with the new ones
    (different patients or labels, or no predictions recorded with the champion): the
    test set changed, so "not worse" cannot be shown. Set ``compare_with_champion: false``
    for the first promotion on a new cohort.

Passing moves the alias ``champion`` to the new version and the alias
``previous_champion`` to the version that held it, so :func:`rollback` can restore it;
failing sets ``challenger`` on the new version. Aliases, not the deprecated stages; no
version is ever deleted. The decision record (JSON, with each rule's value, threshold and
verdict) goes to ``paths.decision`` and to the version's ``covidnet.decision`` tag; the threshold
the test figures were computed at goes to its ``covidnet.threshold`` tag, where serving reads the
operating point (:mod:`covidnet.serve.source`).

A failing gate is a decision, not an error: the stage writes it and exits 0. Each version
keeps its own test predictions as an artifact of its training run
(``promote/<sha256>/<set>/predictions.csv``, content-addressed so a run promoted twice never
overwrites an earlier version's file) named in its ``covidnet.predictions`` tag: that is
what a later challenger is paired with.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from covidnet import atomic
from covidnet.model.card import ModelCard, ModelFolderError
from covidnet.promote.gate import (
    Decision,
    PromoteParams,
    Rule,
    champion_rule,
    figure_tags,
    lower_bound_rule,
    read_test_predictions,
)
from covidnet.promote.registry import (
    CHALLENGER,
    CHAMPION,
    DECISION_TAG,
    PREDICTIONS_TAG,
    PREVIOUS,
    THRESHOLD_TAG,
    PromoteError,
    Rollback,
    alias_version,
    ensure_registered_model,
    logged_model_id,
    rollback,
)

log = logging.getLogger(__name__)


# --- provenance -------------------------------------------------------------------------------

def params_hash(params: dict[str, Any]) -> str:
    """sha256 of the merged params as canonical JSON (the file path ``_source`` left out)."""
    clean = {k: v for k, v in params.items() if k != "_source"}
    return "sha256:" + hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def cohort_version(cohort_dir: Path | str, lock: Path | str = "dvc.lock") -> str:
    """The DVC hash of the cohort folder from ``dvc.lock``, else a sha256 of its ``cohort.csv``."""
    from covidnet.tracking import data_version

    version = data_version(cohort_dir, lock)
    table = Path(cohort_dir) / "cohort.csv"
    if version == "unknown" and table.is_file():
        return "sha256:" + hashlib.sha256(table.read_bytes()).hexdigest()[:16]
    return version


# --- inputs -----------------------------------------------------------------------------------


def _read_inputs(model_dir: Path, evaluation_dir: Path, test_set: str, run_id: str | None
                 ) -> tuple[str, dict, Path]:
    try:
        run_id = run_id or ModelCard.read(model_dir, weights=False).mlflow_run_id
    except ModelFolderError as exc:
        raise PromoteError(f"{exc} (run `covidnet train` first)") from None
    if not run_id:
        raise PromoteError(f"{model_dir}: no MLflow run recorded for this model (the train stage's run.json names "
                           "the run of the model it wrote); promote registers the model logged by the training run, "
                           "so train with tracking (not --no-track)")
    folder = evaluation_dir / test_set
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise PromoteError(f"{metrics_path}: metrics not found; promote.test_set {test_set!r} must be a set that "
                           "`covidnet evaluate` wrote")
    return run_id, json.loads(metrics_path.read_text()), folder / "predictions.csv"


# --- the gate ---------------------------------------------------------------------------------


# --- registry -----------------------------------------------------------------------------------


def promote(model_dir: Path | str, evaluation_dir: Path | str, params: PromoteParams, mlflow_params, *,
            provenance: dict[str, str], decision_path: Path | str | None = None, run_id: str | None = None
            ) -> Decision:
    """Register the evaluated model as a new version, apply the gate and move the aliases.

    Args:
        model_dir: the train stage's model folder.
        evaluation_dir: the evaluate stage's folder (``<test_set>/metrics.json`` and
            ``<test_set>/predictions.csv``).
        params: the ``promote`` section.
        mlflow_params: :class:`covidnet.tracking.MlflowParams` (tracking store and
            ``registered_model``).
        provenance: tags for the version (``git_commit``, ``cohort_version``, ``params_hash``,
            ``synthetic``, ...), written as ``covidnet.<key>``.
        decision_path: where to write the decision record (JSON, atomically).
        run_id: the MLflow run that trained and logged the model (default: the one a registry
            or an older card wrote into the card).

    Returns:
        The :class:`Decision`. A failing gate is returned, not raised.

    Raises:
        PromoteError: no model card, no run id, no metrics or predictions for the test set,
            or a run without a logged model.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from covidnet.tracking import configure

    model_dir, evaluation_dir = Path(model_dir), Path(evaluation_dir)
    run_id, metrics, preds_path = _read_inputs(model_dir, evaluation_dir, params.test_set, run_id)
    preds = read_test_predictions(preds_path, str(preds_path))
    if len(preds) != metrics["n"]:
        raise PromoteError(f"{preds_path}: {len(preds)} patients but {evaluation_dir / params.test_set}/metrics.json "
                           f"counts {metrics['n']}; re-run `covidnet evaluate`")
    configure(mlflow_params)
    client = MlflowClient()
    name = mlflow_params.registered_model
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise PromoteError(f"{model_dir / ModelCard.FILE}: MLflow run {run_id} not found in "
                           f"{mlflow.get_tracking_uri()}: {exc.message}") from None

    # The predictions this version is judged on, kept with its run for later pairings.
    digest = hashlib.sha256(preds_path.read_bytes()).hexdigest()[:16]
    artifact_dir = f"promote/{digest}/{params.test_set}"
    client.log_artifact(run_id, str(preds_path), artifact_path=artifact_dir)
    tags = {f"covidnet.{k}": str(v) for k, v in provenance.items()}
    tags.update(figure_tags(metrics, params.test_set))
    tags.update({PREDICTIONS_TAG: f"runs:/{run_id}/{artifact_dir}/predictions.csv",
                 THRESHOLD_TAG: str(metrics["threshold"]), "covidnet.test_set": params.test_set,
                 "covidnet.synthetic": str(metrics.get("synthetic", provenance.get("synthetic", "unknown"))).lower()})
    source = f"runs:/{run_id}/model"
    ensure_registered_model(client, name)
    champion = alias_version(client, name, CHAMPION)
    model_id = logged_model_id(client, run, model_dir)
    tags["covidnet.logged_model_id"] = model_id
    version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id)

    rules = [
        lower_bound_rule("auc_lower", metrics["auc"], params.min_auc_lower, f"{params.test_set} AUC",
                          "min_auc_lower"),
        lower_bound_rule("sensitivity_lower", metrics["covid"]["sensitivity"], params.min_sensitivity_lower,
                          f"{params.test_set} COVID-19 sensitivity at threshold {metrics['threshold']:g}",
                          "min_sensitivity_lower"),
        lower_bound_rule("specificity_lower", metrics["covid"]["specificity"], params.min_specificity_lower,
                          f"{params.test_set} COVID-19 specificity at threshold {metrics['threshold']:g}",
                          "min_specificity_lower"),
    ]
    if params.compare_with_champion:
        if champion is None:
            rules.append(Rule("champion_auc_difference", None, -params.max_auc_drop, True,
                              f"no {CHAMPION} yet for {name!r}: nothing to compare with"))
        else:
            rules.append(champion_rule(client, name, champion, preds, params))
    promoted = all(r.passed for r in rules)

    if promoted:
        if champion is not None:
            client.set_registered_model_alias(name, PREVIOUS, champion.version)
        client.set_registered_model_alias(name, CHAMPION, version.version)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    decision = Decision(
        registered_model=name, version=str(version.version), run_id=run_id, source=source,
        test_set=params.test_set, promoted=promoted, rules=rules,
        previous_champion=None if champion is None else str(champion.version),
        aliases={k: str(v) for k, v in client.get_registered_model(name).aliases.items()},
        provenance={k: str(v) for k, v in provenance.items()},
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    record = decision.to_dict()
    client.set_model_version_tag(name, version.version, DECISION_TAG, json.dumps(record, separators=(",", ":")))
    client.set_model_version_tag(name, version.version, "covidnet.promoted", str(promoted).lower())
    client.set_model_version_tag(name, version.version, "covidnet.failed_rules",
                                 ",".join(r.name for r in decision.failed) or "none")
    if decision_path is not None:
        atomic.write_json(decision_path, record)
    log.info("promote: %s version %s %s", name, version.version,
             "promoted to champion" if promoted else f"is {CHALLENGER}: " + "; ".join(r.detail for r in decision.failed))
    return decision


def run_promote(params: dict[str, Any], paths, run_id: str | None = None) -> Decision:
    """The ``promote`` stage: register the evaluated model of ``paths.model`` and apply the gate to the
    figures of ``paths.evaluation``; the decision record goes to ``paths.decision``.

    ``run_id`` (the MLflow run that trained the model) defaults to the run that
    ``paths.train_report``'s run record names for this very model."""
    from covidnet.params import is_synthetic, profile_name, section
    from covidnet.tracking import git_commit, mlflow_params, run_of

    if run_id is None and ModelCard.is_folder(paths.model):
        run_id = run_of(paths.train_report, ModelCard.digest(paths.model))
    provenance = {"git_commit": git_commit(), "cohort_version": cohort_version(paths.cohort),
                  "params_hash": params_hash(params), "synthetic": str(is_synthetic(params)).lower(),
                  "profile": profile_name(params)}
    return promote(paths.model, paths.evaluation, section(params, "promote", PromoteParams), mlflow_params(params),
                   provenance=provenance, decision_path=paths.decision, run_id=run_id)


def run_rollback(params: dict[str, Any]) -> Rollback:
    """``covidnet promote --rollback``: move ``champion`` back to the version aliased ``previous_champion``."""
    from covidnet.tracking import mlflow_params

    return rollback(mlflow_params(params))
