"""The classifier: a 3D DenseNet with one output (the COVID-19 logit).

Shaped like torchvision's ``models/densenet.py``: private blocks (:class:`_DenseLayer`,
:class:`_DenseBlock`, :class:`_Transition`), one public class (:class:`COVIDNet`) whose
typed constructor takes every architecture setting, and thin builders that differ only in
their configuration:

* :func:`covidnet_paper` — Liu et al. (2021) as published: DenseNet-264, blocks
  ``(6, 12, 64, 48)``, growth 32, bottleneck ``4 x growth``, compression 0.5, instance
  norm, norm -> ReLU -> conv, a 7x7x7 stride-2 stem conv and a 3x3x3 stride-2 max-pool;
  native input ``(1, 64, 384, 384)``.
* :func:`covidnet_released` — the authors' released TensorFlow code as DESIGN.md §4
  describes it: group norm (4 groups), growth 48, bottleneck ``1 x growth``, no
  compression, an extra transition after the last block, conv -> norm -> ReLU, a stem that
  does not stride in depth; native input ``(1, 64, 224, 224)``. The number of stem filters
  (64) is torchvision's and MONAI's default, not a figure from the release.
* :func:`covidnet_cpu` — a narrow network that trains on a 2-core CPU in minutes; native
  input ``(1, 32, 96, 96)``.

:func:`build_model` builds one from the ``model`` section of params.yaml
(:class:`ModelParams`); :func:`model_summary` counts parameters and FLOPs per builder at its
native input on the meta device (no memory is allocated, so the paper size is fine on a
laptop).

Shapes are channel-first: input ``(B, 1, D, H, W)`` (D axial slices of H x W voxels,
intensities in [0, 1] from :mod:`covidnet.preprocess.stage`), output ``(B, 1)`` logits. Global
average pooling makes the network accept any size that survives its poolings (each
spatial size must stay >= 1 after the stem's stride 4 and each transition's stride 2).

Checkpoint format: the module names are part of it and follow torchvision's
(``features.conv0``, ``features.norm0``, ``features.denseblock1.denselayer1.norm1``,
``...conv1``, ``...norm2``, ``...conv2``, ``features.transition1.norm``/``.conv``,
``features.norm5``, ``classifier``). Rename nothing without a key remap and a test
(``tests/test_model.py`` lists expected keys). :attr:`COVIDNet.config` records every
setting as JSON so a checkpoint carries what it was built with:
``COVIDNet(**config)`` rebuilds it.

Determinism: weights are drawn from torch's global generator; seed it
(``torch.manual_seed``) before building — this module seeds nothing. 3D convolutions on
CUDA are non-deterministic (cuDNN picks algorithms that use atomics), so two GPU runs with
the same seed can differ slightly unless
``torch.use_deterministic_algorithms(True)`` is set (slower; see
https://pytorch.org/docs/stable/generated/torch.use_deterministic_algorithms.html).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

NORMS = ("instance", "group", "batch")
STEMS = ("strided", "inplane")
ORDERS = ("pre", "post")


class _InstanceNorm3d(nn.InstanceNorm3d):
    """Instance norm of ``(B, C, D, H, W)``; without autograd, its affine form runs as a group norm.

    Same statistics (per sample and channel over D, H, W; biased variance; ``eps``), same
    parameters and state-dict keys as :class:`torch.nn.InstanceNorm3d` (outputs agree to
    ~1e-7). torch's affine ``instance_norm`` repeats weight and bias per sample through some 60
    small operators per call, about 15,000 per DenseNet-264 forward, which keeps a GPU waiting
    on the CPU at batch 1; one ``group_norm`` of C groups does the same in one operator.
    Measured on an H200 (``benchmarks/gpu.py``, section ``norm_variants``): 1.17x faster bf16
    inference at batch 1, equal at batch 8. With autograd on, torch's own path stays: autocast
    runs ``group_norm`` in fp32, which doubled the activation memory a bf16 training step keeps
    (53 vs 23 GiB at batch 8).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine and x.dim() == 5 and not torch.is_grad_enabled():
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


def _norm(kind: str, channels: int, groups: int, affine: bool) -> nn.Module:
    if kind == "instance":
        return _InstanceNorm3d(channels, affine=affine)
    if kind == "group":
        return nn.GroupNorm(groups, channels, affine=affine)
    return nn.BatchNorm3d(channels)


