"""What training takes and gives: the ``train`` params section, its paths, its result, its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidnet.errors import CovidnetError

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainParams:
    """The ``train`` section of params.yaml.

    Attributes:
        seed: seeds the initial weights and every epoch's sample order.
        epochs: the most epochs to train.
        batch_size: the global batch of one optimiser step (paper: 8).
        learning_rate: Adam's learning rate (paper: 0.001).
        patience: stop after this many epochs without a better validation AUC.
        micro_batch_size: samples per forward pass (gradient accumulation), or None for the
            whole share of a step.
        pos_weight: BCE weight of the positive (COVID-19) class, or None.
        workers: DataLoader worker processes (0: load in the training process). Changes no
            result, so a checkpoint resumes under another value.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; GPU only).
        augment: left-right flips, decided by (seed, epoch, sample); with ``shift`` and
            ``intensity``, also random in-plane shifts and gain/offset (:class:`covidnet.train.data.TensorSet`).
        shift: the largest in-plane shift in voxels (0: none).
        intensity: the gain's largest deviation from 1 (0: none).
        zoom: the in-plane scale's largest deviation from 1 (0: none).
        weight_decay: Adam's L2 penalty (the paper: none).
        device: ``auto``, ``cpu`` or ``cuda``.
        schedule: the learning rate over the run: ``constant`` (the paper) or ``cosine``
            (from ``learning_rate`` down to ``learning_rate * lr_floor`` at the last epoch,
            stepped once per optimiser step).
        lr_floor: the cosine schedule's last learning rate, as a fraction of the first.
        threads: CPU threads of torch's operators (0: torch's default, one per core). A
            CPU run's weights depend on it (the order of float additions), so it is pinned for
            runs that must reproduce to the bit; it changes nothing on a GPU.
    """

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
    shift: int
    intensity: float
    zoom: float
    weight_decay: float
    device: str
    schedule: str
    lr_floor: float
    threads: int

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise ValueError(f"train.lr_floor must be in [0, 1], got {self.lr_floor}")
        if self.shift < 0 or self.intensity < 0 or self.weight_decay < 0 or not 0 <= self.zoom < 1:
            raise ValueError(f"train.shift, train.intensity and train.weight_decay must be >= 0 and train.zoom in "
                             f"[0, 1), got {self.shift}, {self.intensity}, {self.weight_decay}, {self.zoom}")
        if self.threads < 0:
            raise ValueError(f"train.threads must be >= 0, got {self.threads}")
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
    """Where training reads and writes.

    Attributes:
        preprocessed: the preprocess stage's folder (``index.csv``, ``qc.csv``, ``tensors/``).
        model: the model folder to write (:class:`covidnet.model.card.ModelCard`).
        checkpoints: ``last.pt`` and ``best.pt`` (:mod:`covidnet.train.checkpoint`).
        report: ``metrics.json`` and ``curve.csv``.
    """

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
