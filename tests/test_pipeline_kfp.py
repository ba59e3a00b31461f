"""The Kubeflow adapter: components, the compiled pipeline, `covidnet pipeline compile|run --local|submit`."""

import json
from pathlib import Path

import pytest
import yaml

from covidnet import cli
from covidnet import pipeline as kp
from covidnet.params import ParamsError

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


@pytest.mark.parametrize("synthetic", [False, True])
def test_committed_yaml_is_what_compile_writes(tmp_path, synthetic):
    committed = kp.SYNTHETIC_PIPELINE_YAML if synthetic else kp.PIPELINE_YAML
    fresh = kp.compile_pipeline(tmp_path / committed.name, synthetic=synthetic)
    assert yaml.safe_load(fresh.read_text()) == yaml.safe_load(committed.read_text()), (
        f"{committed} is stale: run `covidnet pipeline compile` and commit it")


def test_pipeline_resources_retries_and_image():
    spec = yaml.safe_load(kp.PIPELINE_YAML.read_text())
    assert spec["pipelineInfo"]["name"] == "covidnet"
    execs = _executors(spec)
    names = {k.removeprefix("exec-") for k in execs}
    assert names == {"fetch-cohort", "validate", "exclude", "split", "preprocess", "train", "evaluate", "promote"}
    for name, ex in execs.items():
        container = ex["container"]
        assert container["image"] == "covidnet:0.1.0", name
        assert container["resources"]["cpuLimit"] > 0 and container["resources"]["memoryLimit"] > 0, name
        assert "pip install" not in json.dumps(container["command"]), name  # the image holds everything
    accel = execs["exec-train"]["container"]["resources"]["accelerator"]
    assert accel["resourceType"] == "nvidia.com/gpu" and int(accel["resourceCount"]) == 1
    assert all("accelerator" not in ex["container"]["resources"] for k, ex in execs.items() if k != "exec-train")
    tasks = _tasks(spec)
    for name in ("fetch-cohort", "promote"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3
        assert tasks[name]["retryPolicy"]["backoffFactor"] == 2.0
    assert "retryPolicy" not in tasks["train"]
    assert tasks["train"]["cachingOptions"]["enableCache"] is True
    assert tasks["promote"]["cachingOptions"].get("enableCache", False) is False
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["profile"]["defaultValue"] == "default"
    assert {"params_yaml", "cohort_repo", "cohort_revision", "min_auc_lower", "min_sensitivity_lower"} <= set(inputs)
    # The gate lives in the promote component: no conditions in the DAG.
    assert "triggerPolicy" not in json.dumps(tasks)


def test_bad_profile_and_threshold_fail_before_compiling(tmp_path, capsys):
    for argv, message in ((["--profile", "nope"], "profile 'nope' is not defined"),
                          (["--min-auc-lower", "1.5"], "--min-auc-lower: 1.5 is not in [0, 1]"),
                          (["--min-sensitivity-lower", "-0.1"], "is not in [0, 1]")):
        assert cli.main(["pipeline", "compile", "--params", str(PARAMS), "--out", str(tmp_path), *argv]) != 0
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ParamsError, match="not a cron expression"):
        kp.kfp_cron("every monday")


class FakeClient:
    """Stands in for a Kubeflow Pipelines cluster (none can run here): records what would be sent."""

    calls: list = []

    def __init__(self, host=None, **kwargs):
        FakeClient.calls.append(("init", {"host": host, **kwargs}))

    def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
        FakeClient.calls.append(("run", {"pipeline_file": pipeline_file,
                                         "spec": yaml.safe_load(Path(pipeline_file).read_text()), **kwargs}))
        return type("Run", (), {"run_id": "run-1"})()

    def get_experiment(self, experiment_name=None, **kwargs):
        raise ValueError(f"no experiment {experiment_name}")

    def create_experiment(self, name, **kwargs):
        FakeClient.calls.append(("experiment", {"name": name}))
        return type("Exp", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kwargs):
        kwargs["spec"] = yaml.safe_load(Path(kwargs["pipeline_package_path"]).read_text())
        FakeClient.calls.append(("recurring", kwargs))
        return type("Rec", (), {"recurring_run_id": "rec-1"})()


