"""GPU check of every GPU goal of issue 15 in one run (for a lent accelerator): under 5 minutes, JSON.

Sections, in this order, each guarded (an error is recorded under its name and the next section
runs) and each given a share of ``--budget-s`` (a section stops starting new variants past its
share; later sections are skipped past the whole budget, and say so):

* ``infer``: the paper network (:func:`covidnet_paper`, eval, random init, the classifier
  rescaled so that the fp32 logits of the benchmark batch have standard deviation 2, a trained
  model's range, which makes the 1e-2 agreement a real test) at ``(B, 1, 64, 384, 384)``, batch
  8 and 1. The reference is eager fp32 with TF32 off (its outputs); then, timed (median of
  ``--iters`` after ``--warmup``, ``cudnn.benchmark`` on unless named):

  - ``eager_fp32``: fp32 weights, TF32 convolutions (torch's default);
  - ``eager_bf16``: bf16 autocast (the figure of issue 15: 15 ms per volume at batch 8);
  - ``bf16w_cl_ss_graph``: weights cast to bf16 (no autocast, so no cast per convolution),
    weights and input in ``channels_last_3d``, each affine instance norm as its statistics plus
    one fused scale-and-shift (``var_mean`` + ``addcmul``, which keep the channels-last layout;
    the model's ``group_norm`` form does not), captured once in a CUDA graph per batch size
    (fixed shapes; the input is copied into the graph's static buffer, the output copied out);
  - ``fp16w_cl_ss_graph``: the same in fp16 (8 times bf16's precision, same tensor cores);
  - ``bf16w_cl_ss``: ``bf16w_cl_ss_graph`` without the graph (what the graph gives);
  - ``bf16_cl``: bf16 autocast with ``channels_last_3d`` alone;
  - ``fp32_cl_ss_graph``: fp32 weights (TF32), channels-last, scale-and-shift norms, CUDA graph;
  - ``bf16w_graph``: bf16 weights in the model's own layout and norms, in a CUDA graph;
  - ``eager_bf16_nobench``: bf16 autocast, ``cudnn.benchmark`` off (what serving, evaluation
    and training's validation run now).

  Each: median and best seconds, ms per volume, TFLOP/s, peak memory, and the largest
  difference from the reference of the logits and of the probabilities (goal: <= 1e-2).
* ``monai``: the anchor, MONAI's ``DenseNet264(spatial_dims=3, in_channels=1, out_channels=1,
  norm="instance")``, eager fp32 and bf16 autocast, batch 1 and 8.
* ``train``: the paper profile's training (global batch 8, bf16) on synthetic volumes (random in
  [0, 1], COVID-19 ones with a brighter sphere), ``--train-steps`` steps per epoch
  (``--unique-volumes`` files on disk, rows repeating them) and 8 validation volumes:

  - ``bare_loop_settings``: the anchor, a bare bf16 step as the loop runs it (NCDHW,
    ``cudnn.benchmark`` off); ``bare_fast``: with ``cudnn.benchmark`` and ``channels_last_3d``;
  - ``loop``: :func:`covidnet.train.loop.train_model` itself, 3 epochs; the epoch time is read
    from the loop's own per-epoch log lines (epochs 2 and 3: validation, both checkpoints and the
    DataLoader start included), volumes/s and ``loop_over_bare``;
  - ``fast_loop``: the loop this script proposes for ``covidnet.train`` (not in the package:
    ``train/`` is another issue's), 3 epochs the same way: one persistent DataLoader
    (``pin_memory``, ``persistent_workers``, ``prefetch_factor``) and ``non_blocking`` copies,
    ``cudnn.benchmark`` and ``channels_last_3d``, validation at inference settings (no grad, bf16,
    the validation volumes kept on the GPU, batch 8), and checkpoints written off the critical
    path (the state copied into pinned host buffers, then ``torch.save`` to a temporary file and an
    atomic rename in a background thread; the next snapshot waits for the previous write);
    ``fast_loop_over_bare_fast``.
* ``serve``: one 300-slice 512 x 512 study (``write_benchmark_series``, zipped as ``covidnet
  predict`` sends it) end to end in-process, what the KServe model runs per request: safe unzip,
  series selection, preprocessing, QC, lesion fractions, the forward pass and the answers, with
  the bundle :func:`covidnet.serve.bundle.load_bundle` loads (``serve.device: cuda``; the network
  in fp32 as ``score`` runs it now: ``bundle``) and with the forward pass of ``infer``'s fastest
  agreeing variant at batch 1 (``fast``; ``bf16w_cl_ss_graph`` when ``infer`` did not run): latency p50 at concurrency 1 (goal <= 1.0 s) and throughput at
  concurrency 4 (a lock around the GPU forward; preprocessing overlaps), the preprocessing share,
  the two networks' probabilities.
* ``compile``: ``torch.compile(mode=--compile-mode)`` of the bf16-weights channels-last network
  (first-call compile time reported apart), batch 8 then 1, with its agreement; last, so the
  budget cuts it first.

3D convolutions on CUDA are non-deterministic; this measures speed and agreement only. The
network is untrained (timing and agreement do not depend on the weights' values).

``--dry-run`` runs every section's code on tiny sizes (a narrow network at 1x16x32x32, the
``tiny`` profile's training, a 40-slice 64 x 64 study), on the CPU when no GPU is present (CUDA
graphs are skipped there, ``torch.compile`` uses the ``eager`` backend): a check that the script
works, in seconds; its numbers mean nothing.

Prints JSON. Usage: ``python benchmarks/gpu_all.py [--dry-run] [--budget-s 285] [--sections
infer,monai,train,serve,compile] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# the single-GPU benchmark's helpers (benchmarks/ is on sys.path when a script in it runs)
from gpu import _peak_gib, _sync
from gpu import _reset_memory as _free

SECTIONS = ("infer", "monai", "train", "serve", "compile")
#: Each section's share of --budget-s (the rest of the total is what compile may use).
SHARES = {"infer": 0.30, "monai": 0.10, "train": 0.27, "serve": 0.15, "compile": 0.18}
PROB_TOL = 1e-2


# ----------------------------------------------------------------------------- helpers




def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 5), "best_s": round(min(times), 5)}


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": f"{type(exc).__name__}: {exc}"[:600], "where": traceback.format_exc(limit=-3)[-900:]}


class Budget:
    """Seconds since the start, against the whole budget and each section's share."""

    def __init__(self, total: float) -> None:
        self.start = time.perf_counter()
        self.total = total
        self.section_end = total

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def begin(self, name: str, names: list[str]) -> None:
        """Section ``name`` may run until its share of what is left, scaled over the sections still to run."""
        left = self.total - self.elapsed()
        shares = [SHARES[n] for n in names[names.index(name):]]
        self.section_end = self.elapsed() + left * SHARES[name] / sum(shares)

    def section_left(self) -> float:
        return self.section_end - self.elapsed()


