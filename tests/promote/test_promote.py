"""The promote gate on a real SQLite MLflow store with real runs and logged (tiny) models.

Each test registers under its own model name in one store; the runs are made once.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from covidnet.cli import main as cli
from covidnet.evaluate.figures import compute_metrics
from covidnet.evaluate.params import EvaluateParams
from covidnet.params import ParamsError, load_params, section
from covidnet.promote.gate import PromoteParams, paired_auc_difference
from covidnet.promote.registry import CHALLENGER, CHAMPION, PREVIOUS, ROLLED_BACK, PromoteError, rollback
from covidnet.promote.stage import params_hash, promote
from covidnet.tracking import MlflowParams
from support import REPO

GATE = PromoteParams(min_auc_lower=0.6, min_sensitivity_lower=0.3, min_specificity_lower=0.0,
                     compare_with_champion=True, max_auc_drop=0.05, bootstrap=2000, seed=0, test_set="test", ci=0.95)
PROVENANCE = {"git_commit": "abc123", "cohort_version": "dvc:0123", "params_hash": "sha256:feed", "synthetic": "true"}
N = 160


def _scores(separation: float, seed: int, n: int = N) -> pd.DataFrame:
    """``n`` patients, half COVID-19; larger ``separation`` = higher AUC."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    s = np.clip(rng.normal(0.5 + separation * (y - 0.5), 0.15), 0, 1).round(4)
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "label": y, "score": s,
                         "hospital": "hospital_a", "scan_id": [f"S{i}" for i in range(n)]})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store holding two training runs, each with a tiny COVIDNet logged as ``model``."""
    import mlflow

    from covidnet.model.builders import covidnet_cpu
    from covidnet.tracking import configure

    root = tmp_path_factory.mktemp("mlflow")
    mp = MlflowParams(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="promote-tests",
                      artifact_root=str(root / "mlruns"), registered_model="unused")
    experiment = configure(mp)
    runs = []
    for seed in (0, 1):
        model = covidnet_cpu(block_config=(1, 1), growth_rate=4, init_features=8, input_shape=(1, 8, 24, 24))
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
        runs.append(run.info.run_id)
    return root, mp, runs


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _candidate(tmp: Path, tag: str, preds: pd.DataFrame, run_id: str | None) -> tuple[Path, Path]:
    """A model folder naming ``run_id`` and an evaluate folder with these test predictions."""
    model_dir, eval_dir = tmp / tag / "model", tmp / tag / "evaluate"
    model_dir.mkdir(parents=True)
    (eval_dir / "test").mkdir(parents=True)
    (model_dir / "model.json").write_text(json.dumps({"mlflow_run_id": run_id, "config": {}}))
    metrics = {"title": "test", "synthetic": True, **compute_metrics(preds.drop(columns=["scan_id"]),
                                                                      EvaluateParams(bootstrap=500))}
    (eval_dir / "test" / "metrics.json").write_text(json.dumps(metrics))
    preds.to_csv(eval_dir / "test" / "predictions.csv", index=False)
    return model_dir, eval_dir


def _mp(store, name: str) -> MlflowParams:
    return dataclasses.replace(store[1], registered_model=name)


def test_gate_promotes_better_refuses_worse_and_rollback_restores(store, tmp_path):
    from mlflow import MlflowClient

    _, base, (run_a, run_b) = store
    mp = _mp(store, "gate")
    decision_path = tmp_path / "decision.json"

    def step(tag, separation, seed, run_id):
        model_dir, eval_dir = _candidate(tmp_path, tag, _scores(separation, seed), run_id)
        return promote(model_dir, eval_dir, GATE, mp, provenance=PROVENANCE, decision_path=decision_path)

    # 1. the first model passes the thresholds: champion, nothing to compare with
    d1 = step("good", 0.3, 1, run_a)
    assert d1.promoted and d1.version == "1" and d1.previous_champion is None
    assert d1.aliases == {CHAMPION: "1"}
    assert [r.name for r in d1.rules] == ["auc_lower", "sensitivity_lower", "specificity_lower",
                                          "champion_auc_difference"]
    assert "no champion yet" in d1.rules[3].detail

    client = MlflowClient()
    v1 = client.get_model_version("gate", "1")
    assert v1.run_id == run_a and v1.source == f"models:/{v1.tags['covidnet.logged_model_id']}"
    assert d1.source == f"runs:/{run_a}/model"
    for key in ("covidnet.git_commit", "covidnet.cohort_version", "covidnet.params_hash", "covidnet.synthetic",
                "test.auc", "test.auc.ci", "test.covid.sensitivity.ci", "covidnet.predictions", "covidnet.decision"):
        assert key in v1.tags, key
    assert v1.tags["covidnet.git_commit"] == "abc123" and v1.tags["covidnet.synthetic"] == "true"
    lo, hi = json.loads(v1.tags["test.auc.ci"])
    assert lo <= float(v1.tags["test.auc"]) <= hi
    assert json.loads(v1.tags["covidnet.decision"])["promoted"] is True

    # 2. a clearly better model: promoted; the old champion stays reachable as previous_champion
    d2 = step("better", 0.6, 2, run_b)
    assert d2.promoted and d2.version == "2" and d2.previous_champion == "1"
    assert d2.aliases == {CHAMPION: "2", PREVIOUS: "1"}
    diff = d2.rules[3]
    assert diff.passed and diff.value > 0 and "champion v1" in diff.detail

    # 3. a worse model (thresholds met, but far below the champion): challenger, and the record says why
    d3 = step("worse", 0.22, 3, run_a)  # the same run again: its version keeps its own predictions
    assert not d3.promoted and d3.version == "3"
    assert d3.aliases == {CHAMPION: "2", PREVIOUS: "1", CHALLENGER: "3"}
    record = json.loads(decision_path.read_text())
    assert record["version"] == "3" and record["promoted"] is False
    assert record["failed_rules"] == ["champion_auc_difference"]
    rule = next(r for r in record["rules"] if r["name"] == "champion_auc_difference")
    assert rule["passed"] is False and rule["threshold"] == -0.05 and rule["value"] < -0.05
    assert "champion v2" in rule["detail"] and f"{N} paired patients" in rule["detail"]
    assert json.loads(client.get_model_version("gate", "3").tags["covidnet.decision"]) == record
    # version 1's predictions were not overwritten by version 3's (same run)
    assert client.get_model_version("gate", "1").tags["covidnet.predictions"] != \
        client.get_model_version("gate", "3").tags["covidnet.predictions"]

    # 4. a poor model fails the absolute threshold, with the numbers
    d4 = step("poor", 0.05, 4, run_b)
    assert not d4.promoted and d4.aliases[CHALLENGER] == "4" and d4.aliases[CHAMPION] == "2"
    auc_rule = next(r for r in d4.failed if r.name == "auc_lower")
    assert auc_rule.value < 0.6 and auc_rule.threshold == 0.6 and "promote.min_auc_lower 0.6" in auc_rule.detail

    # 5. rollback: champion back to version 1; version 2 kept as rolled_back; a second rollback has nothing
    rb = rollback(mp)
    assert (rb.champion, rb.demoted) == ("1", "2")
    assert str(client.get_model_version_by_alias("gate", CHAMPION).version) == "1"
    assert rb.aliases == {CHAMPION: "1", ROLLED_BACK: "2", CHALLENGER: "4"}
    assert "covidnet.last_rollback" in client.get_registered_model("gate").tags
    with pytest.raises(PromoteError, match="previous_champion"):
        rollback(mp)

    # no version was ever deleted
    versions = client.search_model_versions("name='gate'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]


def test_champion_on_other_patients_is_not_comparable(store, tmp_path):
    _, _, (run_a, run_b) = store
    mp = _mp(store, "other-patients")
    first = _candidate(tmp_path, "a", _scores(0.5, 1), run_a)
    assert promote(*first, GATE, mp, provenance=PROVENANCE).promoted
    other = _scores(0.6, 2)
    other["patient_id"] = [f"Q{i:03d}" for i in range(N)]  # a new test cohort
    d = promote(*_candidate(tmp_path, "b", other, run_b), GATE, mp, provenance=PROVENANCE)
    assert not d.promoted and [r.name for r in d.failed] == ["champion_auc_difference"]
    assert "test sets differ" in d.failed[0].detail and d.aliases[CHAMPION] == "1"
    # the documented way out: no champion comparison for the first model on a new cohort
    d = promote(*_candidate(tmp_path, "c", other, run_b), dataclasses.replace(GATE, compare_with_champion=False),
                mp, provenance=PROVENANCE)
    assert d.promoted and d.aliases == {CHAMPION: "3", PREVIOUS: "1", CHALLENGER: "2"}


def test_a_model_that_calls_nearly_everyone_covid_fails_on_specificity(store, tmp_path):
    """Seen on a model trained on another CPU: AUC 0.95 and sensitivity 1.0, but specificity 0.21."""
    _, _, (run_a, _) = store
    preds = _scores(0.3, 7)
    preds["score"] = (0.45 + 0.5 * preds["score"]).round(4)  # same order (AUC), nearly all above 0.5
    gate = dataclasses.replace(GATE, min_specificity_lower=0.6)
    d = promote(*_candidate(tmp_path, "all-covid", preds, run_a), gate, _mp(store, "all-covid"),
                provenance=PROVENANCE)
    assert not d.promoted and [r.name for r in d.failed] == ["specificity_lower"]
    assert "specificity" in d.failed[0].detail and "promote.min_specificity_lower 0.6" in d.failed[0].detail
    assert d.aliases == {CHALLENGER: d.version}


def test_model_card_without_run_id_or_logged_model(store, tmp_path):
    model_dir, eval_dir = _candidate(tmp_path, "x", _scores(0.5, 1), None)
    with pytest.raises(PromoteError, match="no MLflow run recorded for this model"):
        promote(model_dir, eval_dir, GATE, _mp(store, "no-run"), provenance=PROVENANCE)
    import mlflow

    from covidnet.tracking import configure

    with mlflow.start_run(experiment_id=configure(store[1])) as empty:
        mlflow.log_param("epochs", 0)  # a run that never logged its model
    model_dir, eval_dir = _candidate(tmp_path, "z", _scores(0.5, 1), empty.info.run_id)
    with pytest.raises(PromoteError, match="logged no model named 'model'"):
        promote(model_dir, eval_dir, GATE, _mp(store, "no-run"), provenance=PROVENANCE)
    model_dir, eval_dir = _candidate(tmp_path, "y", _scores(0.5, 1), store[2][0])
    with pytest.raises(PromoteError, match="metrics not found"):
        promote(model_dir, eval_dir, dataclasses.replace(GATE, test_set="external"), _mp(store, "no-run"),
                provenance=PROVENANCE)


def test_rollback_without_previous_champion(store):
    with pytest.raises(PromoteError, match="not found"):
        rollback(_mp(store, "never-registered"))


def test_paired_difference_of_a_model_with_itself_is_zero():
    p = _scores(0.4, 5).drop(columns=["scan_id", "hospital"])
    d = paired_auc_difference(p, p.sample(frac=1, random_state=0), reps=300, seed=1, level=0.95)
    assert d["value"] == 0 and d["ci"] == [0.0, 0.0] and d["n"] == N


@pytest.mark.parametrize("key", ["min_auc_lower", "min_sensitivity_lower", "min_specificity_lower", "max_auc_drop"])
@pytest.mark.parametrize("value", [1.5, -0.1])
def test_threshold_out_of_range_names_the_key(tmp_path, key, value):
    params = load_params(REPO / "params.yaml")
    params["promote"][key] = value
    with pytest.raises(ParamsError, match=rf"promote\.{key}: {value} is not in \[0, 1\]"):
        section(params, "promote", PromoteParams)


def test_cli_bad_threshold_exits_2_naming_the_key(tmp_path, capsys):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["promote"]["min_auc_lower"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["promote", "--params", str(tmp_path / "params.yaml"), "-q"]) == 2
    assert "promote.min_auc_lower: 1.5 is not in [0, 1]" in capsys.readouterr().err


def test_params_section_and_hash():
    params = load_params(REPO / "params.yaml")
    p = section(params, "promote", PromoteParams)
    assert 0 <= p.min_auc_lower <= 1 and p.test_set == "test"
    assert params_hash(params) == params_hash({**params, "_source": "elsewhere/params.yaml"})
    assert params_hash(params) != params_hash({**params, "promote": {**params["promote"], "seed": 1}})
