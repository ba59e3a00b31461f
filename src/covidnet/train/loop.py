"""The ``train`` stage: COVIDNet on the preprocessed tensors, as the paper trained it.

Adam (learning rate from params; paper 0.001), binary cross-entropy on the COVID-19 logit,
batch size from params (paper 8), no augmentation by default (the paper used none). The
validation split is scored every epoch (loss and AUC); the best epoch by AUC is kept, and
training stops early after ``patience`` epochs without a better AUC.

Batches and exactness:

* ``batch_size`` is the *global* batch of one optimiser step. Each process takes its share
  of it (``torchrun``: rank ``r`` of ``W`` takes samples ``r, r + W, ...``) and runs it in
  micro-batches of ``micro_batch_size`` (gradient accumulation, for memory). The loss is
  the per-sample sum divided by the global batch size, so one process, several micro-batches
  or several processes compute the same gradient (up to floating-point order); COVIDNet
  uses instance or group norm, which see one sample at a time, so no statistic changes with
  the split.
* The sample order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, and
  a checkpoint (weights, optimiser, RNG state, history) is written after every epoch, so a
  run killed at any point and restarted ends with the same weights as an uninterrupted run
  (on CPU, where the kernels are deterministic; 3D convolutions on CUDA are not, so GPU
  runs agree only within floating-point noise).

The model folder holds the best weights, the model card and the model's reference profile
(:mod:`covidnet.monitor.reference`): the QC values of its training scans and its validation scores at
the best epoch, what serving and the monitor compare live traffic with.

Several GPUs: ``torchrun --nproc_per_node=N -m covidnet.cli.main train`` (DDP, NCCL on GPUs,
gloo on CPUs). Several nodes: ``torchrun --nnodes=M --node_rank=K --rdzv_endpoint=HOST:PORT
--nproc_per_node=N -m covidnet.cli.main train`` on each node (or a Kubeflow PyTorchJob, which sets
the same environment).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.atomic import atomic_path, write_csv, write_json
from covidnet.data.cohort import LABEL_TO_INT
from covidnet.model.card import MODEL_ARTIFACT, ModelCard
from covidnet.model.inference import sigmoid
from covidnet.errors import CovidnetError

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class TrainParams:
    """The ``train`` section of params.yaml."""

    seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    patience: int
    micro_batch_size: int | None
    pos_weight: float | None
    workers: int
    precision: str
    augment: bool
    device: str

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"train.micro_batch_size must be >= 1 or null, got {self.micro_batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision {self.precision!r} is not one of fp32, bf16, fp16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device {self.device!r} is not one of auto, cpu, cuda")


@dataclass(frozen=True)
class TrainPaths:
    """Where training reads and writes."""

    preprocessed: Path
    model: Path
    checkpoints: Path
    report: Path


@dataclass
class TrainResult:
    """What a training run produced."""

    best_epoch: int
    best: dict[str, float | None]
    epochs_run: int
    stopped_early: bool
    resumed_from: int
    history: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None

    def summary(self) -> str:
        auc = "n/a" if self.best["val_auc"] is None else f"{self.best['val_auc']:.3f}"
        resumed = f" (resumed after epoch {self.resumed_from})" if self.resumed_from else ""
        return (f"best epoch {self.best_epoch} of {self.epochs_run} (validation AUC {auc}, loss "
                f"{self.best['val_loss']:.4f}){resumed}; MLflow run {self.run_id}")


class TrainDataError(CovidnetError, ValueError):
    """The training data cannot be used; the message names the scan or the split."""


class ResumeError(CovidnetError, RuntimeError):
    """A checkpoint of another configuration; the message lists the settings that differ."""


# --------------------------------------------------------------------------- data


class TensorSet:
    """The stored tensors of one split: ``x`` ``(1, D, C, C)`` float32 and ``y`` 0/1.

    Every tensor is checked for its shape and for non-finite values as it is loaded.
    """

    def __init__(self, index: pd.DataFrame, root: Path, shape: tuple[int, ...], augment: bool = False,
                 seed: int = 0) -> None:
        self.rows = index.reset_index(drop=True)
        self.root = Path(root)
        self.shape = tuple(shape)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        bad = sorted(set(self.rows["label"]) - set(LABEL_TO_INT))
        if bad:
            raise TrainDataError(f"{root / 'index.csv'}: unknown label(s) {bad}")
        self.labels = self.rows["label"].map(LABEL_TO_INT).to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        row = self.rows.iloc[i]
        path = self.root / row["path"]
        try:
            x = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise TrainDataError(f"scan {row['scan_id']}: cannot load {path}: {exc}") from exc
        if x.shape != self.shape:
            raise TrainDataError(f"scan {row['scan_id']}: tensor shape {x.shape} != expected {self.shape} ({path})")
        if not np.isfinite(x).all():
            raise TrainDataError(f"scan {row['scan_id']}: tensor has {int((~np.isfinite(x)).sum())} NaN/inf values ({path})")
        if self.augment:
            # Left-right flip, decided by (seed, epoch, sample) alone: the same in any worker.
            g = np.random.default_rng([self.seed, self.epoch, i])
            if g.random() < 0.5:
                x = np.ascontiguousarray(x[..., ::-1])
        return torch.from_numpy(x), torch.tensor(self.labels[i]), i


def _collate(items):
    import torch

    xs, ys, idx = zip(*items)
    return torch.stack(xs), torch.stack(ys), list(idx)


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


# --------------------------------------------------------------------------- checkpoints


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diff(a, b, name + ".")
        elif a != b:
            diffs.append(f"{name}: checkpoint {a!r}, now {b!r}")
    return diffs


def _save(obj: dict, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- the loop


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if len(np.unique(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def score_set(model, data: TensorSet, batch: int, device, autocast) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every sample of ``data`` in order: ``(logits (N,), labels (N,))``."""
    from covidnet.model.inference import score

    model.eval()
    batches = (_collate([data[i] for i in range(s, min(s + batch, len(data)))])[0] for s in range(0, len(data), batch))
    logits, _ = score(model, batches, device, autocast)
    return logits, data.labels.copy()


