"""The Kubeflow adapter: components, the compiled pipelines, `covidnet pipeline compile|run --local|submit`."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from covidnet.cli import main as cli
from covidnet.kfp import runner as kp
from covidnet.kfp.params import pipeline_params
from covidnet.params import ParamsError, load_params
from support import REPO, params_with

PARAMS = REPO / "params.yaml"
SETTINGS = pipeline_params(load_params(PARAMS))


def _load(path: Path) -> dict:
    """A compiled pipeline: the IR document, with the Kubernetes platform document (kfp-kubernetes) under "platforms"."""
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    spec = docs[0]
    for extra in docs[1:]:
        spec = {**spec, **extra}
    return spec


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def _k8s(spec: dict) -> dict:
    return spec.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})


@pytest.mark.parametrize("name", list(kp.PIPELINES))
def test_committed_yaml_is_what_compile_writes(tmp_path, name):
    committed = kp.PIPELINES[name].path
    fresh = kp.compile_pipeline(name, tmp_path / committed.name, PARAMS)
    assert _load(fresh) == _load(committed), (
        f"{committed} is stale: run `covidnet pipeline compile` and commit it")


def test_pipeline_resources_retries_secrets_and_images():
    """Every number in the compiled YAML is the params file's (pipeline section)."""
    r, retry = SETTINGS.resources, SETTINGS.retry
    spec = _load(kp.PIPELINES["covidnet"].path)
    assert spec["pipelineInfo"]["name"] == "covidnet"
    execs = _executors(spec)
    names = {k.removeprefix("exec-") for k in execs}
    assert names == {"resolve-cohort-revision", "fetch-cohort", "validate", "exclude", "split", "preprocess", "train",
                     "evaluate", "promote"}
    for name, ex in execs.items():
        container = ex["container"]
        assert container["image"] == ("covidnet:0.1.0-cuda" if name == "exec-train" else "covidnet:0.1.0"), name
        res = container["resources"]
        if name == "exec-train":
            want = (r.train_cpu_request, r.train_memory_request, r.train_cpu, r.train_memory)
        else:
            want = (r.cpu_request, r.memory_request, r.cpu, r.memory)
        got = (res["resourceCpuRequest"], res["resourceMemoryRequest"], res["resourceCpuLimit"],
               res["resourceMemoryLimit"])
        assert got == want, name
        assert "pip install" not in json.dumps(container["command"]), name  # the image holds everything
    accel = execs["exec-train"]["container"]["resources"]["accelerator"]
    assert accel["resourceType"] == r.accelerator and int(accel["resourceCount"]) == r.gpus
    assert all("accelerator" not in ex["container"]["resources"] for k, ex in execs.items() if k != "exec-train")
    tasks = _tasks(spec)
    for name, count in (("resolve-cohort-revision", retry.count), ("fetch-cohort", retry.count),
                        ("promote", retry.count), ("train", SETTINGS.train.retries)):
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] == count and policy["backoffFactor"] == retry.factor, name
        assert policy["backoffDuration"] == f"{retry.backoff_s}s"
        assert policy["backoffMaxDuration"] == f"{retry.max_backoff_s}s"
    assert SETTINGS.train.retries > 0  # a failed train pod comes back and resumes (tests/train/test_launch.py)
    assert tasks["train"]["cachingOptions"]["enableCache"] is True
    # The moving cohort revision is resolved to a commit by an uncached task; the cached fetch is keyed on it.
    assert tasks["resolve-cohort-revision"]["cachingOptions"].get("enableCache", False) is False
    assert tasks["fetch-cohort"]["cachingOptions"]["enableCache"] is True
    rev = tasks["fetch-cohort"]["inputs"]["parameters"]["revision"]["taskOutputParameter"]
    assert rev == {"outputParameterKey": "Output", "producerTask": "resolve-cohort-revision"}
    assert tasks["resolve-cohort-revision"]["inputs"]["parameters"]["revision"] == {
        "componentInputParameter": "cohort_revision"}
    assert tasks["promote"]["cachingOptions"].get("enableCache", False) is False
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["profile"]["defaultValue"] == "default"
    assert inputs["nproc_per_node"]["defaultValue"] == str(SETTINGS.train.nproc_per_node)
    assert {"params_yaml", "cohort_repo", "cohort_revision", "min_auc_lower", "min_sensitivity_lower",
            "checkpoint_dir"} <= set(inputs)
    # The gate lives in the promote component: no conditions in the DAG.
    assert "triggerPolicy" not in json.dumps(tasks)
    # Credentials from Kubernetes secrets, as params name them; /dev/shm for the train pod.
    k8s = _k8s(spec)
    (dvc,) = k8s["exec-fetch-cohort"]["secretAsEnv"]
    assert dvc["secretName"] == SETTINGS.secrets.dvc_remote.name
    assert {e["secretKey"]: e["envVar"] for e in dvc["keyToEnv"]} == SETTINGS.secrets.dvc_remote.env
    for name in ("exec-train", "exec-evaluate", "exec-promote"):
        (ml,) = k8s[name]["secretAsEnv"]
        assert ml["secretName"] == SETTINGS.secrets.mlflow.name and len(ml["keyToEnv"]) == len(SETTINGS.secrets.mlflow.env)
    (shm,) = k8s["exec-train"]["emptyDirMounts"]
    assert shm["mountPath"] == "/dev/shm" and shm["sizeLimit"] == r.train_shm and shm["medium"] == "Memory"
    assert "pvcMount" not in k8s["exec-train"]  # pipeline.train.checkpoint_pvc is null


