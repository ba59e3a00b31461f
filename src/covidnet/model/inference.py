"""Scores and features of a network in eval mode: what training's validation, evaluation and serving share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def score(model, batches: Iterable, device: Any = "cpu", autocast=None, with_features: bool = False
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and optionally pooled features) for batches of tensors.

    Args:
        model: a :class:`covidnet.model.network.COVIDNet` in eval mode.
        batches: tensors ``(B, 1, D, H, W)`` float32.
        device: where to run.
        autocast: a context-manager factory (mixed precision), or None.
        with_features: also return the features before the final fully connected layer.

    Returns:
        ``(logits (N,), features (N, C) or None)``.
    """
    import contextlib

    import torch

    autocast = autocast or contextlib.nullcontext
    logits, feats = [], []
    with torch.no_grad():
        for x in batches:
            with autocast():
                f = model.forward_features(x.to(device))
                logits.append(model.classifier(f).float().squeeze(1).cpu().numpy())
            if with_features:
                feats.append(f.float().cpu().numpy())
    return np.concatenate(logits), (np.concatenate(feats) if with_features else None)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))
