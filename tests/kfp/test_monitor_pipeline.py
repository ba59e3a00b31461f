"""The monitoring component and pipeline (components/monitor.py, pipelines/monitor_pipeline.py).

The component runs for real: through ``.python_func`` with real KFP artifacts, and as a
``kfp.local`` pipeline run in a subprocess, over a real SQLite prediction log. The Kubernetes
secrets the compiled pipeline mounts cannot be exercised here (no cluster): the test checks
the compiled YAML names them.
"""

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from kfp.dsl import HTML, Dataset, Metrics

from covidnet.kfp.components.monitor import monitor_drift  # noqa: E402
from covidnet.kfp.params import pipeline_params
from covidnet.kfp.pipelines import monitor as monitor_pipeline  # noqa: E402
from covidnet.model.card import ModelCard
from covidnet.monitor.predlog import PredictionLog
from covidnet.params import load_params
from support import REPO
from support.monitor import KEY, model_folder, rows

COMMITTED = REPO / "pipelines" / "monitor_pipeline.yaml"
T0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)


def _compile(out: Path) -> Path:
    from kfp import compiler

    settings = pipeline_params(load_params(REPO / "params.yaml"))
    compiler.Compiler().compile(pipeline_func=monitor_pipeline.covidnet_monitor(settings), package_path=str(out))
    return out


def test_committed_yaml_is_what_compile_writes(tmp_path):
    fresh = _compile(tmp_path / "monitor_pipeline.yaml")
    assert list(yaml.safe_load_all(fresh.read_text())) == list(yaml.safe_load_all(COMMITTED.read_text())), (
        f"{COMMITTED} is stale: recompile it from pipelines/monitor_pipeline.py")


def test_pipeline_secrets_resources_and_no_cache():
    spec, platform = yaml.safe_load_all(COMMITTED.read_text())  # the pipeline, then its Kubernetes platform spec
    params = load_params(REPO / "params.yaml")
    # the secret sets the variable the core reads the log's URL from
    assert list(params["pipeline"]["secrets"]["predlog"]["env"].values()) == [params["monitor"]["log"]["url_env"]]
    task = spec["root"]["dag"]["tasks"]["monitor-drift"]
    assert task["cachingOptions"].get("enableCache", False) is False
    assert task["retryPolicy"]["maxRetryCount"] == params["pipeline"]["retry"]["count"]
    container = spec["deploymentSpec"]["executors"]["exec-monitor-drift"]["container"]
    assert container["image"] == "covidnet:0.1.0"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-monitor-drift"]["secretAsEnv"]
    envs = {e["envVar"] for s in k8s for e in s["keyToEnv"]}
    assert {"COVIDNET_PREDLOG_URL", "MLFLOW_TRACKING_URI"} <= envs
    assert spec["root"]["inputDefinitions"]["parameters"]["fail_on_alarm"]["defaultValue"] is True


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """params text pointing at a real SQLite log with one calm and one noisy day, and the model folder."""
    model = model_folder(tmp_path / "model")
    db = tmp_path / "predictions.db"
    plog = PredictionLog(f"sqlite:///{db}", KEY, 30.0)
    version = ModelCard.folder_version(model)
    plog.append(rows(version, 60, T0, seed=1))
    plog.append(rows(version, 60, T0 + dt.timedelta(days=1), seed=2, noise=35.0))
    plog.close()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["paths"].update({"predlog": str(db), "model": str(model), "monitor": str(tmp_path / "unused")})
    monkeypatch.delenv(params["monitor"]["log"]["url_env"], raising=False)
    return {"params_yaml": yaml.safe_dump(params), "tmp": tmp_path}


def _artifacts(tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return {"report": HTML(name="report", uri=str(tmp / "report.html")),
            "drift_json": Dataset(name="drift_json", uri=str(tmp / "drift.json")),
            "drift": Metrics(name="drift", uri=str(tmp / "metrics.json"))}


def test_component_reports_and_fails_on_alarm(project):
    calm = _artifacts(project["tmp"] / "calm")
    status = monitor_drift.python_func(params_yaml=project["params_yaml"], profile="default", window_hours=24.0,
                                       until="2024-05-02T00:00:00Z", **calm)
    assert status == "ok" and json.loads(Path(calm["drift_json"].path).read_text())["n"] == 60
    assert calm["drift"].metadata["alarm"] == 0.0 and "Status: OK" in Path(calm["report"].path).read_text()

    noisy = _artifacts(project["tmp"] / "noisy")
    with pytest.raises(RuntimeError, match=r"DRIFT ALARM .*noise_hu"):
        monitor_drift.python_func(params_yaml=project["params_yaml"], profile="default", window_hours=24.0,
                                  until="2024-05-03T00:00:00Z", **noisy)
    assert json.loads(Path(noisy["drift_json"].path).read_text())["status"] == "alarm"  # the report is kept
    quiet = _artifacts(project["tmp"] / "quiet")
    assert monitor_drift.python_func(params_yaml=project["params_yaml"], profile="default", window_hours=24.0,
                                     until="2024-05-03T00:00:00Z", fail_on_alarm=False, **quiet) == "alarm"
    assert any(k.endswith(".noise_hu.psi") and v > 0.25 for k, v in quiet["drift"].metadata.items())


@pytest.mark.slow
def test_pipeline_runs_in_kfp_local(project):
    """The compiled one-task pipeline, run by kfp.local in a subprocess (secrets are cluster-only)."""
    import kfp.local

    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(project["tmp"] / "root"),
                   raise_on_error=True)
    pipeline = monitor_pipeline.covidnet_monitor(pipeline_params(load_params(REPO / "params.yaml")))
    run = pipeline(params_yaml=project["params_yaml"], window_hours=24.0, until="2024-05-02T00:00:00Z")
    report = json.loads(Path(run.outputs["drift_json"].path).read_text())
    assert report["status"] == "ok" and report["models"][0]["n_reference_scans"] == 300


@pytest.mark.slow
def test_cli_runs_the_registered_monitor_pipeline_locally(project, capsys):
    """`covidnet pipeline run --local --pipeline covidnet-monitor`: the registered pipeline runs and the CLI
    reports it finished (it has no promotion decision to report; the last 24 h of this log are empty)."""
    from covidnet.cli import main as cli
    params = project["tmp"] / "params.yaml"
    params.write_text(project["params_yaml"])
    code = cli.main(["pipeline", "run", "--local", "--pipeline", "covidnet-monitor", "--params", str(params),
                     "--pipeline-root", str(project["tmp"] / "root")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "local run of covidnet-monitor (profile default) finished; artifacts under" in out
    report = json.loads(next((project["tmp"] / "root").rglob("drift_json")).read_text())
    assert report["status"] == "no_data" and report["n"] == 0