def test_pytorchjob_pipeline_mounts_the_workspace():
    spec = _load(kp.PIPELINES["covidnet-pytorchjob"].path)
    execs = _executors(spec)
    assert "exec-train" not in execs and "exec-train-pytorchjob" in execs
    launcher = execs["exec-train-pytorchjob"]["container"]
    assert launcher["image"] == "covidnet:0.1.0" and "accelerator" not in launcher["resources"]
    (mount,) = _k8s(spec)["exec-train-pytorchjob"]["pvcMount"]
    assert mount["mountPath"] == SETTINGS.pytorchjob.mount_path
    assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == SETTINGS.pytorchjob.pvc
    assert _tasks(spec)["train-pytorchjob"]["retryPolicy"]["maxRetryCount"] == SETTINGS.retry.count
    assert "nproc_per_node" not in spec["root"]["inputDefinitions"]["parameters"]  # the job's come from params


def test_compile_follows_the_params(tmp_path):
    """Changing the pipeline section changes the compiled YAML: no number is buried in code."""
    def edit(raw):
        p = raw["pipeline"]
        p["resources"].update(gpus=2, train_cpu="12", memory="4Gi", train_shm=None, cpu_request="500m")
        p["retry"].update(count=5, backoff_s=10)
        p["train"].update(checkpoint_pvc="covidnet-ckpt", checkpoint_dir="/checkpoints", nproc_per_node=2, retries=0)
        p["secrets"]["dvc_remote"]["name"] = "minio-creds"

    out = kp.compile_pipeline("covidnet", tmp_path / "p.yaml", params_with(tmp_path, edit))
    spec = _load(out)
    train = _executors(spec)["exec-train"]["container"]["resources"]
    assert int(train["accelerator"]["resourceCount"]) == 2 and train["resourceCpuLimit"] == "12"
    validate = _executors(spec)["exec-validate"]["container"]["resources"]
    assert validate["resourceMemoryLimit"] == "4Gi" and validate["resourceCpuRequest"] == "500m"
    assert "retryPolicy" not in _tasks(spec)["train"]  # pipeline.train.retries: 0
    policy = _tasks(spec)["fetch-cohort"]["retryPolicy"]
    assert policy["maxRetryCount"] == 5 and policy["backoffDuration"] == "10s"
    k8s = _k8s(spec)
    assert k8s["exec-train"]["pvcMount"][0]["mountPath"] == "/checkpoints"
    assert "emptyDirMounts" not in k8s["exec-train"]
    assert k8s["exec-fetch-cohort"]["secretAsEnv"][0]["secretName"] == "minio-creds"
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["checkpoint_dir"]["defaultValue"] == "/checkpoints" and inputs["nproc_per_node"]["defaultValue"] == "2"


