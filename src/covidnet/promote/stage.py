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
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet import atomic
from covidnet.params import ParamsError
from covidnet.errors import CovidnetError
from covidnet.model.card import ModelCard, ModelFolderError

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous_champion"
CHALLENGER = "challenger"
ROLLED_BACK = "rolled_back"
PREDICTIONS_TAG = "covidnet.predictions"
DECISION_TAG = "covidnet.decision"
THRESHOLD_TAG = "covidnet.threshold"  # the operating point of the test figures; serving decides there
# figures of metrics.json copied to version tags as <set>.<name> and <set>.<name>.ci
TAGGED_FIGURES = ("accuracy", "auc", "covid.sensitivity", "covid.specificity", "covid.ppv", "covid.npv",
                  "covid.f1")


class PromoteError(CovidnetError, ValueError):
    """Promotion cannot proceed: a missing input, a model card without a run, an empty rollback."""


@dataclass(frozen=True)
class PromoteParams:
    """The ``promote`` section of params.yaml (every value comes from there)."""

    test_set: str                 # the evaluate set the gate reads (reports/evaluate/<set>/)
    min_auc_lower: float          # lower CI bound of the test AUC must reach this
    min_sensitivity_lower: float  # lower CI bound of COVID-19 sensitivity must reach this
    compare_with_champion: bool   # paired bootstrap of AUC(new) - AUC(champion)
    max_auc_drop: float           # fail when that difference's lower CI bound < -max_auc_drop
    bootstrap: int                # replications of the paired bootstrap
    seed: int
    ci: float                     # level of the paired-difference interval

    def __post_init__(self) -> None:
        for name in ("min_auc_lower", "min_sensitivity_lower", "max_auc_drop"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParamsError(f"promote.{name}: {value!r} is not in [0, 1]")
        if not 0.0 < self.ci < 1.0:
            raise ParamsError(f"promote.ci: {self.ci!r} is not in (0, 1), e.g. 0.95")
        if self.bootstrap < 1:
            raise ParamsError(f"promote.bootstrap: {self.bootstrap!r} must be >= 1 (the paired bootstrap needs "
                              "replications)")
        if not self.test_set.strip():
            raise ParamsError("promote.test_set: must name an evaluated set, e.g. 'test'")


@dataclass(frozen=True)
class Rule:
    """One gate rule: ``passed`` when ``value`` reaches ``threshold``; ``detail`` says it in words."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    """What :func:`promote` decided for one registered version."""

    registered_model: str
    version: str
    run_id: str
    source: str
    test_set: str
    promoted: bool
    rules: list[Rule]
    previous_champion: str | None        # the champion before this decision, if any
    aliases: dict[str, str]              # the registered model's aliases after it
    provenance: dict[str, str] = field(default_factory=dict)
    time: str = ""

    @property
    def failed(self) -> list[Rule]:
        return [r for r in self.rules if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed_rules"] = [r.name for r in self.failed]
        return out

    def summary(self) -> str:
        if self.promoted:
            previous = f" (previous champion: version {self.previous_champion})" if self.previous_champion else ""
            return f"{self.registered_model} version {self.version} is the champion{previous}"
        failed = "; ".join(f"{x.name}: {x.detail}" for x in self.failed)
        return (f"{self.registered_model} version {self.version} NOT promoted (alias challenger; champion "
                f"unchanged): {failed}")


@dataclass(frozen=True)
class Rollback:
    """What :func:`rollback` did: ``champion`` restored, ``demoted`` no longer champion."""

    registered_model: str
    champion: str
    demoted: str
    aliases: dict[str, str]
    time: str

    def summary(self) -> str:
        return (f"rolled back {self.registered_model}: champion is version {self.champion} again (version "
                f"{self.demoted} is now `rolled_back`)")


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

def _read_predictions(path: Path, source: str) -> pd.DataFrame:
    from covidnet.evaluate.predictions import validate_predictions

    if not path.is_file():
        raise PromoteError(f"{source}: predictions file not found (run `covidnet evaluate` first)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    keep = [c for c in ("patient_id", "label", "score", "hospital") if c in raw.columns]
    return validate_predictions(raw[keep], source)


def _read_inputs(model_dir: Path, evaluation_dir: Path, test_set: str) -> tuple[str, dict, Path]:
    card_path = model_dir / ModelCard.FILE
    try:
        run_id = ModelCard.read(model_dir, weights=False).mlflow_run_id
    except ModelFolderError as exc:
        raise PromoteError(f"{exc} (run `covidnet train` first)") from None
    if not run_id:
        raise PromoteError(f"{card_path}: no mlflow_run_id; promote registers the model logged by the training "
                           "run, so train with tracking (not --no-track)")
    folder = evaluation_dir / test_set
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise PromoteError(f"{metrics_path}: metrics not found; promote.test_set {test_set!r} must be a set that "
                           "`covidnet evaluate` wrote")
    return run_id, json.loads(metrics_path.read_text()), folder / "predictions.csv"


def _figure(metrics: dict[str, Any], dotted: str) -> dict[str, Any]:
    node: Any = metrics
    for part in dotted.split("."):
        node = node[part]
    return node


def figure_tags(metrics: dict[str, Any], test_set: str) -> dict[str, str]:
    """``{"test.auc": "0.91", "test.auc.ci": "[0.85, 0.97]", ...}`` for :data:`TAGGED_FIGURES`."""
    tags = {f"{test_set}.n": str(metrics["n"]), f"{test_set}.n_positive": str(metrics["n_positive"]),
            f"{test_set}.threshold": str(metrics["threshold"])}
    for name in TAGGED_FIGURES:
        fig = _figure(metrics, name)
        tags[f"{test_set}.{name}"] = "null" if fig["value"] is None else f"{fig['value']:.6g}"
        tags[f"{test_set}.{name}.ci"] = json.dumps(None if fig.get("ci") is None
                                                   else [round(x, 6) for x in fig["ci"]])
    return tags


# --- the gate ---------------------------------------------------------------------------------

def _lower_bound_rule(name: str, fig: dict[str, Any], threshold: float, what: str, key: str) -> Rule:
    ci = fig.get("ci")
    if fig.get("value") is None or not ci:
        why = fig.get("reason") or fig.get("reason_ci") or "no confidence interval"
        return Rule(name, None, threshold, False, f"{what} has no lower CI bound ({why}); promote.{key} is "
                                                  f"{threshold:g}")
    lo = float(ci[0])
    ok = lo >= threshold
    return Rule(name, lo, threshold, ok,
                f"lower CI bound of {what} {lo:.4f} (value {fig['value']:.4f}, CI {ci[0]:.4f}-{ci[1]:.4f}) "
                f"{'>=' if ok else '<'} promote.{key} {threshold:g}")


def paired_auc_difference(new: pd.DataFrame, old: pd.DataFrame, *, reps: int, seed: int,
                          level: float) -> dict[str, Any]:
    """AUC(new) - AUC(old) with a paired percentile-bootstrap CI over the same patients.

    Args:
        new, old: validated predictions (``patient_id, label, score``) of the same patients.

    Returns:
        :func:`covidnet.evaluate.metrics.figure` of the difference plus ``n``, ``auc_new``, ``auc_old``.

    Raises:
        PromoteError: the two tables hold different patients or different labels.
    """
    from covidnet.evaluate.metrics import bootstrap, figure, score_stat

    a = new.set_index("patient_id")
    b = old.set_index("patient_id")
    only_new, only_old = sorted(set(a.index) - set(b.index)), sorted(set(b.index) - set(a.index))
    if only_new or only_old:
        raise PromoteError(f"the test sets differ: {len(only_new)} patient(s) only in the new predictions "
                           f"(e.g. {only_new[:3]}), {len(only_old)} only in the champion's (e.g. {only_old[:3]})")
    b = b.loc[a.index]
    differ = a.index[a["label"].to_numpy() != b["label"].to_numpy()]
    if len(differ):
        raise PromoteError(f"labels differ for {len(differ)} patient(s) (e.g. {list(differ[:3])})")
    y = a["label"].to_numpy(np.int64)
    # score_stat also counts calls at a threshold; only its AUC is used here, so any threshold does.
    stat_new = score_stat(y, a["score"].to_numpy(np.float64), 0.5)
    stat_old = score_stat(y, b["score"].to_numpy(np.float64), 0.5)

    def stat(idx: np.ndarray) -> dict[str, np.ndarray]:
        an, ao = stat_new(idx)["auc"], stat_old(idx)["auc"]
        return {"diff": an - ao, "new": an, "old": ao}

    point, samples = bootstrap(len(y), stat, reps=reps, seed=seed)
    out = figure(point["diff"], samples["diff"], level, "AUC needs both classes; only one is present")
    out.update(n=int(len(y)), auc_new=point["new"], auc_old=point["old"])
    return out


def _champion_rule(client, name: str, champion, new_preds: pd.DataFrame, params: PromoteParams) -> Rule:
    import mlflow

    threshold = -params.max_auc_drop
    rule = "champion_auc_difference"
    uri = champion.tags.get(PREDICTIONS_TAG)
    if not uri:
        return Rule(rule, None, threshold, False, f"champion version {champion.version} has no {PREDICTIONS_TAG} "
                                                  "tag: its test predictions are unknown, so no paired comparison")
    with tempfile.TemporaryDirectory(prefix="covidnet-promote-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        old = _read_predictions(local, f"champion version {champion.version} predictions ({uri})")
    try:
        diff = paired_auc_difference(new_preds, old, reps=params.bootstrap, seed=params.seed, level=params.ci)
    except PromoteError as exc:
        return Rule(rule, None, threshold, False, f"not comparable with champion version {champion.version} on "
                                                  f"the same test set: {exc}")
    if diff["value"] is None or not diff.get("ci"):
        why = diff.get("reason") or diff.get("reason_ci")
        return Rule(rule, None, threshold, False, f"AUC difference with champion version {champion.version} is "
                                                  f"undefined ({why})")
    lo, hi = diff["ci"]
    ok = lo >= threshold
    pct = round(100 * params.ci)
    return Rule(rule, float(lo), threshold, ok,
                f"AUC(new) - AUC(champion v{champion.version}) = {diff['value']:+.4f} ({diff['auc_new']:.4f} vs "
                f"{diff['auc_old']:.4f}, {diff['n']} paired patients), paired-bootstrap {pct}% CI "
                f"{lo:+.4f} to {hi:+.4f}; lower bound {'>=' if ok else '<'} -promote.max_auc_drop {threshold:g}")


# --- registry -----------------------------------------------------------------------------------

def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    if alias not in client.get_registered_model(name).aliases:
        return None
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _logged_model_id(client, run, model_dir: Path, artifact_name: str = "model") -> str:
    """The id of the model the training run logged as ``artifact_name`` (the last one if several)."""
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    for output in sorted(outputs, key=lambda o: o.step, reverse=True):
        if client.get_logged_model(output.model_id).name == artifact_name:
            return output.model_id
    raise PromoteError(f"{model_dir / ModelCard.FILE}: MLflow run {run.info.run_id} logged no model named "
                       f"{artifact_name!r} (did the training run finish?); nothing to register")


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="COVIDNet: chest CT -> P(COVID-19 vs other pneumonia) "
                                                          "(Liu et al., Sci. Rep. 2021)")


def promote(model_dir: Path | str, evaluation_dir: Path | str, params: PromoteParams, mlflow_params, *,
            provenance: dict[str, str], decision_path: Path | str | None = None) -> Decision:
    """Register the evaluated model as a new version, apply the gate and move the aliases.

    Args:
        model_dir: the train stage's model folder (its card names the MLflow run).
        evaluation_dir: the evaluate stage's folder (``<test_set>/metrics.json`` and
            ``<test_set>/predictions.csv``).
        params: the ``promote`` section.
        mlflow_params: :class:`covidnet.tracking.MlflowParams` (tracking store and
            ``registered_model``).
        provenance: tags for the version (``git_commit``, ``data_version``, ``params_hash``,
            ``synthetic``, ...), written as ``covidnet.<key>``.
        decision_path: where to write the decision record (JSON, atomically).

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
    run_id, metrics, preds_path = _read_inputs(model_dir, evaluation_dir, params.test_set)
    preds = _read_predictions(preds_path, str(preds_path))
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
    _ensure_registered_model(client, name)
    champion = _alias_version(client, name, CHAMPION)
    model_id = _logged_model_id(client, run, model_dir)
    tags["covidnet.logged_model_id"] = model_id
    version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id)

    rules = [
        _lower_bound_rule("auc_lower", metrics["auc"], params.min_auc_lower, f"{params.test_set} AUC",
                          "min_auc_lower"),
        _lower_bound_rule("sensitivity_lower", metrics["covid"]["sensitivity"], params.min_sensitivity_lower,
                          f"{params.test_set} COVID-19 sensitivity at threshold {metrics['threshold']:g}",
                          "min_sensitivity_lower"),
    ]
    if params.compare_with_champion:
        if champion is None:
            rules.append(Rule("champion_auc_difference", None, -params.max_auc_drop, True,
                              f"no {CHAMPION} yet for {name!r}: nothing to compare with"))
        else:
            rules.append(_champion_rule(client, name, champion, preds, params))
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


