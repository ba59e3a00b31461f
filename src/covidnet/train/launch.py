"""Training in one pod over all its GPUs: ``torchrun ... -m covidnet.cli.main train``.

The train stage itself (:func:`covidnet.train.loop.train_model`) is DistributedDataParallel-ready: under
``torchrun`` each process takes its share of the global batch and rank 0 writes the outputs.
This module decides how many processes a pod runs and launches them:

* :func:`resolve_nproc`: ``auto`` is the number of visible GPUs (``CUDA_VISIBLE_DEVICES``
  decides what is visible), and one process on a CPU-only pod. A number is taken as given;
  on CPUs several processes use gloo (how the tests exercise it).
* :func:`train_command` / :func:`torchrun_command`: the exact command, shared with the
  Kubeflow adapter's PyTorchJob across nodes, so both run the same thing.
* :func:`train_in_pod`: one process runs in this process (no launcher); several run under
  ``torchrun`` with the params written to a file. Checkpoints go to a temporary folder (a
  retried task starts afresh) or, given ``checkpoint_dir`` (a folder, or an ``s3://`` prefix
  mirrored while training runs), to a place keyed by the run's inputs, so that a retried task
  with the same inputs resumes after its last finished epoch.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.errors import CovidnetError
from covidnet.params import ParamsError

log = logging.getLogger(__name__)

#: ``torchrun`` as this interpreter runs it (a pod's PATH need not hold the console script).
TORCHRUN = (sys.executable, "-m", "torch.distributed.run")


class LaunchError(CovidnetError, RuntimeError):
    """A training launcher (torchrun, a PyTorchJob) failed; the message says how and why."""


def parse_nproc(value: int | str, key: str = "pipeline.train.nproc_per_node") -> int | str:
    """``"auto"`` or a positive process count (``4`` or ``"4"``); raise naming ``key`` otherwise."""
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and value != n):
        raise ParamsError(f"{key}: {value!r} is neither 'auto' nor a process count >= 1")
    return n


def resolve_nproc(value: int | str, device: str = "auto", key: str = "pipeline.train.nproc_per_node") -> int:
    """Processes to run in this pod.

    Args:
        value: ``"auto"`` or a count (``4`` or ``"4"``), as :func:`parse_nproc` reads it.
        device: the ``train.device`` setting (``auto``, ``cpu``, ``cuda``).
        key: the params key or pipeline parameter ``value`` came from (for errors).

    Returns:
        ``auto``: the visible GPU count when ``device`` allows CUDA and there is a GPU,
        else 1. A count: itself, after checking that a CUDA run has that many GPUs.

    Raises:
        ParamsError: not ``auto`` nor a count >= 1, or more CUDA processes than GPUs.
    """
    import torch

    n = parse_nproc(value, key)
    gpus = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 0
    if n == "auto":
        return max(gpus, 1)
    if gpus and n > gpus:
        raise ParamsError(f"{key}: {n} processes but this pod sees {gpus} GPU(s); one process per GPU")
    if device == "cuda" and not gpus:
        raise ParamsError("train.device: 'cuda' but this pod sees no GPU")
    return int(n)


def check_checkpoint_dir(value: str, key: str) -> None:
    """Raise unless ``value`` is ``""``, an absolute folder or an ``s3://bucket/prefix``."""
    if value.startswith("s3://"):
        if not value[5:].split("/", 1)[0]:
            raise ParamsError(f"{key}: {value!r} names no bucket (s3://bucket/prefix)")
    elif value and not value.startswith("/"):
        raise ParamsError(f"{key}: {value!r} is neither an absolute folder of the train pod (e.g. on a PVC) nor an "
                          "s3://bucket/prefix, nor '' (no resume)")


def train_command(params_file: str | Path, profile: str, preprocessed: str | Path, model: str | Path,
                  checkpoints: str | Path, report: str | Path, resume: str = "auto") -> list[str]:
    """``-m covidnet.cli.main train ...``: the train stage's CLI on explicit paths (what torchrun runs)."""
    return ["-m", "covidnet.cli.main", "train", "--params", str(params_file), "--profile", profile,
            "--preprocessed", str(preprocessed), "--out", str(model), "--checkpoints", str(checkpoints),
            "--report", str(report), "--resume", resume, "-q"]


