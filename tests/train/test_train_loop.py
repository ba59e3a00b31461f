"""Training: smoke run, micro-batches, kill-and-resume, two-process DDP, MLflow round trip, bad input.

Tensors are written directly (a learnable toy signal on tiny (1, 8, 24, 24) volumes) so the
tests exercise training, not the data stages. The step plan and the checkpoints have their
own unit tests (test_step_plan.py, test_checkpoint.py).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from covidnet.train.checkpoint import load_checkpoint
from covidnet.train.loop import train_model
from covidnet.train.params import TrainDataError, TrainPaths
from support import REPO
from support.train import PRE, SHAPE, TINY, tiny_cohort, train_params, train_paths


def test_smoke_loss_falls_and_outputs_written(tmp_path):
    index = tiny_cohort(tmp_path / "pre")
    paths = train_paths(tmp_path)
    r = train_model(index, paths, TINY, train_params(epochs=6), PRE, progress=False)
    losses = [h["train_loss"] for h in r.history]
    assert losses[-1] < losses[0]
    assert r.best["val_auc"] is not None and 1 <= r.best_epoch <= 6
    card = json.loads((paths.model / "model.json").read_text())
    assert card["config"]["preprocess"]["crop"] == 24 and card["config"]["model"]["input_shape"] == list(SHAPE)
    state = torch.load(paths.model / "weights.pt", weights_only=True)
    assert any(k.startswith("features.") for k in state)
    curve = pd.read_csv(paths.report / "curve.csv")
    assert list(curve.epoch) == list(range(1, 7))
    metrics = json.loads((paths.report / "metrics.json").read_text())
    assert metrics["best_epoch"] == r.best_epoch


def _assert_same_training(a: dict, b: dict, curve_a: pd.DataFrame, curve_b: pd.DataFrame) -> None:
    """Two runs that differ only in how the global batch was split agree within float noise.

    The gradients agree to float rounding, but Adam divides each gradient by its running
    RMS, so a parameter whose gradient is at rounding level (here: the stem's norm, at
    init) can take a step of up to +-lr either way. Hence: the losses to 1e-4 relative,
    99% of the weights to 1e-5, and every weight to 4 x lr.
    """
    np.testing.assert_allclose(curve_a.train_loss, curve_b.train_loss, rtol=1e-4)
    np.testing.assert_allclose(curve_a.val_loss, curve_b.val_loss, rtol=1e-3)
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().reshape(-1) for k in a])
    assert (diffs <= 1e-5).float().mean() >= 0.99, f"{(diffs > 1e-5).sum()} of {diffs.numel()} weights differ"
    assert diffs.max() <= 4e-3


def _last(paths: TrainPaths) -> dict:
    return load_checkpoint(paths.checkpoints / "last.pt")["model"]


def test_micro_batches_match_the_full_batch(tmp_path):
    """Gradient accumulation (2 x 2 and 4 x 1) against the full batch of 4."""
    index = tiny_cohort(tmp_path / "pre")
    runs = {}
    for mb in (None, 2, 1):
        p = TrainPaths(tmp_path / "pre", tmp_path / f"m{mb}", tmp_path / f"c{mb}", tmp_path / f"r{mb}")
        train_model(index, p, TINY, train_params(epochs=2, micro_batch_size=mb), PRE, progress=False)
        runs[mb] = (_last(p), pd.read_csv(p.report / "curve.csv"))
    for mb in (2, 1):
        _assert_same_training(runs[None][0], runs[mb][0], runs[None][1], runs[mb][1])


@pytest.mark.parametrize("defect,message", [("shape", r"scan train03: tensor shape \(1, 8, 24, 20\)"),
                                            ("nan", r"scan train03: tensor has 5 NaN")])
def test_bad_tensor_names_the_scan(tmp_path, defect, message):
    index = tiny_cohort(tmp_path / "pre")
    x = np.load(tmp_path / "pre/tensors/train03.npy")
    if defect == "shape":
        x = x[..., :20]
    else:
        x.reshape(-1)[:5] = np.nan
    np.save(tmp_path / "pre/tensors/train03.npy", x)
    with pytest.raises(TrainDataError, match=message):
        train_model(index, train_paths(tmp_path), TINY, train_params(epochs=1), PRE, progress=False)


def test_single_class_or_empty_split_stops(tmp_path):
    index = tiny_cohort(tmp_path / "pre")
    one = index[(index.split == "val") | (index.label == "covid")]
    with pytest.raises(TrainDataError, match="one class only"):
        train_model(one, train_paths(tmp_path), TINY, train_params(), PRE, progress=False)
    with pytest.raises(TrainDataError, match="the val split is empty"):
        train_model(index[index.split == "train"], train_paths(tmp_path), TINY, train_params(), PRE, progress=False)


# ------------------------------------------------------------------ through the CLI


def _project(tmp: Path, epochs: int) -> Path:
    """A params file whose paths point into ``tmp`` and whose model/train are tiny."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["paths"].update({"preprocessed": str(tmp / "pre"), "model": str(tmp / "model"),
                            "checkpoints": str(tmp / "ckpt"), "train_report": str(tmp / "report")})
    params["profiles"]["tiny"]["train"] = {"epochs": epochs, "batch_size": 4, "seed": 3}
    params["profiles"]["tiny"]["model"] = {"builder": "cpu", "block_config": [1, 1], "growth_rate": 4,
                                           "init_features": 8, "input_shape": list(SHAPE),
                                           # instance norm: with batch norm a result depends on how a batch is
                                           # split over processes, which the DDP test compares
                                           "norm": "instance"}
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
    params["mlflow"]["artifact_root"] = str(tmp / "mlruns")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    tiny_cohort(tmp / "pre", n_train=16)
    return tmp / "params.yaml"