@pytest.mark.parametrize("key, value, message", [
    ("resources.memory", "lots", "pipeline.resources.memory: 'lots' is not a memory quantity"),
    ("resources.cpu", "-1", "pipeline.resources.cpu: '-1' is not a CPU quantity"),
    ("resources.gpus", -1, "pipeline.resources.gpus: must be >= 0, got -1"),
    ("resources.memory_request", "16G", "pipeline.resources.memory_request: '16G' is above the limit "
                                        "pipeline.resources.memory ('8G')"),
    ("resources.train_cpu_request", "9", "pipeline.resources.train_cpu_request: '9' is above the limit"),
    ("train.retries", -1, "pipeline.train.retries: must be >= 0, got -1"),
    ("retry.factor", 0.5, "pipeline.retry.factor: must be >= 1, got 0.5"),
    ("train.nproc_per_node", "many", "pipeline.train.nproc_per_node: 'many' is neither 'auto' nor"),
    ("train.checkpoint_pvc", "My_PVC", "pipeline.train.checkpoint_pvc: 'My_PVC' is not a Kubernetes name"),
    ("pytorchjob.nodes", 0, "pipeline.pytorchjob.nodes: must be >= 1, got 0"),
])
def test_bad_pipeline_params_name_key_and_value(tmp_path, capsys, key, value, message):
    def edit(raw):
        node = raw["pipeline"]
        *parents, leaf = key.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value

    params = params_with(tmp_path, edit)
    assert cli.main(["pipeline", "compile", "--params", str(params), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(params) in err
    assert not (tmp_path / "out").exists()


def test_bad_profile_threshold_and_pipeline_fail_before_compiling(tmp_path, capsys):
    for argv, message in ((["--profile", "nope"], "profile 'nope' is not defined"),
                          (["--min-auc-lower", "1.5"], "--min-auc-lower: 1.5 is not in [0, 1]"),
                          (["--min-sensitivity-lower", "-0.1"], "is not in [0, 1]"),
                          (["--nproc-per-node", "0"], "--nproc-per-node: '0' is neither 'auto' nor"),
                          (["--checkpoint-dir", "ckpt"], "--checkpoint-dir: 'ckpt' is neither an absolute folder"),
                          (["--pipeline", "covidnet-gpu"], "--pipeline: 'covidnet-gpu' is not one of covidnet, ")):
        assert cli.main(["pipeline", "compile", "--params", str(PARAMS), "--out", str(tmp_path), *argv]) != 0
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ParamsError, match="not a cron expression"):
        kp.kfp_cron("every monday")


def test_stage_failure_removes_outputs_and_names_the_stage(tmp_path):
    folder, file = tmp_path / "index", tmp_path / "split.csv"
    with pytest.raises(kp.StageFailed, match=r"^exclude failed: ValueError: no usable series$") as info:
        with kp.stage_failure("exclude", folder, file, tmp_path / "never-written"):
            folder.mkdir()
            (folder / "series.csv").write_text("half")
            file.write_text("a,b\n")
            raise ValueError("no usable series")
    assert isinstance(info.value.__cause__, ValueError)
    assert not folder.exists() and not file.exists()
    with kp.stage_failure("exclude", file):
        file.write_text("kept")
    assert file.read_text() == "kept"


def test_pipeline_arguments_match_each_pipeline():
    args = kp.check_arguments(PARAMS, "tiny", cohort_repo="https://git.example/cohort.git")
    synthetic = kp.build_pipeline("covidnet-synthetic", SETTINGS)
    with pytest.raises(ParamsError, match="pipeline covidnet-synthetic: takes no --cohort-repo"):
        kp.pipeline_arguments(synthetic, args)
    job = kp.build_pipeline("covidnet-pytorchjob", SETTINGS)
    with pytest.raises(ParamsError, match="pipeline covidnet-pytorchjob: takes no --nproc-per-node"):
        kp.pipeline_arguments(job, kp.check_arguments(PARAMS, cohort_repo="r", nproc_per_node="2"))
    with pytest.raises(ParamsError, match="pipeline covidnet-pytorchjob: --cohort-repo required"):
        kp.pipeline_arguments(job, kp.check_arguments(PARAMS))
    sent = kp.pipeline_arguments(kp.build_pipeline("covidnet", SETTINGS), args)
    assert sent == {"profile": "tiny", "params_yaml": PARAMS.read_text(), "cohort_repo": "https://git.example/cohort.git"}


class FakeClient:
    """Stands in for a Kubeflow Pipelines cluster (none can run here): records what would be sent."""

    calls: list = []

    def __init__(self, host=None, **kwargs):
        FakeClient.calls.append(("init", {"host": host, **kwargs}))

    def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
        FakeClient.calls.append(("run", {"pipeline_file": pipeline_file,
                                         "spec": _load(pipeline_file), **kwargs}))
        return type("Run", (), {"run_id": "run-1"})()

    def get_experiment(self, experiment_name=None, **kwargs):
        raise ValueError(f"no experiment {experiment_name}")

    def create_experiment(self, name, **kwargs):
        FakeClient.calls.append(("experiment", {"name": name}))
        return type("Exp", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kwargs):
        kwargs["spec"] = _load(kwargs["pipeline_package_path"])
        FakeClient.calls.append(("recurring", kwargs))
        return type("Rec", (), {"recurring_run_id": "rec-1"})()


@pytest.fixture
def cohort_git(tmp_path):
    """A real git repository standing for the cohort repo: branch main, tag v3, one commit."""
    repo = tmp_path / "cohort"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)}
    for cmd in (["init", "-q", "-b", "main", str(repo)], ["-C", str(repo), "commit", "-q", "--allow-empty", "-m", "c"],
                ["-C", str(repo), "tag", "v3"]):
        subprocess.run(["git", *cmd], check=True, env=env, capture_output=True)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    return repo, sha


