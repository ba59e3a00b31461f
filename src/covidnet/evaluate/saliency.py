"""Explanations checked, not just drawn: saliency maps of an evaluated set against the planted lesions.

For a SYNTHETIC cohort the ground truth is known: ``synth`` writes each axial series' lungs and
planted lesions in the tensor grid (``<manifest>/lesions/<SeriesInstanceUID>.npy``). For the
set's true positives (COVID-19 called COVID-19) this module computes each study's map
(:func:`covidnet.model.explain.saliency`), the share of its mass in the lungs that falls in the
lesions, and the share a map spread evenly over the lungs would get (the lesions' volume
fraction of the lungs). The figure is the enrichment, mean share / mean chance share, with a
percentile bootstrap CI over the studies; 1 means the map knows nothing about where the
lesions are. Lung voxels at the lung's edge (``explain.rim``) are left out of both shares.
The same figure for two anchor maps (:func:`covidnet.model.explain.anchor_maps`) says what
it is worth: ``density`` needs no model, ``gradient`` is the model's sensitivity alone. It
also draws the top-k true positives (highest scores) with their maps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.evaluate.metrics import figure

#: Written beside the set's report.
MAPS_FILE = "saliency.npz"
FIGURE_FILE = "saliency.png"


def set_saliency(model, load: Callable[[str], np.ndarray], preds: pd.DataFrame, lesions_dir: Path | None,
                 params, hu_window: tuple[float, float], *, threshold: float, reps: int, seed: int,
                 level: float) -> tuple[dict[str, Any], dict]:
    """Maps of every scan of ``preds`` and the lesion check on its true positives.

    Args:
        model: the network in eval mode.
        load: a scan id's tensor ``(1, D, H, W)`` float32.
        preds: ``scan_id, series_uid, label, score`` rows of the set.
        lesions_dir: the synthetic ground truth folder, or None (no check: a real cohort).
        params: :class:`covidnet.model.explain.ExplainParams`.
        hu_window: the model's preprocessing window ``(hu_min, hu_max)``.
        threshold: the operating point that makes a true positive.
        reps, seed, level: the bootstrap over studies.

    Returns:
        ``(summary, maps)``: the figures (``metrics.json``'s ``saliency``) and
        ``{scan_id: (D, H, W) float32}``.
    """
    import torch

    from covidnet.model.explain import anchor_maps, baseline_intensity, saliency

    maps: dict[str, np.ndarray] = {}
    for scan_id in preds["scan_id"]:
        x = torch.from_numpy(load(scan_id)[None])
        maps[scan_id] = saliency(model, x, params, hu_window)[0]
    summary: dict[str, Any] = {"method": params.method, "layer": params.layer if params.method == "gradcam" else None,
                               "baseline_hu": params.baseline_hu if params.method != "gradcam" else None,
                               "rim": params.rim, "n_maps": len(maps)}
    tp = preds[(preds["label"] == 1) & (preds["score"] >= threshold)]
    if lesions_dir is None or not Path(lesions_dir).is_dir():
        summary["reason"] = "no ground truth lesion masks (a real cohort): the maps are not checked"
        return summary, maps
    found = [(r.scan_id, Path(lesions_dir) / f"{r.series_uid}.npy") for r in tp.itertuples()]
    found = [(s, p) for s, p in found if p.is_file()]
    summary["n_true_positives"] = int(len(tp))
    if not found:
        summary["reason"] = f"no true positive with a lesion mask in {lesions_dir}"
        return summary, maps
    labels = np.stack([np.load(p) for _, p in found])
    baseline = baseline_intensity(params, hu_window)
    anchors: dict[str, list[np.ndarray]] = {"density": [], "gradient": []}
    for scan_id, _ in found:
        for name, m in anchor_maps(model, torch.from_numpy(load(scan_id)[None]), baseline).items():
            anchors[name].append(m[0])
    boot = {"reps": reps, "seed": seed, "level": level, "rim": params.rim}
    checked = _enrichment(np.stack([maps[s] for s, _ in found]), labels, **boot)
    if "reason" in checked:
        summary["reason"] = checked["reason"]
        return summary, maps
    summary.update(checked)
    summary["anchors"] = {name: _enrichment(np.stack(m), labels, **boot) for name, m in anchors.items()}
    return summary, maps


def _enrichment(maps: np.ndarray, labels: np.ndarray, *, rim: int, reps: int, seed: int,
                level: float) -> dict[str, Any]:
    """Share, chance share and enrichment of ``maps (N, D, H, W)`` with their bootstrap CIs over the studies."""
    from covidnet.evaluate.metrics import bootstrap
    from covidnet.model.explain import lesion_share

    share, chance = lesion_share(maps, labels, rim=rim)
    keep = np.isfinite(share) & np.isfinite(chance)
    share, chance = share[keep], chance[keep]
    n = len(share)
    if n == 0:
        return {"n_checked": 0, "reason": "no true positive has lesions and map mass inside its lungs"}

    def stat(idx: np.ndarray) -> dict[str, np.ndarray]:
        s, c = share[idx].mean(axis=1), chance[idx].mean(axis=1)
        return {"share": s, "chance": c, "enrichment": s / c}

    point, samples = bootstrap(n, stat, reps=reps, seed=seed)
    out: dict[str, Any] = {"n_checked": n}
    for key in ("share", "chance", "enrichment"):
        out[key] = figure(point[key], samples.get(key), level, "no study to resample")
    return out


def write_maps(path: Path, maps: dict[str, np.ndarray]) -> Path:
    """The set's maps into ``path`` (``saliency.npz``: float16 ``(D, H, W)``, one array per scan id), atomically."""
    from covidnet.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{k: v.astype(np.float16) for k, v in maps.items()})
    return Path(path)


