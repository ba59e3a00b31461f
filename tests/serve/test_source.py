"""Serving by MLflow URI: a real SQLite store, a tiny model trained, evaluated and promoted as the
pipeline does it, and ``covidnet serve`` (no model flags) answering over real HTTP on loopback.

The store is built once per module: ``train_model`` logs the model folder under the run's
``covidnet/`` artifact folder, ``evaluate_model`` fits a temperature calibrator on the
validation split and logs it there too, ``promote`` registers version 1, sets ``champion`` and
records the operating threshold (``covidnet.threshold``, here evaluate's 0.4).
"""

import dataclasses
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from covidnet.evaluate.params import EvaluateParams
from covidnet.evaluate.stage import evaluate_model
from covidnet.model.card import ModelCard
from covidnet.params import ParamsError, load_params, section
from covidnet.promote.gate import PromoteParams
from covidnet.promote.registry import CHAMPION
from covidnet.promote.stage import promote
from covidnet.serve.bundle import load_bundle
from covidnet.serve.client import send_study
from covidnet.serve.params import ServeParams
from covidnet.serve.source import ModelSourceError, fetch_model, parse_model_uri
from covidnet.tracking import MlflowParams
from support import REPO
from support.server import assert_alive, free_port, running_server, write_study
from support.train import PRE, TINY, tiny_cohort, train_params, train_paths

