"""The project image for real: the Kubeflow pipelines run in it, the KServe server starts from it.

The quick tests check that params name the images in one place (``pipeline.image``) and that
the compiled YAML, the components and the PyTorchJob use them. The slow ones need podman and
the image built (``bash scripts/containers.sh ci``; they skip saying so where either is
missing): ``covidnet-synthetic`` (tiny profile) and ``covidnet-monitor`` run with
``kfp.local.DockerRunner`` against podman's Docker-compatible socket, each component in its own
container of the project image, artifacts passed between containers through the pipeline root
(bind-mounted, as kfp.local does), and the server runs with ``podman run`` as the
InferenceService's container would. kfp.local's Docker task handler is replaced by a shim for
podman's auto-remove race (tests/support/podman.py says why); no cluster is involved.

No CUDA image can be built here (no registry for a CUDA base, no GPU): in the container runs
the train task runs in the CPU image (``pipeline.image.cuda`` set to the CPU image), which the
test says when it runs.
"""

import datetime as dt
import io
import json
import os
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from covidnet.kfp import runner as kp
from covidnet.kfp.components import stages
from covidnet.kfp.params import pipeline_params
from covidnet.kfp.pytorchjob import pytorchjob_manifest
from covidnet.params import ParamsError, load_params
from support import REPO, params_with
from support.podman import docker_runner, open_to_the_image_user, podman, podman_session, wait_ready

PARAMS = REPO / "params.yaml"
TINY_TASKS = {"synth", "validate", "exclude", "split", "preprocess", "train", "evaluate", "promote"}


def _executors(path: Path) -> dict:
    return next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]


# --- one place names the images ------------------------------------------------------------------------

def test_params_name_the_images_the_yaml_components_and_pytorchjob_use():
    settings = pipeline_params(load_params(PARAMS))
    image = settings.image
    assert (stages.IMAGE, stages.CUDA_IMAGE) == (image.cpu, image.cuda), (
        "components/stages.py's IMAGE / CUDA_IMAGE mirror the default params' pipeline.image: keep them equal")
    for entry in kp.PIPELINES.values():
        for name, ex in _executors(entry.path).items():
            want = image.cuda if name == "exec-train" else image.cpu
            assert ex["container"]["image"] == want, f"{entry.yaml}: {name} runs {ex['container']['image']}"
    manifest = pytorchjob_manifest(settings.pytorchjob, settings.secrets, name="covidnet-train", profile="paper",
                                   workdir=f"{settings.pytorchjob.mount_path}/covidnet-train")
    for replica in manifest["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["spec"]["containers"][0]["image"] == image.cuda


def test_one_edit_of_pipeline_image_moves_every_task(tmp_path):
    digest = "registry.example.org:5000/ml/covidnet@sha256:" + "ab" * 32

    def edit(raw):
        raw["pipeline"]["image"] = {"cpu": digest, "cuda": "registry.example.org:5000/ml/covidnet:0.1.0-cuda"}

    params = params_with(tmp_path, edit)
    for name in ("covidnet-synthetic", "covidnet-pytorchjob", "covidnet-monitor"):
        execs = _executors(kp.compile_pipeline(name, tmp_path / f"{name}.yaml", params))
        assert {ex["container"]["image"] for k, ex in execs.items() if k != "exec-train"} == {digest}, name
        if "exec-train" in execs:
            assert execs["exec-train"]["container"]["image"].endswith("covidnet:0.1.0-cuda")
    settings = pipeline_params(load_params(params))
    assert settings.pytorchjob.image == "registry.example.org:5000/ml/covidnet:0.1.0-cuda"


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["image"].update(cpu="covidnet"), "pipeline.image.cpu: 'covidnet' has neither a tag nor a digest"),
    (lambda p: p["image"].update(cuda="Covidnet:1"), "pipeline.image.cuda: 'Covidnet:1' is not an image reference"),
    (lambda p: p["image"].update(cpu="covidnet@sha256:abc"), "pipeline.image.cpu: 'covidnet@sha256:abc' is not an"),
    (lambda p: p["pytorchjob"].update(image="covidnet:2"), "pipeline.pytorchjob.image: the PyTorchJob's pods run "
                                                           "pipeline.image.cuda"),
])
def test_bad_image_settings_name_the_key(tmp_path, edit, message):
    params = params_with(tmp_path, lambda raw: edit(raw["pipeline"]))
    with pytest.raises(ParamsError, match=re.escape(message)):
        pipeline_params(load_params(params))


