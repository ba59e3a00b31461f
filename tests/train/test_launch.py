"""Training in one pod: how many processes, the torchrun command, and checkpoints that survive a retried task.

The slow tests run the pipeline's ``train`` component (``.python_func``) on tiny toy tensors
of the tiny profile's shape: under torchrun with 2 CPU processes (gloo), and killed mid-run
then retried with a checkpoint folder or an s3:// prefix (moto's S3 server on loopback).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from covidnet.params import ParamsError
from covidnet.train.launch import checkpoint_key, resolve_nproc, torchrun_command, train_command, train_in_pod
from support import REPO


def test_resolve_nproc_on_a_cpu():
    """This machine has no GPU: auto is one process; a count is taken as given (gloo)."""
    assert resolve_nproc("auto") == 1 and resolve_nproc("auto", "cpu") == 1
    assert resolve_nproc("2") == 2 and resolve_nproc(3, "cpu") == 3
    for bad in ("0", "many", 0, -1, "1.5", True):
        with pytest.raises(ParamsError, match=r"nproc_per_node: .* is neither 'auto' nor a process count >= 1"):
            resolve_nproc(bad)
    with pytest.raises(ParamsError, match="train.device: 'cuda' but this pod sees no GPU"):
        resolve_nproc("1", "cuda")


def test_torchrun_command():
    args = train_command("/w/params.yaml", "paper", "/w/pre", "/w/model", "/w/ckpt", "/w/report")
    one = torchrun_command(1, 4, args)
    assert one[:4] == ["torchrun", "--nnodes=1", "--nproc-per-node=4", "--standalone"]
    assert one[4:] == ["-m", "covidnet.cli.main", "train", "--params", "/w/params.yaml", "--profile", "paper",
                       "--preprocessed", "/w/pre", "--out", "/w/model", "--checkpoints", "/w/ckpt", "--report",
                       "/w/report", "--resume", "auto", "-q"]
    assert "--standalone" not in torchrun_command(2, 4, args)  # the operator's PET_* variables give the rendezvous
    with pytest.raises(ValueError, match="nproc_per_node >= 1"):
        torchrun_command(1, 0, args)


def test_checkpoint_key_follows_the_inputs():
    key = checkpoint_key("a: 1\n", "tiny", "sha256:abc")
    assert key == checkpoint_key("a: 1\n", "tiny", "sha256:abc") and key.startswith("train-")
    assert len({key, checkpoint_key("a: 2\n", "tiny", "sha256:abc"), checkpoint_key("a: 1\n", "paper", "sha256:abc"),
                checkpoint_key("a: 1\n", "tiny", "sha256:abd")}) == 4


def test_checkpoint_location_is_a_folder_or_an_s3_prefix(tmp_path):
    from covidnet.kfp.runner import stage_params
    from covidnet.paths import Paths

    text = (REPO / "params.yaml").read_text()
    params = stage_params(text, "tiny")
    for bad, message in (("ckpt", "'ckpt' is neither an absolute folder of the train pod"),
                         ("gs://bucket/ckpt", "'gs://bucket/ckpt' is neither an absolute folder"),
                         ("s3:///ckpt", "'s3:///ckpt' names no bucket")):
        with pytest.raises(ParamsError, match=f"checkpoint_dir: {message}"):
            train_in_pod(params, text, Paths.from_params(params), checkpoint_dir=bad)


def _project(tmp: Path, epochs: int, toy_tensors) -> str:
    """Tiny toy tensors in tmp/pre and the params text (tiny profile, MLflow in tmp)."""
    toy_tensors(tmp / "pre")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profiles"]["tiny"]["train"].update(epochs=epochs, batch_size=4, patience=epochs)  # no early stop
    raw["mlflow"].update(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=str(tmp / "mlruns"))
    return yaml.safe_dump(raw, sort_keys=False)


def _artifacts(tmp: Path, tag: str) -> dict:
    from kfp import dsl

    return {"preprocessed": dsl.Dataset(name="pre", uri=str(tmp / "pre")),
            "model": dsl.Model(name="model", uri=str(tmp / tag / "model")),
            "train_report": dsl.Dataset(name="report", uri=str(tmp / tag / "report")),
            "train_metrics": dsl.Metrics(name="metrics", uri=str(tmp / tag / "metrics"))}


@pytest.mark.slow
def test_train_component_runs_torchrun_over_two_processes(tmp_path, monkeypatch, toy_tensors):
    from covidnet.kfp.components.stages import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text = _project(tmp_path, 2, toy_tensors)
    art = _artifacts(tmp_path, "two")
    train.python_func(params_yaml=text, profile="tiny", nproc_per_node="2", checkpoint_dir="", **art)
    assert art["model"].metadata["processes"] == 2
    card = yaml.safe_load((tmp_path / "two" / "model" / "model.json").read_text())
    record = yaml.safe_load((tmp_path / "two" / "report" / "run.json").read_text())
    assert card["config"]["world_size"] == 2 and "mlflow_run_id" not in card
    assert art["model"].metadata["mlflow_run_id"] == record["mlflow_run_id"]
    assert art["train_metrics"].metadata["epochs_run"] == 2
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"


def _last_checkpoint(location: str, s3, into: Path):
    """The newest ``train-*/last.pt`` under a folder or an s3:// prefix: (its folder or prefix, epoch), or None."""
    from covidnet.train.checkpoint import load_checkpoint

    if not location.startswith("s3://"):
        found = list(Path(location).glob("train-*/last.pt"))
        return (str(found[0].parent), load_checkpoint(found[0])["epoch"]) if found else None
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket, Prefix="ckpt/").get("Contents", [])
            if o["Key"].endswith("/last.pt")]
    if not keys:
        return None
    client.download_file(s3.bucket, keys[0], str(into))
    return f"s3://{s3.bucket}/{keys[0].removesuffix('/last.pt')}", load_checkpoint(into)["epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_a_retried_train_task_resumes_from_the_checkpoint_dir(tmp_path, monkeypatch, toy_tensors, s3_server, where):
    """A train task killed mid-run (SIGKILL, as when a pod is evicted), retried with the same inputs, resumes.

    ``folder`` stands for a PVC; ``s3`` is moto's S3 server on loopback, the checkpoints mirrored every second.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if where == "s3":
        for key, value in {**s3_server.env, "AWS_ENDPOINT_URL": s3_server.endpoint}.items():
            monkeypatch.setenv(key, value)
            env[key] = value
    text = _project(tmp_path, 40, toy_tensors)  # toy epochs take a fraction of a second: enough of them to kill one
    raw = yaml.safe_load(text)
    raw["pipeline"]["train"]["checkpoint_sync_s"] = 1
    text = yaml.safe_dump(raw, sort_keys=False)
    location = str(tmp_path / "pvc") if where == "folder" else f"s3://{s3_server.bucket}/ckpt"
    driver = (
        "import sys, yaml; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from kfp import dsl; from covidnet.kfp.components.stages import train\n"
        "t = Path(sys.argv[2]); text = Path(sys.argv[3]).read_text()\n"
        "train.python_func(params_yaml=text, profile='tiny', checkpoint_dir=sys.argv[4],\n"
        "    preprocessed=dsl.Dataset(name='p', uri=str(t / 'pre')), model=dsl.Model(name='m', uri=str(t / 'a/model')),\n"
        "    train_report=dsl.Dataset(name='r', uri=str(t / 'a/report')), train_metrics=dsl.Metrics(name='x', uri=str(t / 'a/m')))\n")
    (tmp_path / "params.yaml").write_text(text)
    proc = subprocess.Popen([sys.executable, "-c", driver, str(REPO), str(tmp_path), str(tmp_path / "params.yaml"),
                             location], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    saved = None
    while time.time() < deadline and proc.poll() is None:
        saved = _last_checkpoint(location, s3_server, tmp_path / "peek.pt")
        if saved and saved[1] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert saved and saved[1] >= 2 and proc.returncode == -signal.SIGKILL, "the first try finished before its kill"
    saved = _last_checkpoint(location, s3_server, tmp_path / "peek.pt")  # what the retry will find
    assert not (tmp_path / "a" / "model").exists()  # the killed try left no model

    from covidnet.kfp.runner import stage_params
    from covidnet.paths import Paths

    params = stage_params(text, "tiny")
    paths = Paths.from_params(params, preprocessed=tmp_path / "pre", model=tmp_path / "b/model",
                              train_report=tmp_path / "b/report")
    retried = train_in_pod(params, text, paths, checkpoint_dir=location)
    assert (retried.checkpoints, retried.resumed_from) == saved and saved[1] >= 2
    assert yaml.safe_load((tmp_path / "b/model/model.json").read_text())["epochs_run"] == 40
    if where == "s3":
        assert _last_checkpoint(location, s3_server, tmp_path / "peek.pt")[1] == 40  # mirrored to the end
        return
    afresh = train_in_pod(params, text, Paths.from_params(params, preprocessed=tmp_path / "pre",
                                                          model=tmp_path / "c/model", train_report=tmp_path / "c/r"))
    assert afresh.checkpoints is None and afresh.resumed_from == 0 and afresh.run_id != retried.run_id