def test_submit_sends_the_compiled_package_and_arguments(monkeypatch, capsys, cohort_git):
    import kfp

    repo, sha = cohort_git
    FakeClient.calls = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    assert cli.main(["pipeline", "submit", "--params", str(PARAMS), "--host", "http://kfp.example:8888",
                     "--profile", "tiny", "--min-auc-lower", "0.7", "--cohort-repo", str(repo),
                     "--cohort-revision", "v3", "--experiment", "nightly", "--nproc-per-node", "4"]) == 0
    (_, init), (_, run) = FakeClient.calls
    assert init["host"] == "http://kfp.example:8888"
    assert run["pipeline_file"].endswith("covidnet_pipeline.yaml")
    assert run["spec"] == _load(kp.PIPELINES["covidnet"].path)
    args = run["arguments"]
    assert args["profile"] == "tiny" and args["min_auc_lower"] == 0.7 and "min_sensitivity_lower" not in args
    assert args["cohort_repo"] == str(repo) and args["cohort_revision"] == "v3" and args["nproc_per_node"] == "4"
    assert args["params_yaml"] == PARAMS.read_text()
    assert run["experiment_name"] == "nightly" and run["enable_caching"] is True
    assert "run-1" in capsys.readouterr().out

    FakeClient.calls = []  # a full commit hash is found too, and the PyTorchJob pipeline is sent by name
    assert cli.main(["pipeline", "submit", "--params", str(PARAMS), "--host", "http://kfp.example:8888",
                     "--pipeline", "covidnet-pytorchjob", "--cohort-repo", str(repo), "--cohort-revision", sha]) == 0
    assert FakeClient.calls[-1][1]["spec"]["pipelineInfo"]["name"] == "covidnet-pytorchjob"

    FakeClient.calls = []
    assert cli.main(["pipeline", "submit", "--params", str(PARAMS), "--host", "http://kfp.example:8888",
                     "--schedule", "0 3 * * 1"]) == 0
    kinds = [k for k, _ in FakeClient.calls]
    assert kinds == ["init", "experiment", "recurring"]
    rec = FakeClient.calls[-1][1]
    assert rec["cron_expression"] == "0 0 3 * * 1" and rec["experiment_id"] == "exp-1"
    assert rec["spec"]["pipelineInfo"]["name"] == "covidnet-synthetic"  # no cohort repo: the synthetic demo
    assert rec["params"]["profile"] == "default"