def plot_top(folder: Path, load: Callable[[str], np.ndarray], maps: dict[str, np.ndarray], preds: pd.DataFrame,
             lesions_dir: Path | None, *, threshold: float, top_k: int, slices: int, synthetic: bool) -> Path | None:
    """The ``top_k`` true positives by score, ``slices`` axial slices each (those of most map mass):
    the tensor in grey, the map in colour over it, the planted lesions outlined (synthetic)."""
    from matplotlib.figure import Figure

    tp = preds[(preds["label"] == 1) & (preds["score"] >= threshold)].sort_values("score", ascending=False)
    tp = tp.head(top_k)
    if tp.empty:
        return None
    fig = Figure(figsize=(2.0 * slices, 2.1 * len(tp)))
    for i, r in enumerate(tp.itertuples()):
        volume, m = load(r.scan_id)[0], maps[r.scan_id]
        truth = None
        if lesions_dir is not None and (Path(lesions_dir) / f"{r.series_uid}.npy").is_file():
            truth = np.load(Path(lesions_dir) / f"{r.series_uid}.npy")
        order = np.sort(np.argsort(m.reshape(len(m), -1).sum(axis=1))[::-1][:slices])
        for j, k in enumerate(order):
            ax = fig.add_subplot(len(tp), slices, i * slices + j + 1)
            ax.imshow(volume[k], cmap="gray", vmin=0.0, vmax=0.6)
            ax.imshow(np.ma.masked_less_equal(m[k], 0), cmap="inferno", alpha=0.55)
            if truth is not None and (truth[k] == 2).any():
                ax.contour(truth[k] == 2, levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_axis_off()
            ax.set_title(f"p={r.score:.2f} slice {k}" if j == 0 else f"slice {k}", fontsize=7)
    label = " (SYNTHETIC)" if synthetic else ""
    fig.suptitle(f"Saliency of the top {len(tp)} true positives{label}; cyan: planted lesions", fontsize=9)
    path = Path(folder) / FIGURE_FILE
    fig.savefig(path, dpi=100)
    return path