NAME = "covidnet-test"
THRESHOLD = 0.4
PROVENANCE = {"git_commit": "abc123", "cohort_version": "dvc:0123", "params_hash": "sha256:feed", "synthetic": "true"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite store whose registered model ``covidnet-test`` has version 1 as ``champion``."""
    from covidnet.train.loop import train_model

    tmp = tmp_path_factory.mktemp("registry")
    mp = MlflowParams(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="serve-tests",
                      artifact_root=str(tmp / "mlruns"), registered_model=NAME)
    index = tiny_cohort(tmp / "pre", n_train=4, n_val=4)
    test = index[index["split"] == "val"].assign(split="test", scan_id=lambda t: "t" + t["scan_id"],
                                                 patient_id=lambda t: "t" + t["patient_id"])
    index = pd.concat([index, test], ignore_index=True)
    paths = train_paths(tmp)
    with pytest.MonkeyPatch.context() as mpatch:  # mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI
        mpatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        run = train_model(index, paths, TINY, train_params(epochs=1, batch_size=2),
                          {**PRE, "dtype": "float16", "body_hu": -500.0, "lung_hu": [-950.0, -400.0], "workers": 1},
                          mlflow_params=mp, provenance=PROVENANCE, progress=False)
        evaluate_model(index, tmp / "pre", paths.model,
                       EvaluateParams(threshold=THRESHOLD, bootstrap=20, seed=0, ci=0.95, calibration_bins=5,
                                      calibrator="temperature", reader_groups={}, tsne_perplexity=2.0),
                       tmp / "evaluate", tmp / "local-calibrator.json", synthetic=True, sets=("test",),
                       run_id=run.run_id)
        decision = promote(paths.model, tmp / "evaluate",
                           PromoteParams(test_set="test", min_auc_lower=0.0, min_sensitivity_lower=0.0,
                                         min_specificity_lower=0.0, compare_with_champion=False, max_auc_drop=0.05, bootstrap=20, seed=0,
                                         ci=0.95), mp, provenance=PROVENANCE, run_id=run.run_id)
    assert decision.promoted and decision.aliases == {CHAMPION: "1"}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["mlflow"].update(tracking_uri=mp.tracking_uri, experiment=mp.experiment, artifact_root=mp.artifact_root,
                            registered_model=NAME)
    params["serve"]["model_uri"] = f"models:/{NAME}@champion"
    params["paths"].update(calibrator=str(tmp / "nowhere.json"), preprocessed=str(tmp / "nowhere"))
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return {"tmp": tmp, "tracking_uri": mp.tracking_uri, "run_id": run.run_id, "params": tmp / "params.yaml"}


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def server(registry):
    """`covidnet serve` with no model flag: it serves serve.model_uri, the champion."""
    tmp = registry["tmp"]
    with running_server(["--params", str(registry["params"])], tmp, _env(), tmp / "server.log") as base:
        yield {"base": base}


def test_parse_model_uri():
    assert parse_model_uri("models:/covidnet@champion") == ("covidnet", "champion", None)
    assert parse_model_uri("models:/covidnet/3") == ("covidnet", None, "3")
    assert parse_model_uri("/mnt/models") is None and parse_model_uri("models/covidnet") is None
    for bad in ("models:/covidnet", "models:/a/b/c", "runs:/abc/covidnet", "s3://bucket/model"):
        with pytest.raises(ModelSourceError, match="model URI"):
            parse_model_uri(bad)
    base = section(load_params(REPO / "params.yaml"), "serve", ServeParams)
    assert base.model_uri == "models:/covidnet@champion"
    with pytest.raises(ParamsError, match=r"serve.model_uri: .*'runs:/x/covidnet'"):
        dataclasses.replace(base, model_uri="runs:/x/covidnet")


def test_missing_sqlite_store_is_named_and_not_created(tmp_path):
    store = tmp_path / "mlflow.db"
    with pytest.raises(ModelSourceError, match=r"no MLflow store at sqlite:///.*mlflow.db"):
        fetch_model("models:/covidnet@champion", f"sqlite:///{store}")
    assert not store.exists()
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        fetch_model(str(tmp_path / "nowhere"), f"sqlite:///{store}")


@pytest.mark.slow
def test_champion_by_alias_has_the_registry_version_calibrator_and_threshold(registry):
    """The whole covidnet/ folder is downloaded (a file train did not write is there too), the
    calibrator is the one evaluate logged with the run, the threshold the promoted one."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry["tracking_uri"])
    client.log_text(registry["run_id"], "later addition", "covidnet/reference/extra.txt")
    assert client.get_model_version(NAME, "1").tags["covidnet.threshold"] == str(THRESHOLD)
    source = fetch_model(f"models:/{NAME}@champion", registry["tracking_uri"])
    assert (source.name, source.version, source.alias, source.run_id) == (NAME, "1", "champion", registry["run_id"])
    assert source.threshold == THRESHOLD
    assert (source.model_dir / "reference" / "extra.txt").read_text() == "later addition"
    assert json.loads((source.model_dir / "calibrator.json").read_text())["kind"] == "temperature"
    bundle = load_bundle(source, load_params(registry["params"]))
    assert bundle.calibrator.kind == "temperature" and bundle.threshold == THRESHOLD
    assert bundle.model["version"] == "1" and bundle.model["name"] == NAME
    # the weights' digest ties the registry version to the folder train wrote (what a plain folder reports)
    assert bundle.model["weights"] == ModelCard.digest(registry["tmp"] / "model")
    assert fetch_model(f"models:/{NAME}/1", registry["tracking_uri"]).run_id == registry["run_id"]


@pytest.mark.slow
def test_unknown_alias_version_or_model_is_named(registry):
    uri = registry["tracking_uri"]
    with pytest.raises(ModelSourceError, match=r"no alias 'nosuch' \(its aliases: champion -> version 1\)"):
        fetch_model(f"models:/{NAME}@nosuch", uri)
    with pytest.raises(ModelSourceError, match="has no version 7"):
        fetch_model(f"models:/{NAME}/7", uri)
    with pytest.raises(ModelSourceError, match=rf"no registered model 'other' .*registered: {NAME}"):
        fetch_model("models:/other@champion", uri)
    r = subprocess.run([sys.executable, "-m", "covidnet.cli.main", "serve", "--params", str(registry["params"]),
                        "--model-uri", f"models:/{NAME}@challenger", "--port", str(free_port())],
                       cwd=registry["tmp"], capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no alias 'challenger'" in r.stderr and "champion -> version 1" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_serve_with_no_flags_answers_with_the_champion(server, registry, tmp_path):
    folder = write_study(tmp_path / "dicom", uid="reg")
    (answer,) = send_study(folder, server["base"], "covidnet")
    model = answer["model"]
    assert (model["name"], model["version"], model["alias"]) == (NAME, "1", "champion")
    assert model["uri"] == f"models:/{NAME}@champion" and model["mlflow_run_id"] == registry["run_id"]
    assert model["calibrator"] == "temperature" and "covidnet.threshold" in model["threshold_from"]
    assert answer["threshold"] == THRESHOLD
    assert answer["decision"] == ("covid19" if answer["score"] >= THRESHOLD else "other_pneumonia")
    assert answer["covid19_probability"] != answer["score"]  # the calibrator was applied
    assert_alive(server)