def train_model(index: pd.DataFrame, paths: TrainPaths, model_params, params: TrainParams,
                preprocess: dict[str, Any], *, resume: str = "auto", mlflow_params=None,
                provenance: dict[str, str] | None = None, progress: bool = True) -> TrainResult:
    """Train COVIDNet; write the best model, the curve, the metrics and checkpoints.

    Args:
        index: the preprocessed index (``scan_id, label, split, path``...).
        paths: where the tensors are and where outputs go.
        model_params: :class:`covidnet.model.network.ModelParams`.
        params: the train section.
        preprocess: the preprocessing parameters (saved with the model so serving applies
            the same transform); ``depth`` and ``crop`` give the tensor shape.
        resume: ``auto`` resumes from ``paths.checkpoints`` when its configuration matches
            (and starts afresh, saying so, when it does not); ``always`` must resume;
            ``never`` starts afresh.
        mlflow_params: :class:`covidnet.tracking.MlflowParams`, or None for no tracking.
        provenance: tags for the run (git commit, data version, synthetic).
        progress: progress bars on stderr.

    Raises:
        TrainDataError: an empty or single-class training split, a bad tensor.
        ResumeError: ``resume="always"`` and no checkpoint, or one of another configuration.
    """
    import torch
    import torch.nn.functional as F

    from covidnet.model.builders import build_model

    if resume not in ("auto", "always", "never"):
        raise ValueError(f"resume must be auto, always or never, got {resume!r}")
    device_kind = "cuda" if params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = _init_distributed(device_kind)
    device = torch.device(f"cuda:{dist.local_rank}" if device_kind == "cuda" else "cpu")
    if device_kind == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
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
    train_set = TensorSet(train_rows, paths.preprocessed, shape, params.augment, params.seed)
    val_set = TensorSet(val_rows, paths.preprocessed, shape)

    torch.manual_seed(params.seed)
    model = build_model(model_params).to(device)
    config = {"model": model.config, "train": asdict(params), "preprocess": dict(preprocess),
              "data_version": (provenance or {}).get("data_version", "unknown"), "world_size": dist.world}
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    pos_weight = torch.tensor(params.pos_weight, device=device) if params.pos_weight is not None else None

    history: list[dict[str, Any]] = []
    best = {"epoch": 0, "val_auc": None, "val_loss": None}
    start_epoch, run_id, logged = 1, None, False
    ckpt_path = paths.checkpoints / CHECKPOINT
    if resume != "never" and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        diffs = _config_diff({k: v for k, v in state["config"].items() if k != "world_size"},
                             {k: v for k, v in config.items() if k != "world_size"})
        if diffs:
            if resume == "always":
                raise ResumeError(f"{ckpt_path} was written with other settings:\n  " + "\n  ".join(diffs))
            log.warning("not resuming from %s: other settings (%s); starting afresh", ckpt_path, "; ".join(diffs))
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"])
            history, best, run_id = state["history"], state["best"], state.get("run_id")
            logged = bool(state.get("logged", False))
            start_epoch = int(state["epoch"]) + 1
            log.info("resuming from %s after epoch %d", ckpt_path, start_epoch - 1)
    elif resume == "always":
        raise ResumeError(f"{ckpt_path}: no checkpoint to resume from")
    resumed_from = start_epoch - 1

    ddp_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device_kind == "cuda" else None)

    micro = params.micro_batch_size or params.batch_size
    from torch.utils.data import DataLoader

    since_best = sum(1 for h in history if h["epoch"] > best["epoch"])
    stopped_early = since_best >= params.patience  # a run killed after its last checkpoint
    finished = logged and (stopped_early or start_epoch > params.epochs)  # the same run, already complete

    tracker = None
    if mlflow_params is not None and dist.main and not finished:
        tracker = _MlflowRun(mlflow_params, run_id, config, provenance or {})
        run_id = tracker.run_id
    epochs_run = start_epoch - 1
    for epoch in range(start_epoch, params.epochs + 1):
        if stopped_early:
            break
        train_set.epoch = epoch
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(params.seed * 100_003 + epoch))
        steps = [order[s : s + params.batch_size] for s in range(0, len(order), params.batch_size)]
        # This process's micro-batches, step by step (an empty share still joins the all-reduce).
        plan = []
        for step in steps:
            mine = step[dist.rank :: dist.world].tolist()
            chunks = [mine[c : c + micro] for c in range(0, len(mine), micro)] or [[]]
            plan.append((len(step), chunks))
        flat = [c for _, chunks in plan for c in chunks if c]
        loader = iter(DataLoader(train_set, batch_sampler=flat, num_workers=params.workers, collate_fn=_collate))
        model.train()
        loss_sum, seen = 0.0, 0
        bar = _bar(progress and dist.main, len(plan), f"epoch {epoch}/{params.epochs}")
        for n_step, chunks in plan:
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
            scaler.step(optimizer)
            scaler.update()
            bar.update(1)
        bar.close()
        train_loss = _all_reduce_mean(loss_sum, seen, dist)

        logits, labels = score_set(model, val_set, micro, device, autocast)
        val_loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)))
        val_auc = _auc(labels, sigmoid(logits))
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auc": val_auc}
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
                _save({"model": model.state_dict(), "config": config, "epoch": epoch,
                       "val_logits": torch.from_numpy(logits)}, paths.checkpoints / BEST)
            _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                   "rng": torch.get_rng_state(), "epoch": epoch, "history": history, "best": best,
                   "config": config, "run_id": run_id}, ckpt_path)
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
        _write_outputs(paths, config, result, provenance or {}, train_rows, val_rows)
        if tracker:
            best_model = build_model(model_params)
            best_model.load_state_dict(load_checkpoint(paths.checkpoints / BEST)["model"])
            tracker.finish(paths, result, shape, best_model.eval())
            state = load_checkpoint(ckpt_path)
            _save({**state, "logged": True}, ckpt_path)  # a rerun with these settings reuses this run
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
    return result