def test_scripts_take_the_mirror_from_the_machine():
    """No package host is written in the image scripts or Dockerfiles: the mirror comes from apt's sources at run time."""
    for name in ("scripts/images.sh", "scripts/containers.sh", "Dockerfile", "Dockerfile.cuda"):
        text = (REPO / name).read_text()
        assert not re.search(r"https?://(?!127\.0\.0\.1|d/)", text), f"{name} names a host"


# --- the pipelines in containers -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def session():
    yield from podman_session()


def _say(capture, text: str) -> None:
    """Into the test output itself (also with -q and captured output): the containers each task ran in."""
    with capture.disabled():
        print("\n" + text)


def _container_run(monkeypatch, session, root: Path, name: str, params: Path, profile: str, **arguments):
    """Run pipeline ``name`` with kfp.local's DockerRunner in the project image; (outputs or exception, log)."""
    import kfp.local

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    log = docker_runner(monkeypatch, session)
    (root / "mlflow").mkdir(parents=True, exist_ok=True)  # inside the pipeline root: the one folder kfp.local mounts
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    args = kp.check_arguments(params, profile, mlflow={"tracking_uri": uri,
                                                       "artifact_root": str(root / "mlflow" / "mlruns")})
    open_to_the_image_user(root)
    old = os.umask(0)  # kfp.local makes each task's folders on the host: writable by the image's user too
    try:
        # network_mode none: the image holds everything, nothing is installed or fetched at run time.
        kfp.local.init(runner=kfp.local.DockerRunner(network_mode="none"), pipeline_root=str(root),
                       raise_on_error=True)
        pipeline = kp.build_pipeline(name, args.settings)
        try:
            return dict(pipeline(**{**kp.pipeline_arguments(pipeline, args), **arguments}).outputs), log
        except RuntimeError as exc:
            return exc, log
    finally:
        os.umask(old)


def _cpu_train(tmp_path: Path, session, edit=None) -> Path:
    """params whose train task runs in the CPU image (no CUDA image can be built here)."""
    def change(raw):
        raw["pipeline"]["image"]["cuda"] = session.images.cpu
        if edit:
            edit(raw)

    return params_with(tmp_path, change)