def rollback(mlflow_params) -> Rollback:
    """Move ``champion`` back to the version aliased ``previous_champion``.

    The demoted version gets the alias ``rolled_back``; ``previous_champion`` is removed (a
    second rollback needs another promotion first). Both versions get a ``covidnet.rollback``
    tag recording the move, and the registered model a ``covidnet.last_rollback`` tag. No
    version is deleted.

    Raises:
        PromoteError: the registered model does not exist or has no ``previous_champion``.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from covidnet.tracking import configure

    configure(mlflow_params)
    client = MlflowClient()
    name = mlflow_params.registered_model
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        raise PromoteError(f"registered model {name!r} not found: nothing to roll back") from None
    if PREVIOUS not in aliases:
        raise PromoteError(f"registered model {name!r} has no {PREVIOUS!r} alias (aliases: {dict(aliases)}): "
                           "nothing to roll back to")
    previous, current = str(aliases[PREVIOUS]), aliases.get(CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = json.dumps({"time": now, "champion": previous, "demoted": current})
    if current is not None and str(current) != previous:
        client.set_registered_model_alias(name, ROLLED_BACK, str(current))
        client.set_model_version_tag(name, str(current), "covidnet.rollback", record)
    client.set_model_version_tag(name, previous, "covidnet.rollback", record)
    client.set_registered_model_tag(name, "covidnet.last_rollback", record)
    log.info("promote: rolled %s champion back from version %s to %s", name, current, previous)
    return Rollback(registered_model=name, champion=previous, demoted=str(current),
                    aliases={k: str(v) for k, v in client.get_registered_model(name).aliases.items()}, time=now)


def run_promote(params: dict[str, Any], paths) -> Decision:
    """The ``promote`` stage: register the evaluated model of ``paths.model`` and apply the gate to the
    figures of ``paths.evaluation``; the decision record goes to ``paths.decision``."""
    from covidnet.params import is_synthetic, profile_name, section
    from covidnet.tracking import git_commit, mlflow_params

    provenance = {"git_commit": git_commit(), "data_version": cohort_version(paths.cohort),
                  "params_hash": params_hash(params), "synthetic": str(is_synthetic(params)).lower(),
                  "profile": profile_name(params)}
    return promote(paths.model, paths.evaluation, section(params, "promote", PromoteParams), mlflow_params(params),
                   provenance=provenance, decision_path=paths.decision)


def run_rollback(params: dict[str, Any]) -> Rollback:
    """``covidnet promote --rollback``: move ``champion`` back to the version aliased ``previous_champion``."""
    from covidnet.tracking import mlflow_params

    return rollback(mlflow_params(params))
