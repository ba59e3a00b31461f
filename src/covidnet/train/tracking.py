"""A training's MLflow run: one run across resumes, params once, metrics per epoch, the model at the end.

The tracking server and experiment come from :mod:`covidnet.tracking`; this module only
records one training in them. The run id is kept in the checkpoint, so a resumed training
goes on logging into the run it started.
"""

from __future__ import annotations

import math

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
        provenance: string tags (git commit, data version, synthetic).
    """

    def __init__(self, mlflow_params, run_id: str | None, config: dict, provenance: dict) -> None:
        import mlflow

        from covidnet.tracking import configure, flatten

        experiment = configure(mlflow_params)
        self.mlflow = mlflow
        run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment)
        self.run_id = run.info.run_id
        if run_id is None:
            mlflow.log_params({k: v for k, v in flatten("", config).items()})
            mlflow.set_tags({f"covidnet.{k}": v for k, v in provenance.items()})

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
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        example = np.zeros((1, *shape), dtype=np.float32)
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape), "ct")]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "logit")]))
        self.mlflow.log_metrics({"best_val_auc": result.best["val_auc"] if result.best["val_auc"] is not None
                                 else float("nan"), "best_val_loss": result.best["val_loss"],
                                 "best_epoch": result.best_epoch})
        self.mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                      serialization_format="pt2")
        # The weights, the model card and the preprocessing parameters, for serving.
        self.mlflow.log_artifacts(str(paths.model), artifact_path=MODEL_ARTIFACT)
        self.mlflow.end_run()
