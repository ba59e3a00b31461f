"""A training's MLflow run: one run across resumes, params once, metrics per epoch, the model at the end.

The tracking server and experiment come from :mod:`covidnet.tracking`; this module only
records one training in them. The run id is kept in the checkpoint, so a resumed training
goes on logging into the run it started.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from covidnet.model.card import MODEL_ARTIFACT
from covidnet.train.params import TrainPaths, TrainResult


class MlflowRun:
    """One MLflow run across resumes: params once, metrics per epoch, the model at the end.

    Args:
        mlflow_params: :class:`covidnet.tracking.MlflowParams`.
        run_id: the run to go on with (from the checkpoint), or None to start one, logging
            ``config`` as its params and ``provenance`` as ``covidnet.*`` tags.
        config: the training's config (nested keys flattened with dots).
        provenance: string tags (``tensors_version``, ``synthetic``, ``profile``, ``git_commit``);
            the run is named ``train-<profile>-<tensors hash>``.
        datasets: ``{context: (frame, source)}`` logged as the run's dataset inputs (the
            training and validation tensors' index rows, without patient identifiers).
    """

    def __init__(self, mlflow_params, run_id: str | None, config: dict, provenance: dict,
                 datasets: dict[str, Any] | None = None) -> None:
        import mlflow

        from covidnet.tracking import configure, flatten

        experiment = configure(mlflow_params)
        self.mlflow = mlflow
        name = "-".join(["train", str(provenance.get("profile", "default")),
                         str(provenance.get("tensors_version", "")).split(":")[-1][:8]]).rstrip("-")
        run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment,
                               run_name=None if run_id else name)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: v for k, v in flatten("", config).items()})
            mlflow.set_tags({f"covidnet.{k}": v for k, v in provenance.items()})
            for context, (frame, source) in (datasets or {}).items():
                with warnings.catch_warnings():  # MLflow 3.17 registers its local source class twice and says so
                    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                    dataset = mlflow.data.from_pandas(frame, source=source, name=f"tensors-{context}")
                mlflow.log_input(dataset, context=context)

    def log_epoch(self, row: dict) -> None:
        """The finite figures of one history row, at step ``row["epoch"]``."""
        metrics = {k: float(v) for k, v in row.items() if k != "epoch" and v is not None and math.isfinite(v)}
        self.mlflow.log_metrics(metrics, step=int(row["epoch"]))

    def finish(self, paths: TrainPaths, result: TrainResult, shape: tuple[int, ...], model) -> None:
        """Log the best figures, the best model and the model folder; end the run.

        Args:
            paths: ``paths.model`` is logged as the ``covidnet`` artifact folder.
            result: the run's result (its best figures).
            shape: one input's shape ``(1, D, H, W)``; the logged signature takes
                ``(B, 1, D, H, W)`` float32 and gives ``(B, 1)`` logits.
            model: the best epoch's network, in eval mode, on the CPU.
        """
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        # Two volumes, so the exported (pt2) program keeps the batch dimension dynamic; unnamed
        # tensors, so MLflow's serving check feeds it an array (a named one becomes a dict).
        example = np.zeros((2, *shape), dtype=np.float32)
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1))]))
        self.mlflow.log_metrics({"best_val_auc": result.best["val_auc"] if result.best["val_auc"] is not None
                                 else float("nan"), "best_val_loss": result.best["val_loss"],
                                 "best_epoch": result.best_epoch})
        self.mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                      serialization_format="pt2",
                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        # The weights, the model card and the preprocessing parameters, for serving.
        self.mlflow.log_artifacts(str(paths.model), artifact_path=MODEL_ARTIFACT)
        self.mlflow.end_run()
