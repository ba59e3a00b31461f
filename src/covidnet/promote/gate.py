"""The promotion gate: rules over the test figures and a paired comparison with the champion.

Each rule is a :class:`Rule` (value, threshold, verdict, a sentence with the numbers); the
:class:`Decision` of one registered version holds them all. Every threshold comes from the
``promote`` section of params.yaml (:class:`PromoteParams`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.params import ParamsError
from covidnet.promote.registry import PREDICTIONS_TAG, PromoteError

# figures of metrics.json copied to version tags as <set>.<name> and <set>.<name>.ci
TAGGED_FIGURES = ("accuracy", "auc", "covid.sensitivity", "covid.specificity", "covid.ppv", "covid.npv",
                  "covid.f1")


@dataclass(frozen=True)
class PromoteParams:
    """The ``promote`` section of params.yaml (every value comes from there)."""

    test_set: str                 # the evaluate set the gate reads (reports/evaluate/<set>/)
    min_auc_lower: float          # lower CI bound of the test AUC must reach this
    min_sensitivity_lower: float  # lower CI bound of COVID-19 sensitivity must reach this
    min_specificity_lower: float  # lower CI bound of COVID-19 specificity must reach this
    compare_with_champion: bool   # paired bootstrap of AUC(new) - AUC(champion)
    max_auc_drop: float           # fail when that difference's lower CI bound < -max_auc_drop
    bootstrap: int                # replications of the paired bootstrap
    seed: int
    ci: float                     # level of the paired-difference interval

    def __post_init__(self) -> None:
        for name in ("min_auc_lower", "min_sensitivity_lower", "min_specificity_lower", "max_auc_drop"):
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


def read_test_predictions(path: Path, source: str) -> pd.DataFrame:
    from covidnet.evaluate.predictions import validate_predictions

    if not path.is_file():
        raise PromoteError(f"{source}: predictions file not found (run `covidnet evaluate` first)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    keep = [c for c in ("patient_id", "label", "score", "hospital") if c in raw.columns]
    return validate_predictions(raw[keep], source)


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


def lower_bound_rule(name: str, fig: dict[str, Any], threshold: float, what: str, key: str) -> Rule:
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


def champion_rule(client, name: str, champion, new_preds: pd.DataFrame, params: PromoteParams) -> Rule:
    import mlflow

    threshold = -params.max_auc_drop
    rule = "champion_auc_difference"
    uri = champion.tags.get(PREDICTIONS_TAG)
    if not uri:
        return Rule(rule, None, threshold, False, f"champion version {champion.version} has no {PREDICTIONS_TAG} "
                                                  "tag: its test predictions are unknown, so no paired comparison")
    with tempfile.TemporaryDirectory(prefix="covidnet-promote-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        old = read_test_predictions(local, f"champion version {champion.version} predictions ({uri})")
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
