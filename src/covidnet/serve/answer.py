"""Logits to per-study answers: probability, decision at the threshold, QC flags against the training reference.

The answer of one study (:func:`answer`) is what the V1 ``predictions`` and the V2 ``result``
output carry, what the prediction log records and what ``covidnet predict`` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidnet.preprocess.qc import PIXEL_QC
from covidnet.serve.params import ServeParams

if TYPE_CHECKING:
    from covidnet.serve.bundle import Bundle


def qc_reference(table, percentiles: tuple[float, float] = (1.0, 99.0), margin: float = 0.0,
                 source: str = "qc.csv") -> dict[str, Any]:
    """Reference range of each pixel QC value (:data:`covidnet.preprocess.qc.PIXEL_QC`) from a training
    QC table (``preprocess``'s ``qc.csv``).

    Rows with an ``error`` are dropped; when a ``split`` column names a ``train`` split, only its
    rows count. Each range is the ``percentiles`` of the column, widened by ``margin`` times its
    width on each side.
    """
    t = table
    if "error" in t:
        t = t[t["error"].fillna("").astype(str) == ""]
    if "split" in t and (t["split"] == "train").any():
        t = t[t["split"] == "train"]
    ranges = {}
    for f in PIXEL_QC:
        v = t[f].dropna().to_numpy(float) if f in t else np.empty(0)
        if v.size:
            lo, hi = np.percentile(v, percentiles)
            ranges[f] = [float(lo - margin * (hi - lo)), float(hi + margin * (hi - lo))]
    return {"source": f"{source} ({len(t)} scans, p{percentiles[0]:g}..p{percentiles[1]:g}, margin {margin:g})",
            "ranges": ranges}


def load_qc_reference(model_dir: Path | str, card, sp: ServeParams, fallback: Path | None = None) -> dict | None:
    """The QC reference for a model folder: the card's ``qc_reference`` (a path relative to the
    folder), else ``model_dir/qc.csv``, else ``fallback`` (this machine's ``preprocessed/qc.csv``);
    None when none exists. A registered model takes no fallback: this machine's data may not be
    what it was trained on."""
    import pandas as pd

    model_dir = Path(model_dir)
    candidates = ([model_dir / card.qc_reference] if card.qc_reference else []) + [model_dir / "qc.csv"]
    if fallback is not None:
        candidates.append(Path(fallback))
    for f in candidates:
        if f.is_file():
            return qc_reference(pd.read_csv(f), sp.qc_percentiles, sp.qc_margin, source=str(f))
    return None


def qc_check(qc: dict | None, reference: dict | None) -> dict | None:
    """Each QC value with the reference range and ``in_range`` (None when either is missing)."""
    if not qc:
        return None
    ranges = (reference or {}).get("ranges", {})
    fields = {}
    for f in PIXEL_QC:
        v, r = qc.get(f), ranges.get(f)
        ok = None if v is None or r is None else bool(r[0] <= v <= r[1])
        fields[f] = {"value": v, "in_range": ok, "range": r}
    flagged = [f for f, x in fields.items() if x["in_range"] is False]
    return {"reference": (reference or {}).get("source"), "all_in_range": None if reference is None else not flagged,
            "out_of_range": flagged, "fields": fields}


def results(logits: np.ndarray, bundle: Bundle, infos: list[dict]) -> list[dict]:
    """Per-study answers for a batch of logits ``(B,)`` (see :func:`answer`)."""
    from covidnet.model.inference import sigmoid

    s = sigmoid(logits)
    p = bundle.calibrator.apply(s)
    return [answer(a, b, bundle.threshold, bundle.model, {**info, "qc_check": qc_check(info.get("qc"), bundle.qc_reference)})
            for a, b, info in zip(s, p, infos)]


def answer(score: float, probability: float, threshold: float, model: dict, info: dict | None) -> dict:
    """The result of one study (JSON-ready).

    ``score`` is the network's sigmoid output, ``probability`` the calibrated one (equal when no
    calibrator exists); the decision compares ``score`` with the threshold, the operating point
    the evaluation figures were computed at.
    """
    info = info or {}
    return {"covid19_probability": float(probability), "score": float(score), "threshold": float(threshold),
            "decision": "covid19" if score >= threshold else "other_pneumonia", "model": model,
            "study_uid": info.get("study_uid"), "series_uid": info.get("series_uid"),
            "selection": info.get("selection"), "qc": info.get("qc"), "qc_check": info.get("qc_check"),
            "lesions": info.get("lesions")}