class _DenseLayer(nn.Module):
    """One dense unit: bottleneck 1x1x1 conv, then 3x3x3 conv to ``growth_rate`` channels.

    ``order="pre"``: norm1 -> relu1 -> conv1 -> norm2 -> relu2 -> conv2 (torchvision, MONAI,
    the paper). ``order="post"``: conv1 -> norm1 -> relu1 -> conv2 -> norm2 -> relu2 (the
    released code). The input is the list of all earlier feature maps of the block; the
    concatenation and the bottleneck are checkpointed when ``memory_efficient``.
    """

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, dropout: float,
                 norm: str, groups: int, norm_affine: bool, order: str, memory_efficient: bool) -> None:
        super().__init__()
        width = bn_size * growth_rate
        pre = order == "pre"
        self.norm1 = _norm(norm, in_channels if pre else width, groups, norm_affine)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=1, bias=False)
        self.norm2 = _norm(norm, width if pre else growth_rate, groups, norm_affine)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(width, growth_rate, kernel_size=3, padding=1, bias=False)
        self.pre = pre
        self.dropout = float(dropout)
        self.memory_efficient = memory_efficient

    def bottleneck(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Concatenate ``(B, C_i, D, H, W)`` maps on channels, then the 1x1x1 part."""
        x = torch.cat(inputs, 1)
        if self.pre:
            return self.conv1(self.relu1(self.norm1(x)))
        return self.relu1(self.norm1(self.conv1(x)))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and any(t.requires_grad for t in inputs):
            y = cp.checkpoint(self.bottleneck, *inputs, use_reentrant=False)
        else:
            y = self.bottleneck(*inputs)
        if self.pre:
            y = self.conv2(self.relu2(self.norm2(y)))
        else:
            y = self.relu2(self.norm2(self.conv2(y)))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        return y


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense units (``denselayer1`` ...); output ``in + num_layers * growth`` channels."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, **layer_kwargs: Any) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            _DenseLayer(in_channels + i * growth_rate, growth_rate, **layer_kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """1x1x1 conv to ``out_channels`` and 2x2x2 average pooling (stride 2).

    Module order (and so the order of operations) is norm -> relu -> conv -> pool for
    ``order="pre"`` and conv -> norm -> relu -> pool for ``order="post"``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str, groups: int, norm_affine: bool,
                 order: str) -> None:
        super().__init__()
        conv = nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False)
        if order == "pre":
            self.add_module("norm", _norm(norm, in_channels, groups, norm_affine))
            self.add_module("relu", nn.ReLU(inplace=True))
            self.add_module("conv", conv)
        else:
            self.add_module("conv", conv)
            self.add_module("norm", _norm(norm, out_channels, groups, norm_affine))
            self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("pool", nn.AvgPool3d(kernel_size=2, stride=2))


def _check(name: str, value: Any, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"model.{name}: {value!r} {what}")


