"""The preprocessed tensors of one split as a dataset, and the collate function of its batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.data.cohort import LABEL_TO_INT
from covidnet.train.params import TrainDataError


class TensorSet:
    """The stored tensors of one split, checked as they are loaded.

    Item ``i`` is ``(x, y, i)``: ``x`` the channel-first volume ``(1, D, H, W)`` float32
    (``H = W`` = the preprocessing crop), ``y`` the label as a float32 scalar (1 for
    COVID-19), ``i`` the row of ``index``.

    Args:
        index: the split's rows of the preprocessed index (``scan_id, label, path``...).
        root: the preprocessed folder ``path`` is relative to.
        shape: the expected tensor shape ``(1, D, H, W)``.
        augment: left-right flips (the last axis), each decided by ``(seed, epoch, i)``
            alone, so the same in any DataLoader worker; set :attr:`epoch` before each epoch.
        seed: the augmentations' seed.
        shift: with ``augment``, a random shift of up to this many voxels along each in-plane
            axis (the volume rolls; 0: none).
        intensity: with ``augment``, a random gain ``1 + u`` and offset ``u / 4``, ``u`` uniform
            in ``[-intensity, intensity]`` (a scanner's calibration; 0: none).
        zoom: with ``augment``, a random in-plane scale ``1 + u`` about the slice centre, ``u``
            uniform in ``[-zoom, zoom]``, trilinear, edges continued (another field of view; 0: none).

    Raises:
        TrainDataError: an unknown label (on construction); a tensor that cannot be read,
            has another shape or holds NaN/inf (on access), naming the scan.
    """

    def __init__(self, index: pd.DataFrame, root: Path, shape: tuple[int, ...], augment: bool = False,
                 seed: int = 0, shift: int = 0, intensity: float = 0.0, zoom: float = 0.0) -> None:
        self.rows = index.reset_index(drop=True)
        self.root = Path(root)
        self.shape = tuple(shape)
        self.augment = augment
        self.seed = seed
        self.shift = shift
        self.intensity = intensity
        self.zoom = zoom
        self.epoch = 0
        bad = sorted(set(self.rows["label"]) - set(LABEL_TO_INT))
        if bad:
            raise TrainDataError(f"{root / 'index.csv'}: unknown label(s) {bad}")
        self.labels = self.rows["label"].map(LABEL_TO_INT).to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        row = self.rows.iloc[i]
        path = self.root / row["path"]
        try:
            x = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise TrainDataError(f"scan {row['scan_id']}: cannot load {path}: {exc}") from exc
        if x.shape != self.shape:
            raise TrainDataError(f"scan {row['scan_id']}: tensor shape {x.shape} != expected {self.shape} ({path})")
        if not np.isfinite(x).all():
            raise TrainDataError(f"scan {row['scan_id']}: tensor has {int((~np.isfinite(x)).sum())} NaN/inf values ({path})")
        if self.augment:
            # Decided by (seed, epoch, sample) alone: the same in any worker, and on a resumed run.
            g = np.random.default_rng([self.seed, self.epoch, i])
            if g.random() < 0.5:
                x = np.ascontiguousarray(x[..., ::-1])
            if self.shift:
                dy, dx = (int(v) for v in g.integers(-self.shift, self.shift + 1, size=2))
                x = np.roll(x, (dy, dx), axis=(-2, -1))
            if self.intensity:
                u = float(g.uniform(-self.intensity, self.intensity))
                x = (x * np.float32(1.0 + u) + np.float32(u / 4)).astype(np.float32)
            if self.zoom:
                x = zoom_in_plane(x, 1.0 + float(g.uniform(-self.zoom, self.zoom)))
        return torch.from_numpy(x), torch.tensor(self.labels[i]), i


def zoom_in_plane(x: np.ndarray, scale: float) -> np.ndarray:
    """``x (1, D, H, W)`` scaled by ``scale`` in each slice about its centre (> 1 enlarges), same shape.

    Linear interpolation; voxels mapped from outside the volume take the nearest edge value.
    """
    from scipy.ndimage import affine_transform

    centre = (np.asarray(x.shape[1:], dtype=np.float64) - 1) / 2
    matrix = np.array([1.0, 1.0 / scale, 1.0 / scale])
    out = affine_transform(x[0], matrix, offset=centre - matrix * centre, order=1, mode="nearest")
    return out[None].astype(np.float32)


def collate(items):
    """Items of :class:`TensorSet` into one batch.

    Args:
        items: ``(x (1, D, H, W), y (), i)`` triples.

    Returns:
        ``(x (B, 1, D, H, W), y (B,), [i, ...])``.
    """
    import torch

    xs, ys, idx = zip(*items)
    return torch.stack(xs), torch.stack(ys), list(idx)
