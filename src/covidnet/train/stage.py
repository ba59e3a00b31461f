"""The ``train`` stage: the preprocessed tensors in, the model folder and an MLflow run out."""

from __future__ import annotations

from typing import Any

import pandas as pd

from covidnet.train.params import TrainResult


def run_train(params: dict[str, Any], paths, resume: str = "auto", track: bool = True,
              progress: bool = True) -> TrainResult:
    """Train on ``paths.preprocessed``; write ``paths.model``, ``paths.train_report`` and checkpoints.

    Args:
        params: merged params (``model``, ``train``, ``preprocess``, ``mlflow``).
        paths: a :class:`covidnet.paths.Paths`.
        resume: ``auto``, ``always`` or ``never`` (:func:`covidnet.train.loop.train_model`).
        track: record an MLflow run.
        progress: progress bars on stderr.
    """
    from covidnet.model.builders import ModelParams
    from covidnet.params import is_synthetic, profile_name, section
    from covidnet.preprocess.params import PreprocessParams, params_dict
    from covidnet.tracking import data_version, git_commit, mlflow_params
    from covidnet.train.loop import train_model
    from covidnet.train.params import TrainParams, TrainPaths

    index = pd.read_csv(paths.preprocessed / "index.csv", dtype=str, keep_default_na=False)
    provenance = {"tensors_version": data_version(paths.preprocessed), "synthetic": str(is_synthetic(params)).lower(),
                  "profile": profile_name(params)}
    return train_model(
        index,
        TrainPaths(preprocessed=paths.preprocessed, model=paths.model, checkpoints=paths.checkpoints,
                   report=paths.train_report),
        section(params, "model", ModelParams),
        section(params, "train", TrainParams),
        params_dict(section(params, "preprocess", PreprocessParams)),
        resume=resume,
        mlflow_params=mlflow_params(params) if track else None,
        provenance=provenance,
        git_commit=git_commit(),
        progress=progress,
    )