class _ScaleShiftNorm(torch.nn.Module):
    """Inference form of an affine instance norm: statistics, then one fused scale-and-shift.

    Same parameters as :class:`covidnet.model.network._InstanceNorm3d` (swapped in by class, so
    the state dict is untouched); elementwise, so a ``channels_last_3d`` input stays so.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or not self.affine or x.dim() != 5:
            return torch.nn.functional.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        var, mean = torch.var_mean(x, dim=(2, 3, 4), keepdim=True, correction=0)
        scale = self.weight.float().view(1, -1, 1, 1, 1) * torch.rsqrt(var.float() + self.eps)
        shift = self.bias.float().view(1, -1, 1, 1, 1) - mean.float() * scale
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))


_SWAPPED: dict[type, type] = {}


def scale_shift_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``_InstanceNorm3d`` running as :class:`_ScaleShiftNorm` (in place)."""
    from covidnet.model.network import _InstanceNorm3d

    cls = _SWAPPED.setdefault(_InstanceNorm3d, type("_ScaleShiftInstanceNorm3d", (_ScaleShiftNorm, _InstanceNorm3d), {}))
    for m in model.modules():
        if isinstance(m, _InstanceNorm3d):
            m.__class__ = cls
    return model


class FastForward:
    """A network's inference forward with the fast-path options, for fixed input shapes.

    Args:
        model: a COVIDNet in eval mode (copied; the original is untouched).
        device: where it runs.
        weights: ``fp32``, or ``bf16`` / ``fp16``: the weights (and so the activations) cast to
            that type, no autocast (so no cast per convolution).
        channels_last: weights and input in ``channels_last_3d``.
        scale_shift: affine instance norms as :class:`_ScaleShiftNorm`.
        cuda_graph: capture one CUDA graph per input shape (needs CUDA).
        autocast: bf16 autocast (with ``weights="fp32"``).

    Calling it with ``(B, 1, D, H, W)`` (any device, float) returns ``(B, 1)`` float32 logits.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, *, weights: str = "fp32",
                 channels_last: bool = False, scale_shift: bool = False, cuda_graph: bool = False,
                 autocast: bool = False) -> None:
        model = copy.deepcopy(model).eval()
        if scale_shift:
            scale_shift_norms(model)
        # on the CPU (--dry-run) the weights stay fp32: torch's CPU kernels lack bf16/fp16 3D
        # pooling and convolutions, and there only the code path is checked
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(weights, torch.float32) \
            if device.type == "cuda" else torch.float32
        self.format = torch.channels_last_3d if channels_last else torch.contiguous_format
        model = model.to(self.dtype).to(memory_format=self.format)
        self.model, self.device = model, device
        self.autocast = autocast and weights == "fp32"
        if cuda_graph and device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.cuda_graph = cuda_graph
        self.graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self.lock = threading.Lock()

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return self.model(x)

    def _graph(self, shape: tuple[int, ...]):
        static_x = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(memory_format=self.format)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # cuDNN autotuning and allocator warm-up happen here, not in the capture
                self._eager(static_x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = self._eager(static_x)
        return graph, static_x, static_y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuda_graph:
            x = x.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=self.format)
            return self._eager(x).float()
        shape = tuple(x.shape)
        with self.lock:  # a graph's static buffers serve one caller at a time
            if shape not in self.graphs:
                self.graphs[shape] = self._graph(shape)
            graph, static_x, static_y = self.graphs[shape]
            static_x.copy_(x, non_blocking=True)
            graph.replay()
            return static_y.float().clone()


# ----------------------------------------------------------------------------- sections


def section_infer(ctx: dict) -> dict:
    device, shape, batches, flops = ctx["device"], ctx["shape"], ctx["batches"], ctx["flops"]
    budget: Budget = ctx["budget"]
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    with torch.device(device):
        model = ctx["build"]().eval()
    inputs = {b: torch.rand(b, *shape, generator=torch.Generator().manual_seed(b)).to(device) for b in batches}
    # reference: eager fp32, TF32 off
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False  # two forward passes: no autotuning for them
    try:
        with torch.no_grad():
            feats = model.forward_features(inputs[max(batches)])
            logits = model.classifier(feats).float()
            # classifier rescaled so the reference logits have std 2 (a trained model's range), mean 0
            std = float(logits.std()) or 1.0
            model.classifier.weight.mul_(2.0 / std)
            model.classifier.bias.sub_(float(model.classifier(feats).float().mean()))
            reference = {b: model(x).float() for b, x in inputs.items()}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    res: dict[str, Any] = {"reference": "eager fp32, TF32 off",
                           "reference_logits_b8": [round(float(v), 4) for v in reference[max(batches)][:, 0]]}
    # in order of importance: the budget cuts the last ones first
    variants: dict[str, dict[str, Any]] = {
        "eager_fp32": {},
        "eager_bf16": {"autocast": True},
        "bf16w_cl_ss_graph": {"weights": "bf16", "channels_last": True, "scale_shift": True, "cuda_graph": True},
        "fp16w_cl_ss_graph": {"weights": "fp16", "channels_last": True, "scale_shift": True, "cuda_graph": True},
        "bf16w_cl_ss": {"weights": "bf16", "channels_last": True, "scale_shift": True},
        "bf16_cl": {"autocast": True, "channels_last": True},
        "fp32_cl_ss_graph": {"channels_last": True, "scale_shift": True, "cuda_graph": True},
        "bf16w_graph": {"weights": "bf16", "cuda_graph": True},
        "eager_bf16_nobench": {"autocast": True, "_bench": False},
    }
    ctx["infer_model"] = model
    for name, opts in variants.items():
        if budget.section_left() <= 0:
            res[name] = {"skipped": "section budget spent"}
            continue
        opts = dict(opts)
        bench = opts.pop("_bench", True)
        if opts.get("cuda_graph") and not cuda:
            res[name] = {"skipped": "CUDA graphs need a CUDA device"}
            continue
        torch.backends.cudnn.benchmark = bench and cuda
        t0 = time.perf_counter()
        try:
            fwd = FastForward(model, device, **opts)
            out: dict[str, Any] = {"options": {**opts, "cudnn_benchmark": bench and cuda}}
            for b in sorted(batches, reverse=True):
                x = inputs[b]
                _free(device)
                t = _timed(lambda x=x: fwd(x), device, ctx["warmup"], ctx["iters"])
                y = fwd(x)
                t["ms_per_volume"] = round(1e3 * t["median_s"] / b, 2)
                t["tflops"] = round(flops * b / t["median_s"] / 1e12, 1)
                t["peak_gib"] = _peak_gib(device)
                t["max_abs_logit_diff"] = round(float((y - reference[b]).abs().max()), 5)
                t["max_abs_prob_diff"] = round(float((torch.sigmoid(y) - torch.sigmoid(reference[b])).abs().max()), 5)
                t["agrees"] = t["max_abs_prob_diff"] <= PROB_TOL
                out[f"batch{b}"] = t
            fwd = None  # its copy of the network and CUDA graphs go before the next variant
        except Exception as exc:  # noqa: BLE001 - recorded; the next variant runs
            out = _error(exc)
        out["variant_s"] = round(time.perf_counter() - t0, 1)
        res[name] = out
        _free(device)
    torch.backends.cudnn.benchmark = cuda
    ok = {k: v for k, v in res.items() if isinstance(v, dict) and all(
        isinstance(v.get(f"batch{b}"), dict) and v[f"batch{b}"]["agrees"] for b in batches)}
    if ok:
        big, small = max(batches), min(batches)
        best8 = min(ok, key=lambda k: ok[k][f"batch{big}"]["median_s"])
        best1 = min(ok, key=lambda k: ok[k][f"batch{small}"]["median_s"])
        ctx["serve_fast"] = {k: v for k, v in ok[best1]["options"].items() if k != "cudnn_benchmark"}
        res["best"] = {f"batch{big}": {"variant": best8, "ms_per_volume": ok[best8][f"batch{big}"]["ms_per_volume"],
                                       "goal_ms_per_volume": 5.0},
                       f"batch{small}": {"variant": best1, "latency_s": ok[best1][f"batch{small}"]["median_s"],
                                         "goal_latency_s": 0.025}}
    return res


def section_monai(ctx: dict) -> dict:
    from monai.networks.nets import DenseNet, DenseNet264

    device, shape, batches, flops = ctx["device"], ctx["shape"], ctx["batches"], ctx["flops"]
    torch.manual_seed(0)
    with torch.device(device):
        if ctx["dry_run"]:
            ref = DenseNet(spatial_dims=3, in_channels=1, out_channels=1, norm="instance", **ctx["small"])
        else:
            ref = DenseNet264(spatial_dims=3, in_channels=1, out_channels=1, norm="instance")
    ref = ref.eval()
    res: dict[str, Any] = {}
    for label, bf16 in (("eager_fp32", False), ("eager_bf16", True)):
        out: dict[str, Any] = {}
        for b in sorted(batches, reverse=True):
            x = torch.rand(b, *shape, device=device)

            def fwd(x=x) -> None:
                ctx_ = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
                with torch.no_grad(), ctx_:
                    ref(x)

            _free(device)
            t = _timed(fwd, device, ctx["warmup"], ctx["iters"])
            t["ms_per_volume"] = round(1e3 * t["median_s"] / b, 2)
            t["tflops"] = round(flops * b / t["median_s"] / 1e12, 1)
            out[f"batch{b}"] = t
        res[label] = out
    return res


def _write_volumes(root: Path, shape: tuple[int, ...], n_unique: int, n_train: int, n_val: int, seed: int = 0):
    """``n_unique`` synthetic float16 volumes on disk; an index of ``n_train`` + ``n_val`` rows cycling over them."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    (root / "tensors").mkdir(parents=True)
    _, d, h, w = shape
    zz, yy, xx = np.ogrid[:d, :h, :w]
    for i in range(n_unique):
        x = rng.random(shape, dtype=np.float32) * 0.5
        if i % 2:
            c = rng.integers([d // 4, h // 4, w // 4], [3 * d // 4, 3 * h // 4, 3 * w // 4])
            x[0][(zz - c[0]) ** 2 + ((yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 4 < max(1, d // 6) ** 2] += 0.3
        np.save(root / f"tensors/u{i:03d}.npy", x.astype(np.float16))
    rows = []
    for i in range(n_train + n_val):
        u = i % n_unique
        rows.append({"scan_id": f"s{i:04d}", "patient_id": f"p{i:04d}", "label": "covid" if u % 2 else "non_covid",
                     "split": "train" if i < n_train else "val", "path": f"tensors/u{u:03d}.npy"})
    return pd.DataFrame(rows)


def _bare_step(model_params, shape, batch, device, *, channels_last: bool, bench: bool, iters: int) -> dict:
    from covidnet.model.builders import build_model

    torch.backends.cudnn.benchmark = bench and device.type == "cuda"
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    with torch.device(device):
        model = build_model(model_params).train().to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,), device=device).float()
    amp = device.type == "cuda"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float().squeeze(1), y, reduction="sum")
        loss.backward()
        opt.step()

    _free(device)
    t = _timed(step, device, 2, iters)
    t["volumes_per_s"] = round(batch / t["median_s"], 2)
    t["peak_gib"] = _peak_gib(device)
    t.update(channels_last=channels_last, cudnn_benchmark=bench and device.type == "cuda", batch=batch)
    return t  # the network and optimiser go with this frame; the caller frees the cache


class _EpochTimes(logging.Handler):
    """Timestamps of the training loop's own ``epoch N: ...`` log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("epoch ") and record.args:
            epoch = record.args[0] if isinstance(record.args, tuple) else None
            if isinstance(epoch, int):
                self.times[epoch] = time.perf_counter()


class CheckpointWriter:
    """Checkpoints off the critical path: a snapshot into pinned host buffers, written by a thread.

    ``snapshot`` waits for the previous write, copies the tensors of ``state`` (nested dicts and
    lists) into reused host buffers (pinned on CUDA; ``non_blocking`` copies and one event), and
    hands them to a thread that ``torch.save``-s each target to a temporary sibling and renames
    it into place (atomic: a reader sees the old file or the new one, never half of one).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.write_s: list[float] = []

    def _host(self, key: str, t: torch.Tensor) -> torch.Tensor:
        buf = self.buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.device.type == "cuda")
            self.buffers[key] = buf
        buf.copy_(t.detach(), non_blocking=True)
        return buf

    def _copy(self, obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._host(key, obj)
        if isinstance(obj, dict):
            return {k: self._copy(v, f"{key}.{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v, f"{key}.{i}") for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def snapshot(self, targets: dict[Path, Callable[[dict], dict]], state: dict) -> None:
        self.wait()
        host = self._copy(state, "s")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the copies have landed

        def write() -> None:
            t0 = time.perf_counter()
            try:
                for path, select in targets.items():
                    tmp = path.with_name(path.name + ".tmp")
                    torch.save(select(host), tmp)
                    os.replace(tmp, path)
            except BaseException as exc:  # noqa: BLE001 - re-raised by wait()
                self.error = exc
            self.write_s.append(time.perf_counter() - t0)

        self.thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            raise self.error


def fast_train(index, root: Path, ckpt: Path, model_params, tp, shape, device, epochs: int, workers: int) -> dict:
    """The proposed training loop (see the module docstring); returns per-epoch times and losses."""
    from torch.utils.data import DataLoader

    from covidnet.model.builders import build_model
    from covidnet.train.data import TensorSet, collate

    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    fmt = torch.channels_last_3d
    train_set = TensorSet(index[index["split"] == "train"], root, shape)
    val_set = TensorSet(index[index["split"] == "val"], root, shape)
    torch.manual_seed(tp.seed)
    with torch.device(device):
        model = build_model(model_params).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=tp.learning_rate)
    batch = tp.micro_batch_size or tp.batch_size
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=False, num_workers=workers,
                        pin_memory=cuda, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                        collate_fn=collate, generator=torch.Generator().manual_seed(tp.seed))
    # validation volumes stay on the GPU (bf16): read once, scored at inference settings every epoch
    val_x = [collate([val_set[i] for i in range(s, min(s + batch, len(val_set)))])[0]
             .to(device, torch.bfloat16 if cuda else torch.float32).contiguous(memory_format=fmt)
             for s in range(0, len(val_set), batch)]
    val_y = torch.from_numpy(val_set.labels)
    writer = CheckpointWriter(device)
    ckpt.mkdir(parents=True, exist_ok=True)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    ends, history, best = [], [], None
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum, seen = torch.zeros((), device=device), 0
        for x, y, _ in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float().squeeze(1), y,
                                                                             reduction="sum")
            (loss / len(y)).backward()
            opt.step()
            loss_sum += loss.detach()
            seen += len(y)
        model.eval()
        with torch.no_grad(), amp:
            logits = torch.cat([model(x).float().squeeze(1) for x in val_x]).cpu()
        val_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, val_y))
        better = best is None or val_loss < best
        best = val_loss if better else best
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
        targets = {ckpt / "last.pt": lambda s: s}
        if better:
            targets[ckpt / "best.pt"] = lambda s: {"model": s["model"], "epoch": s["epoch"], "val_logits": logits}
        writer.snapshot(targets, state)
        history.append({"epoch": epoch, "train_loss": round(float(loss_sum) / max(seen, 1), 4),
                        "val_loss": round(val_loss, 4)})
        ends.append(time.perf_counter())
    writer.wait()
    del loader
    return {"ends": ends, "start": start, "history": history, "checkpoint_write_s": [round(s, 2) for s in writer.write_s],
            "checkpoint_ok": all((ckpt / n).is_file() for n in ("last.pt", "best.pt"))}


