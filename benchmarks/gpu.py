"""GPU benchmark: the paper's DenseNet-264 at 1x64x384x384 (for a lent accelerator).

Sections, in one process, each guarded (an error such as out-of-memory is recorded in the
JSON under that section and the next section runs):

* ``infer_bf16_eager``   :func:`covidnet_paper` in eval mode, bf16 autocast, latency at
                         batch 1 and 8 (median of ``--iters`` after warm-up), achieved TFLOP/s;
* ``train_bf16``         training steps (Adam 1e-3, BCE with logits, bf16 autocast) at
                         batch 8: volumes/s and peak memory, without and with activation
                         checkpointing (``memory_efficient``);
* ``ours_fp32``          :func:`covidnet_paper` eager fp32 (cuDNN's default TF32 for convolutions):
                         inference at batch 1 and 8 and a training step at batch 8, the
                         same-precision counterpart of the baseline;
* ``monai_fp32``         the baseline: MONAI's ``DenseNet264(spatial_dims=3, in_channels=1,
                         out_channels=1, norm="instance")`` eager fp32: inference latency at
                         batch 1 and 8 and a training step at batch 8;
* ``norm_variants``      the paper network's affine instance norms run as one group norm of C
                         groups (what the model does without autograd), as torch's
                         ``InstanceNorm3d`` (what it does with autograd), and without affine
                         parameters (MONAI's form): bf16 inference at batch 1 and 8 and a bf16
                         training step at batch 8 each;
* ``infer_bf16_compile`` the first section again through ``torch.compile`` (first-call
                         compile time reported apart); last, so the time budget cuts it first.

Sections past ``--budget-s`` seconds are skipped (recorded as such), so the whole run stays
under 5 minutes on an H100. 3D convolutions on CUDA are non-deterministic; this measures
speed only. ``cudnn.benchmark`` is on.

``--dry-run`` shrinks everything (the paper builder with blocks ``(1, 2)``, growth 4, 8 stem
features, input 1x32x64x64, batches 1 and 2, 1 iteration, ``torch.compile`` with the
``eager`` backend) and runs on CPU when no GPU is present: a check that the script works,
in seconds; its numbers mean nothing.

Prints JSON. Usage: ``python benchmarks/gpu.py [--dry-run] [--iters 5] [--budget-s 270] [--out FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import time
import traceback
from typing import Any, Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


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
    return {"median_s": round(statistics.median(times), 4), "best_s": round(min(times), 4)}


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _ratios(sections: dict[str, Any]) -> dict[str, float | None]:
    """MONAI fp32 time over ours (same precision, same run) and ours fp32 over ours bf16."""

    def t(section: str, *keys: str) -> float | None:
        node: Any = sections.get(section, {})
        for k in keys:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, (int, float)) else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "monai_over_ours_fp32_infer_batch1": ratio(t("monai_fp32", "batch1", "median_s"), t("ours_fp32", "batch1", "median_s")),
        "monai_over_ours_fp32_train": ratio(t("monai_fp32", "train", "median_s"), t("ours_fp32", "train", "median_s")),
        "fp32_over_bf16_infer_batch8": ratio(t("ours_fp32", "batch8", "median_s"), t("infer_bf16_eager", "batch8", "median_s")),
        "fp32_over_bf16_train": ratio(t("ours_fp32", "train", "median_s"), t("train_bf16", "plain", "median_s")),
        "instancenorm_over_groupnorm_infer_batch1": ratio(t("norm_variants", "instancenorm_affine", "batch1", "median_s"),
                                                        t("norm_variants", "group_norm", "batch1", "median_s")),
        "instancenorm_over_groupnorm_infer_batch8": ratio(t("norm_variants", "instancenorm_affine", "batch8", "median_s"),
                                                        t("norm_variants", "group_norm", "batch8", "median_s")),
        "instancenorm_over_groupnorm_train": ratio(t("norm_variants", "instancenorm_affine", "train", "median_s"),
                                                 t("norm_variants", "group_norm", "train", "median_s")),
        "checkpointed_over_plain_train": ratio(t("train_bf16", "checkpointed", "median_s"), t("train_bf16", "plain", "median_s")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="shrink everything; runs on CPU in seconds")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per measurement (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="skip sections starting after this many seconds (default: %(default)s)")
    ap.add_argument("--sections", default=None,
                    help="comma-separated sections to run, in that order (default: all, in the order above)")
    ap.add_argument("--out", default=None, help="also rewrite the JSON to this file after each section, "
                    "so a run cut short by a time limit keeps what it measured")
    args = ap.parse_args()

    from covidnet.model.builders import covidnet_paper
    from covidnet.model.summary import count_flops

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.dry_run:
        small = dict(block_config=(1, 2), growth_rate=4, init_features=8)
        shape, batches, train_batch = (1, 32, 64, 64), (1, 2), 2
        iters, warmup, compile_backend = 1, 1, "eager"
    else:
        small = {}
        shape, batches, train_batch = (1, 64, 384, 384), (1, 8), 8
        iters, warmup, compile_backend = args.iters, args.warmup, "inductor"

    def paper(**kw: Any) -> torch.nn.Module:
        torch.manual_seed(0)
        return covidnet_paper(**small, **kw).to(device)

    with torch.device("meta"):
        flops = count_flops(covidnet_paper(**small), shape)

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "input": [None, *shape],
        "flops_per_volume": flops,
        "sections": {},
    }

    def inference(model: torch.nn.Module, bf16: bool) -> dict[str, Any]:
        res: dict[str, Any] = {}
        for b in batches:
            x = torch.rand(b, *shape, device=device)

            def fwd() -> None:
                with torch.no_grad(), _autocast(device, bf16):
                    model(x)

            _reset_memory(device)
            t = _timed(fwd, device, warmup, iters)
            t["tflops"] = round(flops * b / t["best_s"] / 1e12, 2)
            t["peak_gib"] = _peak_gib(device)
            res[f"batch{b}"] = t
        return res

    def train(model: torch.nn.Module, bf16: bool) -> dict[str, Any]:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        x = torch.rand(train_batch, *shape, device=device)
        y = torch.randint(0, 2, (train_batch, 1), device=device).float()
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with _autocast(device, bf16):
                loss = loss_fn(model(x).float(), y)
            loss.backward()
            opt.step()

        _reset_memory(device)
        t = _timed(step, device, warmup, iters)
        t["volumes_per_s"] = round(train_batch / t["median_s"], 2)
        t["peak_gib"] = _peak_gib(device)
        t["batch"] = train_batch
        return t

    def infer_eager() -> dict[str, Any]:
        return inference(paper().eval(), bf16=True)

    def infer_compile() -> dict[str, Any]:
        model = torch.compile(paper().eval(), backend=compile_backend)
        x = torch.rand(batches[0], *shape, device=device)
        t0 = time.perf_counter()
        with torch.no_grad(), _autocast(device, True):
            model(x)
        _sync(device)
        res = {"backend": compile_backend, "first_call_s": round(time.perf_counter() - t0, 2)}
        res.update(inference(model, bf16=True))
        return res

    def train_both() -> dict[str, Any]:
        res = {}
        for label, efficient in (("plain", False), ("checkpointed", True)):
            try:
                res[label] = train(paper(memory_efficient=efficient), bf16=True)
            except Exception as exc:  # noqa: BLE001 - recorded, e.g. OOM without checkpointing
                res[label] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            _reset_memory(device)
        return res

    def ours_fp32() -> dict[str, Any]:
        model = paper().eval()
        res = inference(model, bf16=False)
        res["train"] = train(model, bf16=False)
        return res

    def monai_fp32() -> dict[str, Any]:
        from monai.networks.nets import DenseNet, DenseNet264

        torch.manual_seed(0)
        if args.dry_run:
            ref = DenseNet(spatial_dims=3, in_channels=1, out_channels=1, norm="instance", **small)
        else:
            ref = DenseNet264(spatial_dims=3, in_channels=1, out_channels=1, norm="instance")
        ref = ref.to(device).eval()
        res = inference(ref, bf16=False)
        res["train"] = train(ref, bf16=False)
        return res

    def norm_variants() -> dict[str, Any]:
        from covidnet.model.network import _InstanceNorm3d

        class GroupNormAlways(_InstanceNorm3d):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.group_norm(x, self.num_features, self.weight, self.bias, self.eps)

        def swapped(cls: type) -> Callable[[], torch.nn.Module]:
            def build() -> torch.nn.Module:
                model = paper()
                for m in model.modules():
                    if isinstance(m, _InstanceNorm3d):
                        m.__class__ = cls  # same parameters, another forward
                return model
            return build

        res = {}
        for label, build in (("group_norm", swapped(GroupNormAlways)),
                             ("instancenorm_affine", swapped(torch.nn.InstanceNorm3d)),
                             ("no_affine", lambda: paper(norm_affine=False))):
            res[label] = inference(build().eval(), bf16=True)
            res[label]["train"] = train(build(), bf16=True)
        return res

    # compile last: its compile time is the least predictable, and the budget then cuts it, not the baseline
    sections = {"infer_bf16_eager": infer_eager, "train_bf16": train_both, "ours_fp32": ours_fp32,
                "monai_fp32": monai_fp32, "norm_variants": norm_variants, "infer_bf16_compile": infer_compile}
    if args.sections:
        unknown = sorted(set(args.sections.split(",")) - set(sections))
        if unknown:
            ap.error(f"--sections: unknown {unknown}; choose from {sorted(sections)}")
        sections = {k: sections[k] for k in args.sections.split(",")}  # in the order given
    for name, fn in sections.items():
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            out["sections"][name] = {"skipped": f"time budget: {elapsed:.0f} s > {args.budget_s:.0f} s"}
            continue
        t0 = time.perf_counter()
        try:
            out["sections"][name] = fn()
        except Exception as exc:  # noqa: BLE001 - the point is to record it and go on
            out["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                                     "where": traceback.format_exc(limit=-2)[-500:]}
        out["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(out, f, indent=2)
        _reset_memory(device)
        gc.collect()
    out["ratios"] = _ratios(out["sections"])
    out["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
