"""The ``train`` stage's loop: COVIDNet on the preprocessed tensors, as the paper trained it.

Adam (learning rate from params; paper 0.001), binary cross-entropy on the COVID-19 logit,
batch size from params (paper 8), no augmentation by default (the paper used none). The
validation split is scored every epoch (loss and AUC); the best epoch by AUC is kept, and
training stops early after ``patience`` epochs without a better AUC.

Exactness: the global batch is split over processes and micro-batches without changing the
gradient, and every epoch's sample order depends on the seed and the epoch alone
(:mod:`covidnet.train.plan`). A checkpoint (weights, optimiser, RNG state, history) is
written after every epoch (:mod:`covidnet.train.checkpoint`), so a run killed at any point
and restarted ends with the same weights as an uninterrupted run (on CPU, where the kernels
are deterministic; 3D convolutions on CUDA are not, so GPU runs agree only within
floating-point noise).

Outputs (rank 0 only): the model folder and the report (:mod:`covidnet.train.outputs`),
and an MLflow run when tracking (:mod:`covidnet.train.tracking`).

Several GPUs: ``torchrun --nproc_per_node=N -m covidnet.cli.main train`` (DDP, NCCL on GPUs,
gloo on CPUs; :mod:`covidnet.train.ddp`). Several nodes: ``torchrun --nnodes=M
--node_rank=K --rdzv_endpoint=HOST:PORT --nproc_per_node=N -m covidnet.cli.main train`` on
each node (or a Kubeflow PyTorchJob, which sets the same environment).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from covidnet.model.inference import sigmoid
from covidnet.progress import bar
from covidnet.train.checkpoint import (
    BEST,
    LAST,
    best_state,
    check_resume_mode,
    last_state,
    load_checkpoint,
    mark_finished,
    resume_state,
    save_checkpoint,
)
from covidnet.train.data import TensorSet, collate
from covidnet.train.ddp import all_reduce_mean, barrier, init_distributed, wrap_model
from covidnet.train.outputs import write_outputs
from covidnet.train.params import TrainDataError, TrainParams, TrainPaths, TrainResult
from covidnet.train.plan import loader_batches, step_plan
from covidnet.train.tracking import MlflowRun

log = logging.getLogger(__name__)


def train_model(index: pd.DataFrame, paths: TrainPaths, model_params, params: TrainParams,
                preprocess: dict[str, Any], *, resume: str = "auto", mlflow_params=None,
                provenance: dict[str, str] | None = None, git_commit: str = "unknown",
                progress: bool = True) -> TrainResult:
    """Train COVIDNet; write the best model, the curve, the metrics and checkpoints.

    Args:
        index: the preprocessed index (``scan_id, label, split, path``...).
        paths: where the tensors are and where outputs go.
        model_params: :class:`covidnet.model.builders.ModelParams`.
        params: the train section.
        preprocess: the preprocessing parameters (saved with the model so serving applies
            the same transform); ``depth`` and ``crop`` give the tensor shape
            ``(1, depth, crop, crop)``.
        resume: ``auto`` resumes an interrupted run from ``paths.checkpoints`` when its
            configuration matches (and starts afresh, saying so, when it does not, or when the
            checkpoint is of a run that finished: forcing a stage retrains); ``always`` must
            resume an interrupted run; ``never`` starts afresh. Settings that cannot change the weights (the process
            and DataLoader worker counts) are not compared
            (:data:`covidnet.train.checkpoint.NOT_COMPARED`).
        mlflow_params: :class:`covidnet.tracking.MlflowParams`, or None for no tracking.
        provenance: the model card's tags (``tensors_version``, ``synthetic``, ``profile``),
            also the run's ``covidnet.*`` tags.
        git_commit: the code's commit: a run tag and, with the run id, the run record
            (:func:`covidnet.tracking.write_run_record`) beside the report, not in the card.
        progress: progress bars on stderr.

    Raises:
        TrainDataError: an empty or single-class training split, a bad tensor.
        ResumeError: ``resume="always"`` and no checkpoint, or one of another configuration.
    """
    import torch
    import torch.nn.functional as F

    from covidnet.model.builders import build_model

    check_resume_mode(resume)
    device_kind = "cuda" if params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = init_distributed(device_kind)
    device = torch.device(f"cuda:{dist.local_rank}" if device_kind == "cuda" else "cpu")
    if device_kind == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        if params.threads:
            torch.set_num_threads(params.threads)
        if params.precision != "fp32":
            log.warning("train.precision %s applies on GPU only; training in fp32 on the CPU", params.precision)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.precision) if device_kind == "cuda" else None

    def autocast():
        return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    shape = (1, int(preprocess["depth"]), int(preprocess["crop"]), int(preprocess["crop"]))
    train_rows = index[index["split"] == "train"]
    val_rows = index[index["split"] == "val"]
    for name, rows in (("train", train_rows), ("val", val_rows)):
        if rows.empty:
            raise TrainDataError(f"the {name} split is empty ({paths.preprocessed / 'index.csv'})")
    if train_rows["label"].nunique() < 2:
        raise TrainDataError(f"the train split holds one class only ({sorted(train_rows['label'].unique())}): "
                             "a classifier needs both")
    train_set = TensorSet(train_rows, paths.preprocessed, shape, params.augment, params.seed, params.shift,
                          params.intensity, params.zoom)
    val_set = TensorSet(val_rows, paths.preprocessed, shape)

    torch.manual_seed(params.seed)
    model = build_model(model_params).to(device)
    config = {"model": model.config, "train": asdict(params), "preprocess": dict(preprocess),
              "tensors_version": (provenance or {}).get("tensors_version", "unknown"), "world_size": dist.world}
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    pos_weight = torch.tensor(params.pos_weight, device=device) if params.pos_weight is not None else None

    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val_auc": None, "val_loss": None}
    start_epoch, run_id = 1, None
    ckpt_path = paths.checkpoints / LAST
    state = resume_state(ckpt_path, config, resume)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        history, best, run_id = state["history"], state["best"], state.get("run_id")
        start_epoch = int(state["epoch"]) + 1
        log.info("resuming from %s after epoch %d", ckpt_path, start_epoch - 1)
    resumed_from = start_epoch - 1

    ddp_model = wrap_model(model, dist, device)
    micro = params.micro_batch_size or params.batch_size
    from torch.utils.data import DataLoader

    since_best = sum(1 for h in history if h["epoch"] > best["epoch"])
    stopped_early = since_best >= params.patience  # a run killed after its last checkpoint

    tracker = None
    if mlflow_params is not None and dist.main:
        datasets = {name: (rows[[c for c in ("scan_id", "label", "hospital") if c in rows]].reset_index(drop=True),
                           str(paths.preprocessed)) for name, rows in (("training", train_rows), ("validation", val_rows))}
        tracker = MlflowRun(mlflow_params, run_id, config, {**(provenance or {}), "git_commit": git_commit}, datasets)
        run_id = tracker.run_id
    epochs_run = start_epoch - 1
    for epoch in range(start_epoch, params.epochs + 1):
        if stopped_early:
            break
        train_set.epoch = epoch
        # This process's micro-batches, step by step (an empty share still joins the all-reduce).
        plan = step_plan(len(train_set), params.batch_size, params.micro_batch_size, params.seed, epoch,
                         dist.rank, dist.world)
        loader = iter(DataLoader(train_set, batch_sampler=loader_batches(plan), num_workers=params.workers,
                                 collate_fn=collate))
        model.train()
        loss_sum, seen = 0.0, 0
        seen_logits, seen_labels = [], []  # this epoch's training scores (train AUC; one process)
        meter = bar(total=len(plan), desc=f"epoch {epoch}/{params.epochs}", unit="step", progress=progress and dist.main,
                    leave=False)
        for s, (n_step, chunks) in enumerate(plan):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(params, epoch, s, len(plan))
            optimizer.zero_grad(set_to_none=True)
            for j, chunk in enumerate(chunks):
                if chunk:
                    x, y, _ = next(loader)
                else:
                    x = torch.zeros((0, *shape))
                    y = torch.zeros((0,))
                sync = contextlib.nullcontext() if (dist.world == 1 or j == len(chunks) - 1) else ddp_model.no_sync()
                with sync:
                    with autocast():
                        logits = ddp_model(x.to(device)).float().squeeze(1)
                        loss = F.binary_cross_entropy_with_logits(logits, y.to(device), pos_weight=pos_weight,
                                                                  reduction="sum")
                    scaler.scale(loss * (dist.world / n_step)).backward()
                loss_sum += float(loss.detach())
                seen += len(chunk)
                seen_logits.append(logits.detach().cpu().numpy())
                seen_labels.append(y.numpy())
            scaler.step(optimizer)
            scaler.update()
            meter.update(1)
        meter.close()
        train_loss = all_reduce_mean(loss_sum, seen, dist)

        logits, labels = score_set(model, val_set, micro, device, autocast)
        val_loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)))
        val_auc = _auc(labels, sigmoid(logits))
        train_auc = _auc(np.concatenate(seen_labels), sigmoid(np.concatenate(seen_logits))) if dist.world == 1 else None
        row = {"epoch": epoch, "train_loss": train_loss, "train_auc": train_auc, "val_loss": val_loss,
               "val_auc": val_auc}
        history.append(row)
        better = best["epoch"] == 0 or _better(val_auc, val_loss, best)
        if better:
            best = {"epoch": epoch, "val_auc": val_auc, "val_loss": val_loss}
            since_best = 0
        else:
            since_best += 1
        if dist.main:
            paths.checkpoints.mkdir(parents=True, exist_ok=True)
            if better:  # with the validation logits: the model's reference score distribution
                save_checkpoint(best_state(model, config, epoch, torch.from_numpy(logits)), paths.checkpoints / BEST)
            save_checkpoint(last_state(model, optimizer, scaler, epoch, history, best, config, run_id), ckpt_path)
            if tracker:
                tracker.log_epoch(row)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val AUC %s", epoch, train_loss, val_loss,
                 "n/a" if val_auc is None else f"{val_auc:.3f}")
        epochs_run = epoch
        stopped_early = since_best >= params.patience and epoch < params.epochs

    result = TrainResult(best_epoch=int(best["epoch"]), best={k: best[k] for k in ("val_auc", "val_loss")},
                         epochs_run=epochs_run, stopped_early=stopped_early, resumed_from=resumed_from,
                         history=history, run_id=run_id)
    if dist.main:
        write_outputs(paths, config, result, provenance or {}, train_rows, val_rows, git_commit)
        if tracker:
            best_model = build_model(model_params)
            best_model.load_state_dict(load_checkpoint(paths.checkpoints / BEST)["model"])
            tracker.finish(paths, result, shape, best_model.eval())
        mark_finished(ckpt_path)  # a later run starts afresh: only an interrupted run resumes
    barrier(dist)
    return result


def score_set(model, data: TensorSet, batch: int, device, autocast) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every sample of ``data`` in order, ``batch`` at a time: ``(logits (N,), labels (N,))``."""
    from covidnet.model.inference import score

    model.eval()
    batches = (collate([data[i] for i in range(s, min(s + batch, len(data)))])[0] for s in range(0, len(data), batch))
    logits, _ = score(model, batches, device, autocast)
    return logits, data.labels.copy()


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if len(np.unique(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _better(auc: float | None, loss: float, best: dict) -> bool:
    if auc is not None and (best["val_auc"] is None or auc > best["val_auc"]):
        return True
    if auc == best["val_auc"] or (auc is None and best["val_auc"] is None):
        return loss < best["val_loss"]
    return False


def _bar(show: bool, total: int, desc: str):

    return bar(total=total, desc=desc, unit="step", progress=show, leave=False)


def learning_rate(params: TrainParams, epoch: int, step: int, steps: int) -> float:
    """The learning rate of ``step`` (0-based) of ``epoch`` (1-based, ``steps`` per epoch).

    ``constant``: ``params.learning_rate``. ``cosine``: half a cosine from it down to
    ``learning_rate * lr_floor`` at the last step of ``params.epochs`` (a function of the step
    alone, so a resumed run goes on exactly where it stopped).
    """
    if params.schedule == "constant":
        return params.learning_rate
    t = ((epoch - 1) * steps + step) / max(1, params.epochs * steps - 1)
    floor = params.lr_floor
    return params.learning_rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))
