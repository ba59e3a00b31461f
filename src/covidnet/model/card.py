"""A trained model folder in, scores and features out: what evaluation and serving share.

A model folder (the ``train`` stage's output) holds ``weights.pt`` (a state dict, loaded
with ``weights_only=True``) and ``model.json`` (the model card: every constructor argument
of the network, the preprocessing parameters, the training summary and provenance).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = "weights.pt"
MODEL_CARD = "model.json"
#: The training run's artifact folder holding the model folder (``train`` logs it, ``evaluate``
#: adds the calibrator): what a registered version is served and monitored from.
MODEL_ARTIFACT = "covidnet"


def download_model_folder(run_id: str, tracking_uri: str, dst: Path | str) -> Path:
    """The :data:`MODEL_ARTIFACT` folder of training run ``run_id`` downloaded into ``dst``.

    Raises:
        mlflow.exceptions.MlflowException, OSError: the run or its folder cannot be read.
    """
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT, dst_path=str(dst),
                                                    tracking_uri=tracking_uri))


def load_model(model_dir: Path | str, device: str = "cpu"):
    """Rebuild the network from its card and load the weights, in eval mode.

    Returns:
        ``(model, card)``.

    Raises:
        FileNotFoundError: the folder lacks ``weights.pt`` or ``model.json`` (named).
    """
    import torch

    from covidnet.model.network import COVIDNet

    model_dir = Path(model_dir)
    for name in (WEIGHTS, MODEL_CARD):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name}: not found (is {model_dir} a trained model folder?)")
    card = json.loads((model_dir / MODEL_CARD).read_text())
    model = COVIDNet(**card["config"]["model"])
    model.load_state_dict(torch.load(model_dir / WEIGHTS, map_location=device, weights_only=True))
    return model.to(device).eval(), card


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