def section_train(ctx: dict) -> dict:
    from covidnet.model.builders import ModelParams
    from covidnet.params import load_params, section
    from covidnet.preprocess.params import PreprocessParams, params_dict
    from covidnet.train.loop import train_model
    from covidnet.train.params import TrainParams, TrainPaths

    device, budget = ctx["device"], ctx["budget"]
    params = load_params(ctx["params"], profile="tiny" if ctx["dry_run"] else "paper")
    mp = section(params, "model", ModelParams)
    pre = params_dict(section(params, "preprocess", PreprocessParams))
    shape = (1, int(pre["depth"]), int(pre["crop"]), int(pre["crop"]))
    workers = 0 if ctx["dry_run"] else min(8, os.cpu_count() or 1)
    tp = replace(section(params, "train", TrainParams), epochs=3, patience=4, workers=workers)
    batch = tp.micro_batch_size or tp.batch_size
    n_train = ctx["train_steps"] * tp.batch_size
    res: dict[str, Any] = {"profile": params["profile"], "input": [None, *shape], "batch_size": tp.batch_size,
                           "micro_batch_size": batch, "steps_per_epoch": ctx["train_steps"], "n_train": n_train,
                           "n_val": 8, "dataloader_workers": workers, "precision": tp.precision}
    with tempfile.TemporaryDirectory(prefix="covidnet-gpu-all-train-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        index = _write_volumes(root / "pre", shape, ctx["unique_volumes"], n_train, 8)
        res["write_volumes_s"] = round(time.perf_counter() - t0, 1)
        iters = ctx["iters"]
        for label, cl, bench in (("bare_loop_settings", False, False), ("bare_fast", True, True)):
            try:
                res[label] = _bare_step(mp, shape, batch, device, channels_last=cl, bench=bench, iters=iters)
            except Exception as exc:  # noqa: BLE001
                res[label] = _error(exc)
            _free(device)
        torch.backends.cudnn.benchmark = False  # as train.py leaves it
        handler = _EpochTimes()
        loop_log = logging.getLogger("covidnet.train.loop")
        level = loop_log.level
        loop_log.setLevel(logging.INFO)
        loop_log.addHandler(handler)
        paths = TrainPaths(preprocessed=root / "pre", model=root / "model", checkpoints=root / "ckpt",
                           report=root / "report")
        try:
            _free(device)
            t0 = time.perf_counter()
            result = train_model(index, paths, mp, tp, pre, resume="never", mlflow_params=None, progress=False)
            total = time.perf_counter() - t0
            ts = handler.times
            steady = [ts[e] - ts[e - 1] for e in sorted(ts) if e - 1 in ts]
            epoch_s = statistics.median(steady) if steady else total / max(1, result.epochs_run)
            res["loop"] = {"seconds": round(total, 1), "epochs_run": result.epochs_run,
                           "epoch_s": [round(s, 2) for s in steady], "epoch_s_median": round(epoch_s, 2),
                           "from": "the loop's epoch log lines" if steady else "whole call / epochs",
                           "volumes_per_s": round(n_train / epoch_s, 2), "peak_gib": _peak_gib(device),
                           "curve": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                                     for h in result.history]}
        except Exception as exc:  # noqa: BLE001
            res["loop"] = _error(exc)
        finally:
            loop_log.removeHandler(handler)
            loop_log.setLevel(level)
        _free(device)
        if budget.section_left() > 0:
            try:
                out = fast_train(index, root / "pre", root / "ckpt-fast", mp, tp, shape, device, 3, workers)
                ends = out.pop("ends")
                steady = [b - a for a, b in zip(ends, ends[1:])]
                epoch_s = statistics.median(steady)
                res["fast_loop"] = {**out, "epoch_s": [round(s, 2) for s in steady], "epoch_s_median": round(epoch_s, 2),
                                    "first_epoch_s": round(ends[0] - out.pop("start"), 2),
                                    "volumes_per_s": round(n_train / epoch_s, 2), "peak_gib": _peak_gib(device)}
            except Exception as exc:  # noqa: BLE001
                res["fast_loop"] = _error(exc)
        else:
            res["fast_loop"] = {"skipped": "section budget spent"}

    def ratio(a: str, b: str) -> float | None:
        va, vb = res.get(a, {}).get("volumes_per_s"), res.get(b, {}).get("volumes_per_s")
        return round(va / vb, 3) if va and vb else None

    res["ratios"] = {"loop_over_bare": ratio("loop", "bare_loop_settings"),
                     "fast_loop_over_bare_fast": ratio("fast_loop", "bare_fast"),
                     "fast_loop_over_bare_loop_settings": ratio("fast_loop", "bare_loop_settings"),
                     "bare_fast_over_bare_loop_settings": ratio("bare_fast", "bare_loop_settings"), "goal": 0.85}
    torch.backends.cudnn.benchmark = device.type == "cuda"
    return res


