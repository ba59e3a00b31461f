"""Benchmark: the CPU builder's forward latency against MONAI's DenseNet, and FLOPs per builder.

In one process, on this machine's CPU:

* ``latency``: forward latency (``torch.no_grad``, eval mode) of :func:`covidnet_cpu` at its
  native input ``(B, 1, 32, 96, 96)`` for B = 1 and 4, against MONAI's ``DenseNet`` with the
  same configuration (blocks, growth rate, stem features, bottleneck, instance norm) on the
  same input; and one training step (forward + backward, train mode) at B = 4. ``covidnet``
  is built with ``norm_affine=False`` to match MONAI's instance norm exactly (same weights
  copied in, outputs compared); ``covidnet_affine`` is the builder's default (learnable
  scale and shift). Variants run interleaved (one run of each per round, ``--repeats`` rounds after 2
  warm-up rounds) so load from other processes hits them alike; best and median seconds,
  ratios from the best.
* ``summary``: parameters and forward FLOPs per volume of every builder at its native input
  (:func:`covidnet.model.summary.model_summary`, torch's flop counter on the meta device).

Prints JSON. Usage: ``python benchmarks/model.py [--repeats 10]``
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time

import torch


def _interleaved(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Run every variant once per round, ``repeats`` rounds after 2 warm-up rounds, so load
    from other processes hits all variants alike; best and median seconds per variant."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"best": round(min(t), 4), "median": round(statistics.median(t), 4)} for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per variant (default: %(default)s)")
    args = ap.parse_args()

    import monai
    from monai.networks.nets import DenseNet

    from covidnet.model.builders import covidnet_cpu
    from covidnet.model.summary import format_summary, model_summary

    torch.manual_seed(0)
    ours = covidnet_cpu(norm_affine=False)
    cfg = ours.config
    ref = DenseNet(spatial_dims=3, in_channels=1, out_channels=1, init_features=cfg["init_features"],
                   growth_rate=cfg["growth_rate"], block_config=tuple(cfg["block_config"]), bn_size=cfg["bn_size"],
                   norm="instance")
    state = {re.sub(r"\.layers\.", ".", k).replace("class_layers.out.", "classifier."): v
             for k, v in ref.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    affine = covidnet_cpu()
    models = {"covidnet": ours, "covidnet_affine": affine, "monai": ref}

    shape = tuple(cfg["input_shape"])
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for batch in (1, 4):
        x = torch.rand(batch, *shape)
        for model in models.values():
            model.eval()

        def forward(m, x=x):
            with torch.no_grad():
                m(x)

        timed = _interleaved({name: (lambda m=m: forward(m)) for name, m in models.items()}, args.repeats)
        for name, t in timed.items():
            results[name][f"forward_b{batch}_s"] = t
    with torch.no_grad():
        x = torch.rand(4, *shape)
        max_diff = (ours.eval()(x) - ref.eval()(x)).abs().max().item()
    x = torch.rand(4, *shape)
    for model in models.values():
        model.train()

    def step(m):
        m.zero_grad(set_to_none=True)
        m(x).sum().backward()

    timed = _interleaved({name: (lambda m=m: step(m)) for name, m in models.items()}, max(3, args.repeats // 2))
    for name, t in timed.items():
        results[name]["train_step_b4_s"] = t

    ratios = {key: round(results["monai"][key]["best"] / results["covidnet"][key]["best"], 2)
              for key in results["covidnet"]}
    rows = model_summary()
    out = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
        "input": [None, *shape],
        "config": cfg,
        "seconds": results,
        "monai_over_covidnet": ratios,
        "max_abs_diff_vs_monai": max_diff,
        "summary": rows,
        "summary_table": format_summary(rows),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
