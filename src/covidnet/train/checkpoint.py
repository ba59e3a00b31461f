"""Checkpoints: the two files, their keys, atomic writes, and whether a run resumes from one.

A training's checkpoint folder holds::

    last.pt   after every epoch: ``model``, ``optimizer``, ``scaler`` (state dicts), ``rng``
              (the CPU RNG state), ``epoch``, ``history``, ``best``, ``config``, ``run_id``,
              and ``finished`` (True once the run wrote its outputs: it is not resumed again)
    best.pt   at each better epoch: ``model``, ``config``, ``epoch``, ``val_logits`` (N,)

Both are written atomically, ``best.pt`` before ``last.pt`` (what
:mod:`covidnet.train.checkpoint_sync` relies on), and read with ``weights_only=True``. The
file names and keys are the checkpoint format: a checkpoint written by an older version
must still resume.

A run resumes only from a ``last.pt`` whose ``config`` matches its own, except for the
settings that cannot change the weights (:data:`NOT_COMPARED`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from covidnet.atomic import atomic_path
from covidnet.train.params import ResumeError

log = logging.getLogger(__name__)

#: The checkpoint of the last finished epoch (weights, optimiser, RNG, history): what a run resumes from.
LAST = "last.pt"
#: The weights of the best epoch so far, with their validation logits.
BEST = "best.pt"

#: How ``train_model`` may use a checkpoint: resume when it matches, must resume, never resume.
RESUME_MODES = ("auto", "always", "never")

#: Keys of ``config`` (dotted) that cannot change the weights: the number of processes (the
#: global batch is split exactly, :mod:`covidnet.train.plan`), of DataLoader workers (every
#: sample is the same in any worker) and of preprocessing processes (the tensors are the same).
#: Any other difference discards a checkpoint.
NOT_COMPARED = frozenset({"world_size", "train.workers", "preprocess.workers"})


def check_resume_mode(resume: str) -> None:
    """Raise ``ValueError`` unless ``resume`` is one of :data:`RESUME_MODES`."""
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be auto, always or never, got {resume!r}")


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (a temporary sibling, then a rename)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def last_state(model, optimizer, scaler, epoch: int, history: list[dict[str, Any]], best: dict[str, Any],
               config: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """The content of ``last.pt`` after ``epoch``; reads the CPU RNG state now."""
    import torch

    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch, "history": history, "best": best,
            "config": config, "run_id": run_id}


def best_state(model, config: dict[str, Any], epoch: int, val_logits) -> dict[str, Any]:
    """The content of ``best.pt``: the weights of ``epoch`` and its validation logits ``(N,)`` (a tensor)."""
    return {"model": model.state_dict(), "config": config, "epoch": epoch, "val_logits": val_logits}


def mark_finished(path: Path) -> None:
    """Record in ``last.pt`` that its run finished (its outputs are written): it is not resumed again."""
    state = load_checkpoint(path)
    save_checkpoint({**state, "finished": True}, path)


def config_diff(saved: dict[str, Any], current: dict[str, Any], ignore: frozenset[str] = NOT_COMPARED,
                prefix: str = "") -> list[str]:
    """The settings that differ between two configs, one line each, nested keys dotted.

    Args:
        saved: the checkpoint's ``config``.
        current: this run's.
        ignore: dotted keys left out (:data:`NOT_COMPARED`).
        prefix: the dotted path of ``saved`` and ``current`` (for the recursion).

    Returns:
        ``"train.learning_rate: checkpoint 0.001, now 0.01"``..., sorted by key; a key only
        one side has shows ``'<absent>'`` on the other.
    """
    diffs = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, ignore, name + ".")
        elif a != b:
            diffs.append(f"{name}: checkpoint {a!r}, now {b!r}")
    return diffs


def resume_state(path: Path, config: dict[str, Any], resume: str) -> dict | None:
    """The checkpoint to resume from, or None to start afresh.

    Args:
        path: the ``last.pt`` to resume from.
        config: this run's config, compared with the checkpoint's (:func:`config_diff`).
        resume: ``auto``: the checkpoint of an interrupted run when there is one and it
            matches (a mismatch is logged as a warning; a finished run's checkpoint is not
            resumed: forcing a stage retrains); ``always``: the checkpoint, which must exist,
            match and be of an interrupted run; ``never``: None.

    Raises:
        ValueError: ``resume`` is not one of :data:`RESUME_MODES`.
        ResumeError: ``resume="always"`` and no checkpoint, one of other settings (the
            message lists them), or one of a finished run.
    """
    check_resume_mode(resume)
    if resume == "never":
        return None
    if not path.is_file():
        if resume == "always":
            raise ResumeError(f"{path}: no checkpoint to resume from")
        return None
    state = load_checkpoint(path)
    diffs = config_diff(state["config"], config)
    if diffs:
        if resume == "always":
            raise ResumeError(f"{path} was written with other settings:\n  " + "\n  ".join(diffs))
        log.warning("not resuming from %s: other settings (%s); starting afresh", path, "; ".join(diffs))
        return None
    if state.get("finished") or state.get("logged"):  # "logged": how a finished run was marked before
        if resume == "always":
            raise ResumeError(f"{path}: its run finished (epoch {state['epoch']}): nothing to resume")
        log.info("%s is of a finished run: training afresh", path)
        return None
    return state