def section_serve(ctx: dict) -> dict:
    from covidnet.model.builders import ModelParams, build_model
    from covidnet.model.card import ModelCard
    from covidnet.model.inference import score
    from covidnet.params import load_params, override, section
    from covidnet.preprocess.params import PreprocessParams, params_dict
    from covidnet.serve.answer import results
    from covidnet.serve.bundle import load_bundle
    from covidnet.serve.client import zip_folder
    from covidnet.serve.study import study_zip
    from covidnet.synthetic.dicom_writer import write_benchmark_series

    device = ctx["device"]
    params = load_params(ctx["params"], profile="tiny" if ctx["dry_run"] else "paper")
    params = override(params, {"serve": {"device": device.type}})
    matrix, slices = (64, 40) if ctx["dry_run"] else (512, 300)
    res: dict[str, Any] = {"series": {"matrix": matrix, "slices": slices}, "device": device.type}
    with tempfile.TemporaryDirectory(prefix="covidnet-gpu-all-serve-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        net = build_model(section(params, "model", ModelParams))
        folder = root / "model"
        folder.mkdir()
        ModelCard.write_weights(folder, net.state_dict())
        ModelCard(config={"model": net.config, "preprocess": params_dict(section(params, "preprocess", PreprocessParams)),
                          "train": params["train"]}, provenance={"synthetic": "true"}).write(folder)
        t0 = time.perf_counter()
        series = write_benchmark_series(root / "study", matrix=matrix, n_slices=slices, seed=0)
        data = zip_folder(series)
        res["series"].update(zip_mb=round(len(data) / 2**20, 1), write_s=round(time.perf_counter() - t0, 1))
        bundle = load_bundle(folder, params)
        res["preprocess"] = {k: getattr(bundle.preprocess, k) for k in ("depth", "size", "crop", "decode_workers")}
        cuda = device.type == "cuda"
        options = ctx.get("serve_fast") or {"weights": "bf16", "channels_last": True, "scale_shift": True,
                                            "cuda_graph": cuda}
        res["fast_options"] = options
        fast = FastForward(bundle.net, device, **options)
        gpu_lock = threading.Lock()

        def request(kind: str) -> dict:
            t0 = time.perf_counter()
            studies = study_zip(data, bundle)
            t1 = time.perf_counter()
            x = torch.from_numpy(np.stack([s.tensor for s in studies]))
            with gpu_lock:
                if kind == "bundle":
                    logits, _ = score(bundle.net, [x], bundle.device)
                else:
                    logits = fast(x.pin_memory() if cuda else x)[:, 0].cpu().numpy()
            answers = results(logits, bundle, [s.info for s in studies])
            t2 = time.perf_counter()
            return {"s": t2 - t0, "preprocess_s": t1 - t0, "probability": answers[0]["covid19_probability"]}

        for kind in ("bundle", "fast"):
            try:
                request(kind)  # warm-up: cuDNN, the CUDA graph, the decoding processes
                c1 = [request(kind) for _ in range(ctx["serve_requests"])]
                n4 = 2 * ctx["serve_requests"]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(4) as pool:
                    c4 = list(pool.map(request, [kind] * n4))
                wall = time.perf_counter() - t0
                res[kind] = {
                    "c1_p50_s": round(statistics.median(r["s"] for r in c1), 3),
                    "c1_max_s": round(max(r["s"] for r in c1), 3),
                    "c1_preprocess_p50_s": round(statistics.median(r["preprocess_s"] for r in c1), 3),
                    "c4_p50_s": round(statistics.median(r["s"] for r in c4), 3),
                    "c4_throughput_rps": round(n4 / wall, 2),
                    "probability": round(c1[0]["probability"], 5),
                }
            except Exception as exc:  # noqa: BLE001
                res[kind] = _error(exc)
        if all("probability" in res.get(k, {}) for k in ("bundle", "fast")):
            res["probability_diff"] = round(abs(res["bundle"]["probability"] - res["fast"]["probability"]), 5)
        res["goal_c1_p50_s"] = 1.0
    return res


def section_compile(ctx: dict) -> dict:
    device, shape, batches, flops, budget = ctx["device"], ctx["shape"], ctx["batches"], ctx["flops"], ctx["budget"]
    model = ctx.get("infer_model")
    if model is None:
        torch.manual_seed(0)
        with torch.device(device):
            model = ctx["build"]().eval()
    cuda = device.type == "cuda"
    backend = "inductor" if cuda else "eager"
    mode = ctx["compile_mode"] if cuda else None
    res: dict[str, Any] = {"backend": backend, "mode": mode}
    fmt = torch.channels_last_3d
    net = scale_shift_norms(copy.deepcopy(model)).to(torch.bfloat16 if cuda else torch.float32).to(memory_format=fmt)
    net.eval()
    compiled = torch.compile(net, backend=backend, mode=mode, dynamic=False)
    dtype = torch.bfloat16 if cuda else torch.float32
    for b in sorted(batches, reverse=True):
        left = budget.total - budget.elapsed()
        if left < ctx["compile_min_s"]:  # a compilation cannot be cut short: start one only with time for it
            res[f"batch{b}"] = {"skipped": f"{left:.0f} s left of the budget, under --compile-min-s"}
            continue
        x = torch.rand(b, *shape, generator=torch.Generator().manual_seed(b)).to(device, dtype).contiguous(memory_format=fmt)
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                y = compiled(x).float()
            _sync(device)
            first = time.perf_counter() - t0

            def fwd(x=x) -> None:
                with torch.no_grad():
                    compiled(x)

            t = _timed(fwd, device, ctx["warmup"], ctx["iters"])
            with torch.no_grad():
                eager = model(x.float().contiguous()).float()
            t.update(first_call_s=round(first, 1), ms_per_volume=round(1e3 * t["median_s"] / b, 2),
                     tflops=round(flops * b / t["median_s"] / 1e12, 1),
                     max_abs_prob_diff_vs_eager_fp32=round(float((torch.sigmoid(y) - torch.sigmoid(eager)).abs().max()), 5))
            res[f"batch{b}"] = t
        except Exception as exc:  # noqa: BLE001
            res[f"batch{b}"] = _error(exc)
    return res


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes; runs on CPU in seconds")
    ap.add_argument("--budget-s", type=float, default=285.0, help="whole-run budget (default: %(default)s)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in this order (default: all)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per measurement (default: 5; dry 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default: 2; dry 1)")
    ap.add_argument("--train-steps", type=int, default=None, help="optimiser steps per epoch (default: 12; dry 2)")
    ap.add_argument("--unique-volumes", type=int, default=None, help="volume files on disk (default: 16; dry 4)")
    ap.add_argument("--serve-requests", type=int, default=None, help="requests at concurrency 1 (default: 5; dry 2)")
    ap.add_argument("--compile-mode", default="reduce-overhead",
                    help="torch.compile mode on CUDA (default: %(default)s)")
    ap.add_argument("--compile-min-s", type=float, default=None,
                    help="start a compilation only with this much of the budget left (default: 60; dry 0)")
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--out", default=None, help="also rewrite the JSON here after each section")
    args = ap.parse_args()
    names = args.sections.split(",")
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        ap.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    dry = args.dry_run

    from covidnet.model.builders import covidnet_paper
    from covidnet.model.summary import count_flops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = dict(block_config=(1, 2), growth_rate=4, init_features=8) if dry else {}
    shape = (1, 16, 32, 32) if dry else (1, 64, 384, 384)
    with torch.device("meta"):
        flops = count_flops(covidnet_paper(**small), shape)
    ctx: dict[str, Any] = {
        "device": device, "dry_run": dry, "small": small, "shape": shape, "batches": (1, 2) if dry else (1, 8),
        "flops": flops, "budget": Budget(args.budget_s), "params": args.params,
        "build": lambda: covidnet_paper(**small),
        "iters": args.iters or (1 if dry else 5), "warmup": args.warmup or (1 if dry else 2),
        "train_steps": args.train_steps or (2 if dry else 12), "unique_volumes": args.unique_volumes or (4 if dry else 16),
        "serve_requests": args.serve_requests or (2 if dry else 5), "compile_mode": args.compile_mode,
        "compile_min_s": args.compile_min_s if args.compile_min_s is not None else (0.0 if dry else 60.0),
    }
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out: dict[str, Any] = {
        "benchmark": "gpu_all", "issue": 15, "dry_run": dry, "synthetic": True,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "input": [None, *shape], "flops_per_volume": flops, "budget_s": args.budget_s, "sections": {},
    }
    funcs = {"infer": section_infer, "monai": section_monai, "train": section_train, "serve": section_serve,
             "compile": section_compile}
    budget: Budget = ctx["budget"]
    for name in names:
        if budget.elapsed() > budget.total:
            out["sections"][name] = {"skipped": f"time budget: {budget.elapsed():.0f} s > {budget.total:.0f} s"}
            continue
        budget.begin(name, names)
        t0 = time.perf_counter()
        try:
            out["sections"][name] = funcs[name](ctx)
        except Exception as exc:  # noqa: BLE001 - the point is to record it and go on
            out["sections"][name] = _error(exc)
        out["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
        _free(device)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2))
    out["goals"] = goals(out["sections"], dry)
    out["total_s"] = round(budget.elapsed(), 1)
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