def test_submit_sends_the_compiled_package_and_arguments(monkeypatch, capsys):
    import kfp

    FakeClient.calls = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    assert cli.main(["pipeline", "submit", "--params", str(PARAMS), "--host", "http://kfp.example:8888",
                     "--profile", "tiny",
                     "--min-auc-lower", "0.7", "--cohort-repo", "https://git.example/cohort.git",
                     "--cohort-revision", "v3", "--experiment", "nightly"]) == 0
    (_, init), (_, run) = FakeClient.calls
    assert init["host"] == "http://kfp.example:8888"
    assert run["pipeline_file"].endswith("covidnet_pipeline.yaml")
    assert run["spec"] == yaml.safe_load(kp.PIPELINE_YAML.read_text())
    args = run["arguments"]
    assert args["profile"] == "tiny" and args["min_auc_lower"] == 0.7 and "min_sensitivity_lower" not in args
    assert args["cohort_repo"] == "https://git.example/cohort.git" and args["cohort_revision"] == "v3"
    assert args["params_yaml"] == PARAMS.read_text()
    assert run["experiment_name"] == "nightly" and run["enable_caching"] is True
    assert "run-1" in capsys.readouterr().out

    FakeClient.calls = []
    assert cli.main(["pipeline", "submit", "--params", str(PARAMS), "--host", "http://kfp.example:8888",
                     "--schedule", "0 3 * * 1"]) == 0
    kinds = [k for k, _ in FakeClient.calls]
    assert kinds == ["init", "experiment", "recurring"]
    rec = FakeClient.calls[-1][1]
    assert rec["cron_expression"] == "0 0 3 * * 1" and rec["experiment_id"] == "exp-1"
    assert rec["spec"]["pipelineInfo"]["name"] == "covidnet-synthetic"  # no cohort repo: the synthetic demo
    assert rec["params"]["profile"] == "default"


def test_submit_refuses_bad_input_before_contacting(monkeypatch, capsys):
    import kfp

    FakeClient.calls = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    for argv in (["--profile", "huge"], ["--min-sensitivity-lower", "2"], ["--schedule", "daily"], []):
        host = [] if argv == [] else ["--host", "http://kfp.example"]
        assert cli.main(["pipeline", "submit", "--params", str(PARAMS), *host, *argv]) != 0
    assert FakeClient.calls == []
    assert "--host URL is required" in capsys.readouterr().err


@pytest.mark.slow
def test_local_run_registers_a_model_and_writes_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = kp.check_arguments(PARAMS, "tiny", mlflow={"tracking_uri": uri, "artifact_root": str(tmp_path / "mlruns")})
    outputs = kp.run_local(args, tmp_path / "root")

    metrics = outputs["metrics"].metadata
    assert "test.test_auc" in metrics and 0.0 <= metrics["test.test_auc"] <= 1.0
    roc = outputs["roc"].metadata
    assert roc["confidenceMetrics"] and roc["confusionMatrix"]["annotationSpecs"][1]["displayName"] == "covid"
    assert outputs["cohort_metrics"].metadata and outputs["train_metrics"].metadata["epochs_run"] == 2
    assert "<html" in Path(outputs["report"].path).read_text().lower()
    assert "SYNTHETIC" in Path(outputs["flow"].path).read_text().upper()
    decision = json.loads(Path(outputs["decision"].path).read_text())

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    alias = "champion" if decision["promoted"] else "challenger"
    version = client.get_model_version_by_alias("covidnet", alias)
    assert str(version.version) == decision["version"] == "1"
    assert outputs["gate"].metadata["promoted"] == float(decision["promoted"])
