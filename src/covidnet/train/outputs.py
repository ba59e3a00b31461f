"""What a finished training leaves behind: the model folder and the stage's report.

* The model folder (through :class:`covidnet.model.card.ModelCard`): the best epoch's
  weights, the card, and the model's reference profile (:mod:`covidnet.model.reference`):
  the QC values of its training scans and its validation scores at the best epoch, what
  serving and the monitor compare live traffic with.
* The report folder: ``metrics.json`` (the best epoch's figures, DVC metrics) and
  ``curve.csv`` (one row per epoch, DVC plots).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from covidnet.atomic import atomic_path, write_csv, write_json
from covidnet.model.card import ModelCard
from covidnet.model.inference import sigmoid
from covidnet.tracking import write_run_record
from covidnet.train.checkpoint import BEST, load_checkpoint
from covidnet.train.params import TrainPaths, TrainResult

log = logging.getLogger(__name__)


def write_outputs(paths: TrainPaths, config: dict, result: TrainResult, provenance: dict,
                  train_rows: pd.DataFrame, val_rows: pd.DataFrame, git_commit: str = "unknown") -> None:
    """The model folder (from ``best.pt``, atomically), the metrics, the curve and the run record.

    Args:
        paths: ``paths.checkpoints`` holds ``best.pt``; ``paths.model`` and ``paths.report``
            are written; ``paths.preprocessed / "qc.csv"`` gives the QC reference.
        config: the run's config (the card's ``config``).
        result: the run's result.
        provenance: string tags for the card (``synthetic``: ``"true"`` marks the metrics).
        train_rows: the train split's index rows (their scans make the QC reference).
        val_rows: the validation split's index rows, in the order of ``best.pt``'s logits.
        git_commit: recorded with the run id in ``paths.report/run.json``
            (:func:`covidnet.tracking.write_run_record`), not in the card.
    """
    best = load_checkpoint(paths.checkpoints / BEST)
    with atomic_path(paths.model, directory=True) as tmp:
        ModelCard.write_weights(tmp, best["model"])
        references = _write_reference(tmp, paths.preprocessed / "qc.csv", train_rows, val_rows,
                                      best.get("val_logits"))
        ModelCard(config=config, best_epoch=result.best_epoch, val_auc=result.best["val_auc"],
                  val_loss=result.best["val_loss"], epochs_run=result.epochs_run,
                  provenance=dict(provenance), **references).write(tmp)
    paths.report.mkdir(parents=True, exist_ok=True)
    write_json(paths.report / "metrics.json", {
        "best_epoch": result.best_epoch, "val_auc": result.best["val_auc"], "val_loss": result.best["val_loss"],
        "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "synthetic": provenance.get("synthetic") == "true",
    })
    write_csv(paths.report / "curve.csv", pd.DataFrame(result.history))
    write_run_record(paths.report, run_id=result.run_id, git_commit=git_commit,
                     model_digest=ModelCard.digest(paths.model))


def _write_reference(model_dir: Path, qc_csv: Path, train_rows: pd.DataFrame, val_rows: pd.DataFrame,
                     val_logits) -> dict[str, Any]:
    """The reference profile (:mod:`covidnet.model.reference`) into ``model_dir``; the card keys naming it."""
    from covidnet.model.reference import reference_tables

    qc = pd.read_csv(qc_csv, dtype={"scan_id": str}) if qc_csv.is_file() else None
    if qc is None:
        log.warning("%s not found: the model gets no QC reference (serving cannot flag or monitor QC drift)", qc_csv)
    if val_logits is None:
        log.warning("the best checkpoint holds no validation logits (written before reference profiles): "
                    "the model gets no score reference")
    scores = None if val_logits is None else sigmoid(val_logits.numpy())
    qc_table, score_table = reference_tables(qc, train_rows["scan_id"].tolist(), val_rows, scores)
    card: dict[str, Any] = {"qc_reference": None, "score_reference": None}
    for key, table, name in (("qc_reference", qc_table, ModelCard.QC_REFERENCE),
                             ("score_reference", score_table, ModelCard.SCORE_REFERENCE)):
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        if table is not None:
            table.to_csv(model_dir / name, index=False)
            card[key] = name
    return card