@pytest.mark.slow
def test_synthetic_pipeline_runs_in_containers(session, tmp_path, monkeypatch, capsys):
    params = _cpu_train(tmp_path, session)
    root = tmp_path / "root"
    t0 = time.time()
    outputs, log = _container_run(monkeypatch, session, root, "covidnet-synthetic", params, "tiny")
    _say(capsys, log.table(f"covidnet-synthetic (tiny) in {session.images.cpu} ({session.revision}), "
                           f"{time.time() - t0:.0f} s; train in the CPU image (no CUDA image here)"))
    assert not isinstance(outputs, Exception), f"{outputs}\n{log.table('containers')}"
    assert {r.task for r in log.runs} == TINY_TASKS
    assert len({r.id for r in log.runs}) == len(log.runs) == len(TINY_TASKS), "one container per task"
    assert all(r.exit_code == 0 and r.image == session.images.cpu for r in log.runs)
    # The artifacts crossed containers through the pipeline root: written there by the image's user.
    model = Path(outputs["model"].path)
    assert (model / "weights.pt").stat().st_uid == 1000 and (model / "model.json").is_file()
    assert outputs["model"].metadata["processes"] == 1
    metrics = outputs["metrics"].metadata
    assert any("auc" in k and 0.0 <= v <= 1.0 for k, v in metrics.items()), metrics
    assert "SYNTHETIC" in Path(outputs["flow"].path).read_text().upper()
    decision = json.loads(Path(outputs["decision"].path).read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    alias = "champion" if decision["promoted"] else "challenger"
    assert str(client.get_model_version_by_alias("covidnet", alias).version) == decision["version"] == "1"


@pytest.mark.slow
def test_a_failing_component_fails_the_run_in_containers(session, tmp_path, monkeypatch, capfd):
    """validate fails in its container (no series has 1000 slices): the run fails naming the task, the
    container's real exit code is read (not taken for 0), its outputs are gone, nothing runs after it."""
    params = _cpu_train(tmp_path, session, lambda raw: raw["profiles"]["tiny"]["validate"].update(slices=[1000, 2000]))
    root = tmp_path / "root"
    result, log = _container_run(monkeypatch, session, root, "covidnet-synthetic", params, "tiny")
    logs = capfd.readouterr()
    _say(capfd, log.table("covidnet-synthetic with a failing validate"))
    assert isinstance(result, RuntimeError), f"the run did not fail: {result}"
    assert re.search(r"finished with status .*FAILURE.*Inner task failed: .*validate", str(result)), str(result)
    assert [(r.task, r.exit_code != 0) for r in log.runs] == [("synth", False), ("validate", True)]
    assert "validate failed: ValueError: the cohort broke expectations" in logs.out + logs.err
    (run_dir,) = root.glob("covidnet-synthetic-*")
    assert (run_dir / "synth" / "dicom").is_dir()
    leftovers = [p for p in (run_dir / "validate").rglob("*") if p.is_file() and p.name != "executor_output.json"]
    assert leftovers == [], leftovers
    assert not (run_dir / "exclude").exists()


@pytest.mark.slow
def test_monitor_pipeline_runs_in_containers(session, tmp_path, monkeypatch, capsys):
    """covidnet-monitor over a real SQLite prediction log: a calm day reports ok; a noisy one fails the task."""
    from covidnet.model.card import ModelCard
    from covidnet.monitor.predlog import PredictionLog
    from support.monitor import KEY, model_folder, rows

    root = tmp_path / "root"
    data = root / "data"
    model = model_folder(data / "model")
    db = data / "predictions.db"
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    plog = PredictionLog(f"sqlite:///{db}", KEY, 30.0)
    version = ModelCard.folder_version(model)
    plog.append(rows(version, 60, t0, seed=1))
    plog.append(rows(version, 60, t0 + dt.timedelta(days=1), seed=2, noise=35.0))
    plog.close()
    monkeypatch.delenv(load_params(PARAMS)["monitor"]["log"]["url_env"], raising=False)
    params = params_with(tmp_path, lambda raw: raw["paths"].update(
        {"predlog": str(db), "model": str(model), "monitor": str(root / "unused")}))

    calm, log = _container_run(monkeypatch, session, root, "covidnet-monitor", params, "default",
                               window_hours=24.0, until="2024-05-02T00:00:00Z")
    _say(capsys, log.table("covidnet-monitor, a calm day"))
    assert not isinstance(calm, Exception), calm
    report = json.loads(Path(calm["drift_json"].path).read_text())
    assert report["status"] == "ok" and report["n"] == 60
    assert [(r.task, r.exit_code) for r in log.runs] == [("monitor-drift", 0)]

    noisy, log = _container_run(monkeypatch, session, root, "covidnet-monitor", params, "default",
                                window_hours=24.0, until="2024-05-03T00:00:00Z")
    _say(capsys, log.table("covidnet-monitor, a noisy day (the alarm fails the task)"))
    assert isinstance(noisy, RuntimeError) and "monitor-drift" in str(noisy), noisy
    assert [(r.task, r.exit_code != 0) for r in log.runs] == [("monitor-drift", True)]


# --- the server from the image -------------------------------------------------------------------------

def _manifest_container() -> dict:
    """The container of serving/inferenceservice-cpu.yaml: what KServe runs."""
    spec = yaml.safe_load((REPO / "serving" / "inferenceservice-cpu.yaml").read_text())
    return spec["spec"]["predictor"]["containers"][0]


@pytest.fixture()
def model_dir(tmp_path):
    """A tiny trained model folder with its reference profile, laid out as the storage initializer copies it."""
    from covidnet.train.loop import train_model
    from support.train import PRE, TINY, qc_csv, tiny_cohort, train_params, train_paths

    index = tiny_cohort(tmp_path / "pre", n_train=4, n_val=2)
    qc_csv(index, tmp_path / "pre" / "qc.csv")
    train_model(index, train_paths(tmp_path), TINY, train_params(epochs=1, batch_size=2),
                {**PRE, "dtype": "float16", "body_hu": -500.0, "lung_hu": [-950.0, -400.0], "workers": 1},
                progress=False)
    models = tmp_path / "mnt-models"
    shutil.copytree(tmp_path / "model", models)
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return models


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
def test_server_runs_from_the_image(session, model_dir, tmp_path, capsys):
    """`podman run` the image as the InferenceService does (its command and args, the model at /mnt/models):
    ready, a study zip and a V2 tensor answered, /metrics, the HEALTHCHECK, a clean stop on SIGTERM with
    every answered prediction in the log."""
    from covidnet.model.card import ModelCard
    from covidnet.monitor.predlog import PredictionLog
    from support.server import free_port, write_study

    spec = _manifest_container()
    key = secrets.token_hex(16)
    logdir = tmp_path / "log"
    logdir.mkdir()
    logdir.chmod(0o777)
    port, name = free_port(), f"covidnet-serve-{secrets.token_hex(4)}"
    # --profile tiny: the test's 12-slice study passes the tiny profile's series rules (the manifest's
    # own args are kept; the GPU manifest adds --profile paper the same way).
    cmd = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-v", f"{model_dir}:/mnt/models:ro",
           "-v", f"{logdir}:/var/log/covidnet", "-e", "COVIDNET_PREDLOG_URL=sqlite:////var/log/covidnet/predictions.db",
           "-e", f"COVIDNET_HASH_KEY={key}", "--entrypoint", json.dumps(spec["command"]), session.images.cpu,
           *spec["args"], "--profile", "tiny"]
    t0 = time.time()
    cid = podman(*cmd).stdout.strip().splitlines()[-1]
    try:
        base = f"http://127.0.0.1:{port}"
        ready_s = wait_ready(base, "covidnet", cid)
        health = podman("healthcheck", "run", cid, check=False)
        assert health.returncode == 0, f"HEALTHCHECK: {health.stdout} {health.stderr}"

        study = write_study(tmp_path / "dicom", uid="c1", seed=1, noise=14.0, tissue=40.0, patient_id="PAT-1")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for f in sorted(study.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(study))
        status, v1 = _post(f"{base}/v1/models/covidnet:predict", buf.getvalue(), "application/zip")
        assert status == 200, v1
        (answer,) = v1["predictions"]
        assert answer["decision"] in ("covid19", "other_pneumonia") and answer["series_uid"]
        assert answer["model"]["version"] == ModelCard.folder_version(model_dir)

        shape = ModelCard.read(model_dir).input_shape
        x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
        body = {"inputs": [{"name": "tensor", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        status, v2 = _post(f"{base}/v2/models/covidnet/infer", json.dumps(body).encode(), "application/json")
        assert status == 200, v2
        out = {o["name"]: o for o in v2["outputs"]}
        assert 0.0 <= out["covid19_probability"]["data"][0] <= 1.0

        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        counted = sum(float(m.group(1)) for m in re.finditer(r"^covidnet_predictions_total\{[^}]*\} (\S+)$",
                                                             metrics, re.M))
        assert counted == 2, metrics[:2000]

        t_stop = time.time()
        podman("kill", "--signal", "TERM", cid)
        code = int(podman("wait", cid, timeout=60).stdout.strip())
        stop_s = time.time() - t_stop
        logs = podman("logs", cid, check=False)
        assert code == 0, f"exit {code} after SIGTERM:\n{(logs.stdout + logs.stderr)[-3000:]}"
    finally:
        podman("rm", "-f", cid, check=False)
    plog = PredictionLog(f"sqlite:///{logdir / 'predictions.db'}", key.encode(), 30.0)
    try:
        logged = plog.predictions()
    finally:
        plog.close()
    assert len(logged) == 2 and set(logged["decision"]) <= {"covid19", "other_pneumonia"}
    _say(capsys, f"server in {session.images.cpu}: container {cid[:12]}, ready {ready_s:.1f} s after `podman run` "
                 f"(total {time.time() - t0:.0f} s), stopped {stop_s:.1f} s after SIGTERM with exit 0, "
                 f"{len(logged)} predictions logged")