def goals(sections: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    """The issue's GPU table from the sections: each figure, its goal, and whether it is met
    (``met`` is null in a dry run, whose figures mean nothing)."""
    table = _goals(sections)
    if dry_run:
        def unset(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: (None if k.startswith("met") else unset(v)) for k, v in node.items()}
            return node

        table = {**unset(table), "dry_run": "tiny sizes on the CPU: no figure here says anything about a GPU"}
    return table


def _goals(sections: dict[str, Any]) -> dict[str, Any]:

    def get(*keys: str) -> Any:
        node: Any = sections
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    infer = sections.get("infer", {})
    best = infer.get("best", {}) if isinstance(infer, dict) else {}
    b_big = next((k for k in best if k != "batch1"), None)
    ms8 = best.get(b_big, {}).get("ms_per_volume") if b_big else None
    lat1 = best.get("batch1", {}).get("latency_s")
    monai8 = get("monai", "eager_fp32", b_big, "ms_per_volume") if b_big else None
    loop = get("train", "ratios", "loop_over_bare")
    fast = get("train", "ratios", "fast_loop_over_bare_fast")
    c1 = {k: get("serve", k, "c1_p50_s") for k in ("bundle", "fast")}
    return {
        "inference_ms_per_volume_batch8": {"value": ms8, "variant": best.get(b_big, {}).get("variant") if b_big else None,
                                           "goal": 5.0, "met": ms8 is not None and ms8 <= 5.0,
                                           "monai_fp32_ms_per_volume": monai8,
                                           "monai_over_ours": round(monai8 / ms8, 2) if ms8 and monai8 else None},
        "inference_latency_batch1_s": {"value": lat1, "variant": best.get("batch1", {}).get("variant"), "goal": 0.025,
                                       "met": lat1 is not None and lat1 <= 0.025},
        "agreement": f"only variants whose probabilities are within {PROB_TOL} of eager fp32 count",
        "training_loop_over_bare": {"loop": loop, "fast_loop": fast, "goal": 0.85,
                                    "met_by_loop": loop is not None and loop >= 0.85,
                                    "met_by_fast_loop": fast is not None and fast >= 0.85},
        "serving_c1_p50_s": {**c1, "goal": 1.0, "met": {k: v is not None and v <= 1.0 for k, v in c1.items()},
                             "c4_throughput_rps": {k: get("serve", k, "c4_throughput_rps") for k in c1}},
        "compile": {k: get("compile", k, "ms_per_volume") for k in ("batch8", "batch1", "batch2")},
    }


if __name__ == "__main__":
    main()
