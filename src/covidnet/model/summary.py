"""Parameters and forward FLOPs of the network builders (``covidnet model summary``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from covidnet.model.builders import BUILDERS, build


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs for one volume (a multiply-add counts 2), on the meta device.

    Args:
        model: built on the meta device (``with torch.device("meta"): ...``) or any device;
            only the shapes matter when it is on meta.
        input_shape: ``(1, D, H, W)``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.empty((1, *input_shape), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def model_summary(builders: Sequence[str] = BUILDERS, configured: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Parameters and forward FLOPs per volume of each builder at its native input.

    Builds on the meta device: nothing is allocated, so the paper size is cheap.

    Args:
        configured: ``{row name: ModelParams}``, models as a params file configures them
            (a builder with overrides), shown after the builders.

    Returns:
        One dict per row: ``builder``, ``input_shape``, ``parameters``, ``flops``
        (forward, per volume), ``num_features``.
    """
    from covidnet.model.builders import build_model

    rows = []
    models = [(name, lambda name=name: build(name)) for name in builders]
    models += [(name, lambda p=p: build_model(p)) for name, p in (configured or {}).items()]
    for name, make in models:
        with torch.device("meta"):
            model = make()
        rows.append({
            "builder": name,
            "input_shape": list(model.input_shape),
            "parameters": sum(p.numel() for p in model.parameters()),
            "flops": count_flops(model, model.input_shape),
            "num_features": model.num_features,
        })
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`model_summary` rows."""
    width = max(10, *(len(r["builder"]) for r in rows))
    lines = [f"{'builder':<{width}} {'input':<18} {'parameters':>14} {'GFLOP/volume':>14} {'features':>9}"]
    for r in rows:
        shape = "x".join(str(s) for s in r["input_shape"])
        lines.append(f"{r['builder']:<{width}} {shape:<18} {r['parameters']:>14,} {r['flops'] / 1e9:>14.2f} "
                     f"{r['num_features']:>9}")
    return "\n".join(lines)