def torchrun_command(nnodes: int, nproc_per_node: int, train_args: list[str],
                     launcher: tuple[str, ...] = ("torchrun",)) -> list[str]:
    """``torchrun --nnodes=N --nproc-per-node=P <train_args>``.

    On several nodes the rendezvous (master address and port, this node's rank) comes from
    the environment torchrun reads (``PET_MASTER_ADDR``, ``PET_MASTER_PORT``,
    ``PET_NODE_RANK``), which the Training Operator sets in every PyTorchJob pod.
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"torchrun needs nnodes >= 1 and nproc_per_node >= 1, got {nnodes}, {nproc_per_node}")
    cmd = [*launcher, f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")  # a local rendezvous on a free port: no master address needed
    return cmd + list(train_args)


def checkpoint_key(params_text: str, profile: str, data_version: str) -> str:
    """A folder name for one training's checkpoints: the same inputs give the same key.

    A retried task (same params, profile and tensors) finds its checkpoints again; any other
    run gets another folder. :func:`covidnet.train.loop.train_model` still compares the saved
    settings before resuming.
    """
    digest = hashlib.sha256("\0".join((params_text, profile, data_version)).encode()).hexdigest()
    return f"train-{digest[:16]}"


def run_streaming(cmd: list[str], what: str, tail: int = 40, **kwargs: Any) -> None:
    """Run ``cmd`` with its stderr passed through; on failure raise with the last ``tail`` lines.

    Raises:
        LaunchError: ``what`` failed with its exit status and the end of its stderr.
    """
    log.info("%s: %s", what, " ".join(cmd))
    last: collections.deque[str] = collections.deque(maxlen=tail)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, **kwargs) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            last.append(line.rstrip("\n"))
        code = proc.wait()
    if code != 0:
        raise LaunchError(f"{what} exited with status {code}; the end of its stderr:\n" + "\n".join(last))


@dataclass(frozen=True)
class PodTrainResult:
    """What :func:`train_in_pod` ran and produced."""

    processes: int
    run_id: str | None
    checkpoints: str | None  # the persistent folder or s3:// prefix, or None for a temporary folder
    resumed_from: int | None = None  # the epoch resumed after (one process; None under torchrun)


def train_in_pod(params: dict[str, Any], params_text: str, paths: Any, nproc_per_node: int | str = "auto",
                 checkpoint_dir: str = "", sync_s: int = 60) -> PodTrainResult:
    """Train on ``paths.preprocessed`` with every process this pod should run.

    Args:
        params: merged params (``params_text`` with its profile applied).
        params_text: the params file's content (written to a file for torchrun's processes).
        paths: a :class:`covidnet.paths.Paths`; ``checkpoints`` is replaced as below.
        nproc_per_node: ``"auto"`` or a count (:func:`resolve_nproc`).
        checkpoint_dir: where checkpoints persist across tries of the task, under a
            :func:`checkpoint_key` of the inputs, resumed when present with the same settings:
            ``""``: nowhere (a temporary folder; every try starts afresh); a folder of the pod
            (a mounted PVC); or an ``s3://bucket/prefix``, downloaded first and mirrored while
            training runs, every ``sync_s`` seconds (:mod:`covidnet.train.checkpoint_sync`;
            the Kubeflow component passes ``pipeline.train.checkpoint_sync_s``).

    Raises:
        ParamsError: a bad process count or checkpoint location.
        LaunchError: torchrun failed (the message ends with the failing rank's stderr).
    """
    import contextlib
    import dataclasses

    from covidnet.model.card import ModelCard
    from covidnet.params import profile_name, section
    from covidnet.tracking import data_version, run_of
    from covidnet.train.params import TrainParams
    from covidnet.train.stage import run_train

    tparams = section(params, "train", TrainParams)
    nproc = resolve_nproc(nproc_per_node, tparams.device, key="nproc_per_node")
    check_checkpoint_dir(checkpoint_dir, "checkpoint_dir")
    profile = profile_name(params)
    with tempfile.TemporaryDirectory(prefix="covidnet-train-") as tmp:
        key = checkpoint_key(params_text, profile, data_version(paths.preprocessed)) if checkpoint_dir else ""
        mirror: Any = contextlib.nullcontext()
        location = None
        if checkpoint_dir.startswith("s3://"):
            from covidnet.train.checkpoint_sync import S3Mirror, download

            location = f"{checkpoint_dir.rstrip('/')}/{key}"
            folder, resume = Path(tmp) / "checkpoints", "auto"
            download(location, folder)
            mirror = S3Mirror(folder, location, sync_s)
        elif checkpoint_dir:
            folder, resume = Path(checkpoint_dir) / key, "auto"
            location = str(folder)
        else:
            folder, resume = Path(tmp) / "checkpoints", "never"
        if location:
            log.info("checkpoints in %s (a retried task resumes from them)", location)
        paths = dataclasses.replace(paths, checkpoints=folder)
        with mirror:
            if nproc == 1:
                result = run_train(params, paths, resume=resume, progress=False)
                return PodTrainResult(processes=1, run_id=result.run_id, checkpoints=location,
                                      resumed_from=result.resumed_from)
            params_file = Path(tmp) / "params.yaml"
            params_file.write_text(params_text)
            args = train_command(params_file, profile, paths.preprocessed, paths.model, folder, paths.train_report,
                                 resume)
            run_streaming(torchrun_command(1, nproc, args, launcher=TORCHRUN), f"torchrun ({nproc} processes)")
    return PodTrainResult(processes=nproc, run_id=run_of(paths.train_report, ModelCard.digest(paths.model)),
                          checkpoints=location)
