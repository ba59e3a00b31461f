"""The reference profile of a trained model: what the monitor compares served traffic with.

``train`` writes it into the model folder, so it travels with the model (the folder is logged
to MLflow as the run's ``covidnet`` artifact folder, hence with every registered version):

``reference/qc.csv``
    one row per scan of the *training* split that preprocessing read without error: the
    per-scan QC values of ``preprocess``'s ``qc.csv`` (:data:`covidnet.preprocess.qc.QC_VALUES`: HU percentiles in
    the body, lung fraction, noise in HU, slice count, slice spacing in mm), the hospital and
    the scanner columns. Scan, study and series UIDs are left out: the reference needs none.
``reference/val_scores.csv``
    one row per scan of the validation split: ``label`` (1 = COVID-19), ``score`` (the raw
    sigmoid output of the network at the best epoch, before any calibrator: the ``score``
    the server logs) and ``hospital``.

The model card names both (``qc_reference``, ``score_reference``, paths relative to the
folder); :func:`covidnet.serve.bundle.load_qc_reference` reads ``qc_reference`` for the per-study QC
flags, :func:`load_reference` reads both for drift statistics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidnet.errors import CovidnetError
from covidnet.preprocess.qc import QC_VALUES

log = logging.getLogger(__name__)

#: Descriptive columns kept beside them (no identifiers).
_CONTEXT_COLUMNS = ("hospital", "split", "manufacturer", "model", "kernel")


class ReferenceProfileError(CovidnetError, ValueError):
    """A model folder's reference profile is missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class Reference:
    """A model's reference profile: training QC values and validation scores.

    Attributes:
        qc: one row per training scan, columns :data:`covidnet.preprocess.qc.QC_VALUES` (and context columns).
        scores: ``(n,)`` raw validation scores in [0, 1], or None when the model has none.
        source: where it was read from (for reports).
    """

    qc: pd.DataFrame
    scores: np.ndarray | None
    source: str


def reference_tables(qc: pd.DataFrame | None, train_scan_ids: list[str], val: pd.DataFrame,
                     val_scores: np.ndarray | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The two reference tables from preprocess's ``qc.csv`` and the best epoch's validation scores.

    Args:
        qc: ``preprocess``'s QC table (``scan_id``, ``error``, :data:`covidnet.preprocess.qc.QC_VALUES`, ...), or None.
        train_scan_ids: the scans the model was trained on; only their rows are kept.
        val: the validation rows of the preprocessed index (``label``, ``hospital``), in the
            order of ``val_scores``.
        val_scores: ``(len(val),)`` raw scores (sigmoid of the logits) at the best epoch.

    Returns:
        ``(qc_table, scores_table)``, each None when its input is None.

    Raises:
        ReferenceProfileError: ``qc`` lacks a QC column, or ``val_scores`` does not match ``val``.
    """
    from covidnet.data.cohort import LABEL_TO_INT

    qc_table = None
    if qc is not None:
        missing = [c for c in ("scan_id", *QC_VALUES) if c not in qc.columns]
        if missing:
            raise ReferenceProfileError(f"qc.csv: missing column(s) {missing}; expected preprocess's QC table")
        rows = qc[qc["scan_id"].astype(str).isin(set(map(str, train_scan_ids)))]
        if "error" in rows:
            rows = rows[rows["error"].fillna("").astype(str) == ""]
        keep = [c for c in _CONTEXT_COLUMNS if c in rows.columns] + list(QC_VALUES)
        qc_table = rows[keep].reset_index(drop=True)
    if val_scores is None:
        return qc_table, None
    scores = np.asarray(val_scores, np.float64).ravel()
    if len(scores) != len(val):
        raise ReferenceProfileError(f"validation scores: {len(scores)} values for {len(val)} validation scans")
    table = pd.DataFrame({"label": val["label"].map(LABEL_TO_INT).to_numpy(), "score": scores,
                          "hospital": val["hospital"].to_numpy() if "hospital" in val else ""})
    return qc_table, table


def load_reference(model_dir: Path | str, card=None) -> Reference:
    """Read a model folder's reference profile (the files its card names).

    Args:
        model_dir: a trained model folder.
        card: its :class:`covidnet.model.card.ModelCard` (read from the folder when None).

    Raises:
        ReferenceProfileError: the card names no QC reference (a model trained before reference
            profiles existed) or a file it names is missing or lacks a QC column.
    """
    from covidnet.model.card import ModelCard, ModelFolderError

    model_dir = Path(model_dir)
    if card is None:
        try:
            card = ModelCard.read(model_dir, weights=False)
        except ModelFolderError as exc:
            raise ReferenceProfileError(str(exc)) from None
    name = card.qc_reference
    if not name:
        raise ReferenceProfileError(f"{model_dir / ModelCard.FILE}: names no qc_reference (retrain the model to "
                                    "write its reference profile)")
    qc_path = model_dir / name
    if not qc_path.is_file():
        raise ReferenceProfileError(f"{qc_path}: the model card's qc_reference file is missing")
    qc = pd.read_csv(qc_path)
    missing = [c for c in QC_VALUES if c not in qc.columns]
    if missing:
        raise ReferenceProfileError(f"{qc_path}: missing QC column(s) {missing}")
    scores = None
    if card.score_reference:
        score_path = model_dir / card.score_reference
        if not score_path.is_file():
            raise ReferenceProfileError(f"{score_path}: the model card's score_reference file is missing")
        scores = pd.read_csv(score_path)["score"].to_numpy(np.float64)
    return Reference(qc=qc, scores=scores, source=str(model_dir))