def _better(auc: float | None, loss: float, best: dict) -> bool:
    if auc is not None and (best["val_auc"] is None or auc > best["val_auc"]):
        return True
    if auc == best["val_auc"] or (auc is None and best["val_auc"] is None):
        return loss < best["val_loss"]
    return False


def _all_reduce_mean(total: float, count: int, dist: _Dist) -> float:
    if dist.world > 1:
        import torch
        import torch.distributed as tdist

        t = torch.tensor([total, float(count)], dtype=torch.float64)
        tdist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def _bar(show: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=not show)


def _write_outputs(paths: TrainPaths, config: dict, result: TrainResult, provenance: dict,
                   train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> None:
    """The model folder (best weights, model card, reference profile), the metrics and the curve."""
    best = load_checkpoint(paths.checkpoints / BEST)
    with atomic_path(paths.model, directory=True) as tmp:
        ModelCard.write_weights(tmp, best["model"])
        references = _write_reference(tmp, paths.preprocessed / "qc.csv", train_rows, val_rows,
                                      best.get("val_logits"))
        ModelCard(config=config, best_epoch=result.best_epoch, val_auc=result.best["val_auc"],
                  val_loss=result.best["val_loss"], epochs_run=result.epochs_run, mlflow_run_id=result.run_id,
                  provenance=dict(provenance), **references).write(tmp)
    paths.report.mkdir(parents=True, exist_ok=True)
    write_json(paths.report / "metrics.json", {
        "best_epoch": result.best_epoch, "val_auc": result.best["val_auc"], "val_loss": result.best["val_loss"],
        "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "synthetic": provenance.get("synthetic") == "true",
    })
    write_csv(paths.report / "curve.csv", pd.DataFrame(result.history))


def _write_reference(model_dir: Path, qc_csv: Path, train_rows: pd.DataFrame, val_rows: pd.DataFrame,
                     val_logits) -> dict[str, Any]:
    """The reference profile (:mod:`covidnet.monitor.reference`) into ``model_dir``; the card keys naming it."""
    from covidnet.monitor.reference import reference_tables

    qc = pd.read_csv(qc_csv, dtype={"scan_id": str}) if qc_csv.is_file() else None
    if qc is None:
        log.warning("%s not found: the model gets no QC reference (serving cannot flag or monitor QC drift)", qc_csv)
    if val_logits is None:
        log.warning("the best checkpoint holds no validation logits (written before reference profiles): "
                    "the model gets no score reference")
    scores = None if val_logits is None else sigmoid(val_logits.numpy())
    qc_table, score_table = reference_tables(qc, train_rows["scan_id"].tolist(), val_rows, scores)
    card: dict[str, Any] = {"qc_reference": None, "score_reference": None}
    for key, table, name in (("qc_reference", qc_table, ModelCard.QC_REFERENCE),
                             ("score_reference", score_table, ModelCard.SCORE_REFERENCE)):
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        if table is not None:
            table.to_csv(model_dir / name, index=False)
            card[key] = name
    return card


class _MlflowRun:
    """One MLflow run across resumes: params once, metrics per epoch, the model at the end."""

    def __init__(self, mlflow_params, run_id: str | None, config: dict, provenance: dict) -> None:
        import mlflow

        from covidnet.tracking import configure, flatten

        experiment = configure(mlflow_params)
        self.mlflow = mlflow
        run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: v for k, v in flatten("", config).items()})
            mlflow.set_tags({f"covidnet.{k}": v for k, v in provenance.items()})

    def log_epoch(self, row: dict) -> None:
        metrics = {k: float(v) for k, v in row.items() if k != "epoch" and v is not None and math.isfinite(v)}
        self.mlflow.log_metrics(metrics, step=int(row["epoch"]))

    def finish(self, paths: TrainPaths, result: TrainResult, shape: tuple[int, ...], model) -> None:
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        example = np.zeros((1, *shape), dtype=np.float32)
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape), "ct")]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "logit")]))
        self.mlflow.log_metrics({"best_val_auc": result.best["val_auc"] if result.best["val_auc"] is not None
                                 else float("nan"), "best_val_loss": result.best["val_loss"],
                                 "best_epoch": result.best_epoch})
        self.mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                      serialization_format="pt2")
        # The weights, the model card and the preprocessing parameters, for serving.
        self.mlflow.log_artifacts(str(paths.model), artifact_path=MODEL_ARTIFACT)
        self.mlflow.end_run()
