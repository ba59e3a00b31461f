"""Saliency maps: where in a volume the network's COVID-19 logit comes from, in the input grid.

Two methods, chosen by ``explain.method`` in params:

``gradcam``
    Grad-CAM (Selvaraju et al., 2017) on a feature map (``explain.layer``, e.g.
    ``denseblock3``, the last dense block): the channels weighted by the logit's gradient
    averaged over space, summed, ReLU, then trilinearly upsampled to the input grid. Cheap and
    class-specific, but only as fine as that feature map (the CPU-sized network's last block is
    1/16 of the input in each axis).
``gradient_x_input``
    The logit's gradient times the input (Shrikumar et al., 2016), positive part, smoothed
    with a box filter of ``explain.smooth`` voxels and averaged over ``explain.samples`` noisy
    copies of the input (SmoothGrad, Smilkov et al., 2017, noise ``explain.noise`` of the
    [0, 1] intensity range): as fine as the input, one backward pass per sample.

Every map is ``(D, H, W)`` float32, non-negative, in the grid of the model's input tensor
(after preprocessing's resize and crop), and sums to 1 (an all-zero map stays zero): a share
of the map's mass is a share of the explanation. Gradients are taken with ``torch.autograd.grad``
(no parameter's ``.grad`` changes), so a served model explains concurrent requests safely. On
CUDA, 3D convolution backward passes are non-deterministic: maps agree only within
floating-point noise there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidnet.params import ParamsError

METHODS = ("gradcam", "gradient_x_input")


@dataclass(frozen=True)
class ExplainParams:
    """The ``explain`` section of params.yaml."""

    method: str            # gradcam | gradient_x_input
    layer: str             # gradcam: the feature map (a module of COVIDNet.features, e.g. denseblock3)
    samples: int           # gradient_x_input: noisy copies averaged (1: plain gradient x input)
    noise: float           # gradient_x_input: noise standard deviation, in [0, 1] intensity units
    smooth: int            # gradient_x_input: box filter width in voxels (1: none)
    seed: int              # the noise's seed (maps are reproducible)
    top_k: int             # evaluate: true positives drawn with their maps
    figure_slices: int     # evaluate: slices drawn per study (those of most map mass)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ParamsError(f"explain.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.top_k < 0 or self.figure_slices < 1:
            raise ParamsError(f"explain.top_k must be >= 0 and explain.figure_slices >= 1, got {self.top_k}, "
                              f"{self.figure_slices}")
        if self.samples < 1 or self.smooth < 1 or self.noise < 0:
            raise ParamsError(f"explain.samples and explain.smooth must be >= 1 and explain.noise >= 0, got "
                              f"{self.samples}, {self.smooth}, {self.noise}")


def _normalize(maps: np.ndarray) -> np.ndarray:
    total = maps.reshape(len(maps), -1).sum(axis=1)
    return (maps / np.where(total > 0, total, 1.0)[:, None, None, None]).astype(np.float32)


def gradcam(model, x, layer: str):
    """Grad-CAM maps of the COVID-19 logit on ``model.features.<layer>``.

    Args:
        model: a :class:`covidnet.model.network.COVIDNet` (eval mode).
        x: ``(B, 1, D, H, W)`` float32 tensor.
        layer: a module of ``model.features`` (``denseblock1`` ... ``norm5``).

    Returns:
        ``(B, D, H, W)`` float32 maps, each summing to 1 (:mod:`covidnet.model.explain`).
    """
    import torch
    import torch.nn.functional as F

    module = getattr(model.features, layer, None)
    if module is None:
        names = ", ".join(n for n, _ in model.features.named_children())
        raise ParamsError(f"explain.layer: {layer!r} is not a module of the network's features ({names})")
    kept: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        kept["a"] = output

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():  # gradients w.r.t. the feature map only: no parameter's .grad is touched
            logits = model(x.detach().requires_grad_(True)).squeeze(1)
            (grad,) = torch.autograd.grad(logits.sum(), [kept["a"]])
    finally:
        handle.remove()
    a = kept["a"].detach()
    weights = grad.mean(dim=(2, 3, 4), keepdim=True)
    cam = F.relu((weights * a).sum(dim=1, keepdim=True))
    up = F.interpolate(cam, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
    return _normalize(up.detach().clamp_min(0).cpu().numpy())


def gradient_x_input(model, x, *, samples: int, noise: float, smooth: int, seed: int):
    """SmoothGrad of gradient x input for the COVID-19 logit, positive part, box-smoothed.

    Args:
        model: a :class:`covidnet.model.network.COVIDNet` (eval mode).
        x: ``(B, 1, D, H, W)`` float32 tensor, intensities in [0, 1].
        samples: noisy copies averaged.
        noise: their Gaussian noise (standard deviation, intensity units).
        smooth: box filter width in voxels.
        seed: the noise's seed.

    Returns:
        ``(B, D, H, W)`` float32 maps, each summing to 1.
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device=x.device).manual_seed(seed)
    total = torch.zeros_like(x)
    for k in range(samples):
        xi = x.detach().clone()
        if noise > 0 and samples > 1:
            xi = xi + noise * torch.randn(xi.shape, generator=gen, device=x.device, dtype=x.dtype)
        xi.requires_grad_(True)
        with torch.enable_grad():  # gradients w.r.t. the input only: no parameter's .grad is touched
            (grad,) = torch.autograd.grad(model(xi).sum(), [xi])
        total += (grad * x).clamp_min(0)
    maps = total / samples
    if smooth > 1:
        maps = F.avg_pool3d(maps, kernel_size=smooth, stride=1, padding=smooth // 2, count_include_pad=False)
        maps = maps[..., : x.shape[2], : x.shape[3], : x.shape[4]]
    return _normalize(maps[:, 0].detach().cpu().numpy())


def saliency(model, x, params: ExplainParams):
    """The maps of :func:`gradcam` or :func:`gradient_x_input` as ``params`` chooses: ``(B, D, H, W)``."""
    if params.method == "gradcam":
        return gradcam(model, x, params.layer)
    return gradient_x_input(model, x, samples=params.samples, noise=params.noise, smooth=params.smooth,
                            seed=params.seed)


def lesion_share(maps: np.ndarray, labels: np.ndarray, lung: int = 1, lesion: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """How much of each map falls in the planted lesions, against chance.

    Args:
        maps: ``(N, D, H, W)`` saliency maps.
        labels: ``(N, D, H, W)`` ground truth in the same grid (0 outside the lungs, ``lung``,
            ``lesion``).

    Returns:
        ``(share, chance)``, each ``(N,)``: the map's mass inside the lesions as a fraction of
        its mass inside the lungs (lesions included), and the lesions' volume fraction of the
        lungs: what a map spread evenly over the lungs would get. NaN where a study has no
        lung, no lesion, or no map mass in the lungs.
    """
    in_lung = labels >= lung
    in_lesion = labels == lesion
    axes = tuple(range(1, maps.ndim))
    lung_mass = (maps * in_lung).sum(axis=axes)
    share = np.where(lung_mass > 0, (maps * in_lesion).sum(axis=axes) / np.where(lung_mass > 0, lung_mass, 1), np.nan)
    lung_voxels = in_lung.sum(axis=axes)
    chance = np.where(lung_voxels > 0, in_lesion.sum(axis=axes) / np.maximum(lung_voxels, 1), np.nan)
    chance = np.where(chance > 0, chance, np.nan)
    return share.astype(np.float64), chance.astype(np.float64)