def test_submit_refuses_bad_input_before_contacting(monkeypatch, capsys, cohort_git):
    import kfp

    repo, _ = cohort_git
    FakeClient.calls = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    host = ["--host", "http://kfp.example"]
    for argv, message in (
            (["--profile", "huge"], "profile 'huge' is not defined"),
            (["--min-sensitivity-lower", "2"], "is not in [0, 1]"),
            (["--schedule", "daily"], "not a cron expression"),
            (["--cohort-repo", str(repo), "--cohort-revision", "v4"],
             "cohort revision 'v4' is not a branch, tag or full commit hash of"),
            (["--cohort-repo", str(repo), "--cohort-revision", "f" * 40], f"cohort revision '{'f' * 40}': no such commit"),
            (["--pipeline", "covidnet-synthetic", "--cohort-repo", str(repo)], "takes no --cohort-repo")):
        assert cli.main(["pipeline", "submit", "--params", str(PARAMS), *host, *argv]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["pipeline", "submit", "--params", str(PARAMS)]) == 2
    assert "--host URL is required" in capsys.readouterr().err
    assert FakeClient.calls == []


def test_submit_says_when_the_revision_could_not_be_checked(monkeypatch, capsys, tmp_path):
    """An unreachable cohort repository (here a path with no repository) is not an error: the run says so."""
    import kfp

    FakeClient.calls = []
    monkeypatch.setattr(kfp, "Client", FakeClient)
    assert cli.main(["pipeline", "submit", "--params", str(PARAMS), "--host", "http://kfp.example",
                     "--cohort-repo", str(tmp_path / "nowhere"), "--cohort-revision", "v1"]) == 0
    assert "cohort revision 'v1' not checked: git ls-remote" in capsys.readouterr().out
    assert [k for k, _ in FakeClient.calls] == ["init", "run"]


@pytest.mark.slow
def test_local_run_registers_a_model_and_writes_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = kp.check_arguments(PARAMS, "tiny", mlflow={"tracking_uri": uri, "artifact_root": str(tmp_path / "mlruns")})
    outputs = kp.run_local(args, tmp_path / "root")

    metrics = outputs["metrics"].metadata
    assert "test.auc" in metrics and 0.0 <= metrics["test.auc"] <= 1.0
    roc = outputs["roc"].metadata
    assert roc["confidenceMetrics"] and roc["confusionMatrix"]["annotationSpecs"][1]["displayName"] == "covid"
    assert outputs["cohort_metrics"].metadata and outputs["train_metrics"].metadata["epochs_run"] == 2
    assert outputs["model"].metadata["processes"] == 1  # nproc_per_node auto on a CPU
    assert "<html" in Path(outputs["report"].path).read_text().lower()
    assert "SYNTHETIC" in Path(outputs["flow"].path).read_text().upper()
    decision = json.loads(Path(outputs["decision"].path).read_text())

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    alias = "champion" if decision["promoted"] else "challenger"
    version = client.get_model_version_by_alias("covidnet", alias)
    assert str(version.version) == decision["version"] == "1"
    assert outputs["gate"].metadata["promoted"] == float(decision["promoted"])


@pytest.mark.slow
def test_a_failing_stage_stops_the_local_run_and_leaves_no_partial_artifact(tmp_path, monkeypatch, capfd):
    """validate fails (no series can have 1000 slices): the run names the task, its log says why, its outputs are gone."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = params_with(tmp_path, lambda raw: raw["profiles"]["tiny"]["validate"].update(slices=[1000, 2000]))
    root = tmp_path / "root"
    assert cli.main(["pipeline", "run", "--local", "--params", str(params), "--profile", "tiny",
                     "--pipeline-root", str(root)]) == 1
    logs = capfd.readouterr()
    assert re.search(r"covidnet pipeline: error: Pipeline .*covidnet-synthetic.* finished with status .*FAILURE.*"
                     r"Inner task failed: .*validate", logs.err)
    assert "validate failed: ValueError: the cohort broke expectations" in logs.out + logs.err
    assert "slices" in logs.out + logs.err  # ... and which expectation
    (run_dir,) = (root / "runs").iterdir()
    assert (run_dir / "synth" / "dicom").is_dir()  # the stage before it finished
    validate_dir = run_dir / "validate"
    leftovers = [p for p in validate_dir.rglob("*") if p.is_file() and p.name != "executor_output.json"] \
        if validate_dir.exists() else []
    assert leftovers == [], leftovers
    assert not (run_dir / "exclude").exists()  # nothing ran after it