def _train_cmd(params: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "covidnet.cli.main", "train", "--params", str(params), "--quiet", "--no-track", *extra]


def _weights(tmp: Path) -> dict:
    return torch.load(tmp / "model" / "weights.pt", weights_only=True)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_ends_identical(tmp_path):
    ref = _project(tmp_path / "ref", epochs=5)
    subprocess.run(_train_cmd(ref), check=True, capture_output=True, timeout=600)

    run = _project(tmp_path / "run", epochs=5)
    proc = subprocess.Popen(_train_cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "run/ckpt/last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_after = load_checkpoint(ckpt)["epoch"]
    assert 2 <= killed_after < 5 and not (tmp_path / "run/model").exists()

    out = subprocess.run(_train_cmd(run, "--resume", "always"), check=True, capture_output=True, text=True, timeout=600)
    assert f"resumed after epoch {killed_after}" in out.stdout
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert (pd.read_csv(tmp_path / "ref/report/curve.csv").equals(pd.read_csv(tmp_path / "run/report/curve.csv")))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun, 2 CPU processes on gloo, vs 1 process: the same training within float noise."""
    one = _project(tmp_path / "one", epochs=2)
    two = _project(tmp_path / "two", epochs=2)
    subprocess.run(_train_cmd(one), check=True, capture_output=True, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(torchrun + _train_cmd(two)[1:], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_training(load_checkpoint(tmp_path / "one/ckpt/last.pt")["model"],
                          load_checkpoint(tmp_path / "two/ckpt/last.pt")["model"],
                          pd.read_csv(tmp_path / "one/report/curve.csv"), pd.read_csv(tmp_path / "two/report/curve.csv"))


@pytest.mark.slow
def test_mlflow_run_logs_params_metrics_and_a_loadable_model(tmp_path):
    import mlflow

    from covidnet.model.card import ModelCard
    from covidnet.tracking import MlflowParams, run_of

    index = tiny_cohort(tmp_path / "pre")
    paths = train_paths(tmp_path)
    mp = MlflowParams(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t",
                      artifact_root=str(tmp_path / "mlruns"), registered_model="covidnet")
    r = train_model(index, paths, TINY, train_params(epochs=2), PRE, mlflow_params=mp,
                    provenance={"tensors_version": "sha256:x", "synthetic": "true"}, git_commit="abc", progress=False)
    run = mlflow.get_run(r.run_id)
    assert run.data.params["train.learning_rate"] == "0.001"
    assert run.data.params["preprocess.crop"] == "24"
    assert run.data.tags["covidnet.git_commit"] == "abc"
    history = mlflow.tracking.MlflowClient().get_metric_history(r.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    logged = mlflow.pytorch.load_model(f"runs:/{r.run_id}/model")
    from covidnet.model.network import COVIDNet

    card = json.loads((paths.model / "model.json").read_text())
    ours = COVIDNet(**card["config"]["model"])
    ours.load_state_dict(torch.load(paths.model / "weights.pt", weights_only=True))
    ours.eval()
    x = torch.from_numpy(np.load(tmp_path / "pre/tensors/val00.npy").astype(np.float32))[None]
    with torch.no_grad():
        torch.testing.assert_close(logged(x), ours(x), atol=1e-5, rtol=1e-4)
    local = mlflow.artifacts.download_artifacts(f"runs:/{r.run_id}/covidnet/model.json", dst_path=str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text())["config"]["preprocess"]["depth"] == 8

    # The same settings again (`dvc repro -f train`): a finished run is not resumed but trained
    # afresh, in a new run; the model folder is byte for byte the same (no run id, no commit in it),
    # and the run record beside the report names the new run.
    def logged_models():
        return len(mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list"))

    def folder_bytes(folder):
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    before, first = logged_models(), folder_bytes(paths.model)
    again = train_model(index, paths, TINY, train_params(epochs=2), PRE, mlflow_params=mp,
                        provenance={"tensors_version": "sha256:x", "synthetic": "true"}, git_commit="abc",
                        progress=False)
    assert again.run_id != r.run_id and again.resumed_from == 0 and again.epochs_run == 2
    assert logged_models() == before + 1
    assert folder_bytes(paths.model) == first
    assert run_of(paths.report, ModelCard.digest(paths.model)) == again.run_id
    assert run_of(paths.report, "sha256:another-model") is None


def test_early_stopping_after_patience(tmp_path):
    """A learning rate too small to change anything: no better epoch, so stop after `patience` more."""
    index = tiny_cohort(tmp_path / "pre")
    r = train_model(index, train_paths(tmp_path), TINY, train_params(epochs=10, patience=2, learning_rate=1e-12), PRE,
                    progress=False)
    assert r.stopped_early and r.epochs_run == 3 and r.best_epoch == 1