def validate_config(cfg: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming ``model.<field>`` and the value for a bad setting."""
    bc = cfg["block_config"]
    _check("block_config", bc, len(bc) >= 1 and all(isinstance(n, int) and n >= 1 for n in bc),
           "must be a non-empty list of integers >= 1")
    for name in ("growth_rate", "bn_size", "init_features", "groups"):
        v = cfg[name]
        _check(name, v, isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be an integer >= 1")
    _check("compression", cfg["compression"], 0.0 < cfg["compression"] <= 1.0, "must be in (0, 1]")
    _check("dropout", cfg["dropout"], 0.0 <= cfg["dropout"] < 1.0, "must be in [0, 1)")
    for name, choices in (("norm", NORMS), ("stem", STEMS), ("order", ORDERS)):
        _check(name, cfg[name], cfg[name] in choices, f"is not one of {', '.join(choices)}")
    shape = cfg["input_shape"]
    _check("input_shape", shape, len(shape) == 4 and shape[0] == 1 and all(s >= 1 for s in shape),
           "must be (1, D, H, W) with sizes >= 1")
    if cfg["norm"] == "group":
        for where, channels in _normed_channels(cfg):
            if channels % cfg["groups"]:
                raise ValueError(f"model.groups: {cfg['groups']} does not divide the {channels} channels of {where}")


def _normed_channels(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    """``(module name, channels)`` of every norm layer the configuration builds."""
    pre = cfg["order"] == "pre"
    growth, width = cfg["growth_rate"], cfg["bn_size"] * cfg["growth_rate"]
    channels = cfg["init_features"]
    out = [("features.norm0", channels)]
    blocks = cfg["block_config"]
    for i, num_layers in enumerate(blocks):
        for j in range(num_layers):
            where = f"features.denseblock{i + 1}.denselayer{j + 1}"
            c_in = channels + j * growth
            out += [(f"{where}.norm1", c_in if pre else width), (f"{where}.norm2", width if pre else growth)]
        channels += num_layers * growth
        if i < len(blocks) - 1 or cfg["final_transition"]:
            kept = int(math.floor(channels * cfg["compression"]))
            out.append((f"features.transition{i + 1}.norm", channels if pre else kept))
            channels = kept
    if pre:
        out.append(("features.norm5", channels))
    return out


class COVIDNet(nn.Module):
    """3D DenseNet-BC classifier with one output logit (COVID-19).

    Layout (module names are the checkpoint format, see the module docstring)::

        features: conv0 -> norm0 -> relu0 -> pool0                       (stem)
                  denseblock1, transition1, ..., denseblockN
                  [transitionN]              if final_transition
                  [norm5]                    if order == "pre"
        relu (pre only), global average pool -> (B, C) -> classifier -> (B, 1)

    Args:
        block_config: dense units per block, e.g. ``(6, 12, 64, 48)`` for DenseNet-264.
        growth_rate: channels each dense unit adds (k).
        bn_size: bottleneck width as a multiple of ``growth_rate`` (the 1x1x1 conv makes
            ``bn_size * growth_rate`` channels).
        compression: a transition keeps ``floor(compression * C)`` of its C channels.
        init_features: channels of the stem convolution.
        stem: ``"strided"`` — 7x7x7 conv stride 2 and 3x3x3 max-pool stride 2 (input
            ``(D, H, W)`` -> ``(D/4, H/4, W/4)``); ``"inplane"`` — the same kernels with stride
            ``(1, 2, 2)`` (depth kept: ``(D, H/4, W/4)``).
        order: ``"pre"`` (norm -> ReLU -> conv) or ``"post"`` (conv -> norm -> ReLU).
        final_transition: add a transition (conv, pooling) after the last dense block.
        norm: ``"instance"``, ``"group"`` or ``"batch"``.
        groups: groups of group norm (ignored otherwise); must divide every normalized
            channel count.
        norm_affine: learnable scale and shift in instance and group norm (batch norm always
            has them). MONAI's instance norm has none.
        dropout: dropout probability on each dense unit's new features (0: none).
        memory_efficient: checkpoint each unit's concatenate -> norm -> ReLU -> 1x1x1 conv
            part (recomputed in backward), only when an input requires grad. Saves memory
            growing with depth at the cost of extra compute; outputs are unchanged.
        channels_last: keep weights and inputs in ``torch.channels_last_3d``.
        input_shape: the native input ``(1, D, H, W)`` (metadata: summaries, serving
            signatures); other sizes work too.

    Attributes:
        config: every setting above as a JSON-serialisable dict; ``COVIDNet(**config)``
            builds the same architecture.
        input_shape: ``(1, D, H, W)``.
        num_features: C, the length of :meth:`forward_features`'s vectors.
    """

    def __init__(
        self,
        block_config: Sequence[int] = (6, 12, 64, 48),
        growth_rate: int = 32,
        bn_size: int = 4,
        compression: float = 0.5,
        init_features: int = 64,
        stem: str = "strided",
        order: str = "pre",
        final_transition: bool = False,
        norm: str = "instance",
        groups: int = 4,
        norm_affine: bool = True,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        channels_last: bool = False,
        input_shape: Sequence[int] = (1, 64, 384, 384),
    ) -> None:
        super().__init__()
        cfg = {
            "block_config": [int(n) for n in block_config], "growth_rate": growth_rate, "bn_size": bn_size,
            "compression": float(compression), "init_features": init_features, "stem": stem, "order": order,
            "final_transition": bool(final_transition), "norm": norm, "groups": groups,
            "norm_affine": bool(norm_affine), "dropout": float(dropout),
            "memory_efficient": bool(memory_efficient), "channels_last": bool(channels_last),
            "input_shape": [int(s) for s in input_shape],
        }
        validate_config(cfg)
        self.config: dict[str, Any] = cfg
        self.input_shape: tuple[int, int, int, int] = tuple(cfg["input_shape"])  # type: ignore[assignment]
        self.channels_last = bool(channels_last)
        stride = (2, 2, 2) if stem == "strided" else (1, 2, 2)
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv3d(1, init_features, kernel_size=7, stride=stride, padding=3, bias=False)),
            ("norm0", _norm(norm, init_features, groups, norm_affine)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool3d(kernel_size=3, stride=stride, padding=1)),
        ]))
        layer_kwargs = dict(bn_size=bn_size, dropout=dropout, norm=norm, groups=groups, norm_affine=norm_affine,
                            order=order, memory_efficient=memory_efficient)
        channels = init_features
        last = len(block_config) - 1
        for i, num_layers in enumerate(cfg["block_config"]):
            self.features.add_module(f"denseblock{i + 1}",
                                     _DenseBlock(num_layers, channels, growth_rate, **layer_kwargs))
            channels += num_layers * growth_rate
            if i < last or final_transition:
                out = int(math.floor(channels * compression))
                self.features.add_module(f"transition{i + 1}",
                                         _Transition(channels, out, norm, groups, norm_affine, order))
                channels = out
        if order == "pre":
            self.features.add_module("norm5", _norm(norm, channels, groups, norm_affine))
        self.num_features = channels
        self.classifier = nn.Linear(channels, 1)

        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier (for t-SNE).

        Args:
            x: ``(B, 1, D, H, W)``.

        Returns:
            ``(B, C)`` with ``C = self.num_features``.
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.features(x)
        if self.config["order"] == "pre":
            x = F.relu(x, inplace=True)
        return torch.flatten(F.adaptive_avg_pool3d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits.

        Args:
            x: ``(B, 1, D, H, W)``, channel-first.

        Returns:
            ``(B, 1)`` COVID-19 logits (apply a sigmoid for probabilities).
        """
        return self.classifier(self.forward_features(x))
