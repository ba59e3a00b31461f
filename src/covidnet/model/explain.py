"""Saliency maps: where in a volume the network's COVID-19 logit comes from, in the input grid.

Two methods, chosen by ``explain.method`` in params:

``gradcam``
    Grad-CAM (Selvaraju et al., 2017) on a feature map (``explain.layer``, e.g.
    ``denseblock3``, the last dense block): the channels weighted by the logit's gradient
    averaged over space, summed, ReLU, then trilinearly upsampled to the input grid. Cheap and
    class-specific, but only as fine as that feature map (the CPU-sized network's last block is
    1/16 of the input in each axis).
``gradient_x_input``
    The logit's gradient times the input's departure from a reference (Shrikumar et al.,
    2016; with a reference, one step of integrated gradients, Sundararajan et al., 2017):
    ``grad * (x - baseline)``, positive part. The reference is aerated lung
    (``explain.baseline_hu``, -850 HU), so a voxel that looks like normal lung explains
    nothing and what the map weighs is density the lungs should not have, by how much the
    logit depends on it. Optionally box-smoothed (``explain.smooth``) and averaged over noisy
    copies (SmoothGrad, Smilkov et al., 2017: ``explain.samples``, ``explain.noise``). As fine
    as the input, one backward pass per sample. The default: on the demo model Grad-CAM's
    coarse maps put barely more than chance in the lesions (see the README).

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
    baseline_hu: float     # gradient_x_input: the reference the input departs from (aerated lung)
    samples: int           # gradient_x_input: noisy copies averaged (1: plain gradient x input)
    noise: float           # gradient_x_input: noise standard deviation, in [0, 1] intensity units
    smooth: int            # gradient_x_input: box filter width in voxels (1: none)
    seed: int              # the noise's seed (maps are reproducible)
    rim: int               # lesion check: lung voxels this close (in-plane) to the lung's edge are left out
    top_k: int             # evaluate: true positives drawn with their maps
    figure_slices: int     # evaluate: slices drawn per study (those of most map mass)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ParamsError(f"explain.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.top_k < 0 or self.figure_slices < 1:
            raise ParamsError(f"explain.top_k must be >= 0 and explain.figure_slices >= 1, got {self.top_k}, "
                              f"{self.figure_slices}")
        if self.rim < 0:
            raise ParamsError(f"explain.rim must be >= 0, got {self.rim}")
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


def gradient_x_input(model, x, *, baseline: float, samples: int, noise: float, smooth: int, seed: int):
    """Gradient x (input - baseline) for the COVID-19 logit, positive part; optionally SmoothGrad and box-smoothed.

    Args:
        model: a :class:`covidnet.model.network.COVIDNet` (eval mode).
        x: ``(B, 1, D, H, W)`` float32 tensor, intensities in [0, 1].
        baseline: the reference intensity, in the same [0, 1] units.
        samples: noisy copies averaged (1: none).
        noise: their Gaussian noise (standard deviation, intensity units).
        smooth: box filter width in voxels (1: none).
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
        total += (grad * (x - baseline)).clamp_min(0)
    maps = total / samples
    if smooth > 1:
        maps = F.avg_pool3d(maps, kernel_size=smooth, stride=1, padding=smooth // 2, count_include_pad=False)
        maps = maps[..., : x.shape[2], : x.shape[3], : x.shape[4]]
    return _normalize(maps[:, 0].detach().cpu().numpy())


def baseline_intensity(params: ExplainParams, hu_window: tuple[float, float]) -> float:
    """``explain.baseline_hu`` in the tensor's [0, 1] units, for the model's HU window ``(hu_min, hu_max)``."""
    lo, hi = hu_window
    return float(min(max((params.baseline_hu - lo) / (hi - lo), 0.0), 1.0))


def saliency(model, x, params: ExplainParams, hu_window: tuple[float, float]):
    """The maps of :func:`gradcam` or :func:`gradient_x_input` as ``params`` chooses: ``(B, D, H, W)``.

    ``hu_window`` is the model's preprocessing window ``(hu_min, hu_max)`` (its card's), which
    puts ``explain.baseline_hu`` in the tensor's units.
    """
    if params.method == "gradcam":
        return gradcam(model, x, params.layer)
    return gradient_x_input(model, x, baseline=baseline_intensity(params, hu_window), samples=params.samples,
                            noise=params.noise, smooth=params.smooth, seed=params.seed)


def anchor_maps(model, x, baseline: float) -> dict[str, np.ndarray]:
    """Two maps to read a method's lesion share against, each ``(B, D, H, W)`` summing to 1.

    ``density``: ``x - baseline``, positive part, which needs no model (where the volume is
    denser than aerated lung); ``gradient``: the logit's positive gradient alone (where the
    model is sensitive, whatever is there). A map that does no better than ``density`` says
    where the lesions are, not what the model used.
    """
    import torch

    xi = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(model(xi).sum(), [xi])
    density = (x.detach() - baseline).clamp_min(0)[:, 0].cpu().numpy()
    return {"density": _normalize(density), "gradient": _normalize(grad.clamp_min(0)[:, 0].cpu().numpy())}


def lesion_share(maps: np.ndarray, labels: np.ndarray, rim: int = 0, lung: int = 1,
                 lesion: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """How much of each map falls in the planted lesions, against chance.

    Args:
        maps: ``(N, D, H, W)`` saliency maps.
        labels: ``(N, D, H, W)`` ground truth in the same grid (0 outside the lungs, ``lung``,
            ``lesion``).
        rim: lung voxels (lesion or not) within this many voxels in-plane of the outside are
            left out of both shares: in a grid this coarse they are part chest wall, as dense as
            a lesion, and would hide where the map goes (0: every lung voxel counts).

    Returns:
        ``(share, chance)``, each ``(N,)``: the map's mass inside the lesions as a fraction of
        its mass inside the lungs (lesions included), and the lesions' volume fraction of the
        lungs: what a map spread evenly over the lungs would get. NaN where a study has no
        lung, no lesion, or no map mass in the lungs.
    """
    in_lung = labels >= lung
    if rim > 0:
        from scipy import ndimage

        plane = np.zeros((1, 1, 3, 3), bool)
        plane[0, 0] = True  # in-plane neighbours only: slices are thick
        in_lung = ndimage.binary_erosion(in_lung, structure=plane, iterations=rim, border_value=0)
    in_lesion = (labels == lesion) & in_lung
    axes = tuple(range(1, maps.ndim))
    lung_mass = (maps * in_lung).sum(axis=axes)
    share = np.where(lung_mass > 0, (maps * in_lesion).sum(axis=axes) / np.where(lung_mass > 0, lung_mass, 1), np.nan)
    lung_voxels = in_lung.sum(axis=axes)
    chance = np.where(lung_voxels > 0, in_lesion.sum(axis=axes) / np.maximum(lung_voxels, 1), np.nan)
    chance = np.where(chance > 0, chance, np.nan)
    return share.astype(np.float64), chance.astype(np.float64)
