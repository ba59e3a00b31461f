"""Serving without KServe: what the model loads once, and the per-study answer.

The KServe model (:mod:`covidnet.serve.kserve_model`) only translates between HTTP and the
``covidnet.serve.bundle*`` modules, so everything is testable without a server and imports no kserve:

* this module: the ``serve`` params, :func:`load_bundle` (network, card, calibrator, threshold,
  QC reference; loaded once), the QC flags against the training reference
  (:func:`qc_reference`, :func:`qc_check`), :func:`tensor_batch` and :func:`results` (logits
  to per-study answers, :func:`answer`);
* :mod:`covidnet.serve.source`: the model by MLflow URI (``models:/covidnet@champion``) or folder;
* :mod:`covidnet.serve.request`: a request body (raw zip, V2 inputs, V1 instances) to studies;
* :mod:`covidnet.serve.study`: a study zip, folder or ``s3://`` reference to model tensors, with
  the pipeline's own series selection and preprocessing;
* :mod:`covidnet.serve.lesions`: ground-glass and consolidation fractions of the lung;
* :mod:`covidnet.serve.http`: the request body limit in front of KServe's routes;
* :mod:`covidnet.serve.client`: the client side of ``covidnet predict``.

Every bad input raises :class:`ServeInputError` with a message naming the problem; the server
answers it with HTTP 400.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from covidnet.data.dicom import SeriesParams
from covidnet.evaluate.metrics import Calibrator
from covidnet.params import ParamsError
from covidnet.preprocess.stage import PIXEL_QC, PreprocessParams
from covidnet.errors import CovidnetError

log = logging.getLogger(__name__)


class ServeInputError(CovidnetError, ValueError):
    """A request the model cannot answer; the message names the offending part."""


@dataclass(frozen=True)
class ServeParams:
    """The ``serve`` section of params.yaml (every value comes from there)."""

    model_name: str
    model_uri: str                        # models:/<name>@<alias>, models:/<name>/<version> or a model folder
    threshold: float | None               # None: the version's promoted threshold, else evaluate.threshold
    max_body_mb: float                    # request body limit (MiB), checked before the body is read
    max_uncompressed_mb: float            # zip bomb guard, per uploaded zip
    max_members: int                      # zip bomb guard, per uploaded zip
    max_studies: int                      # studies answered in one request
    qc_percentiles: tuple[float, float]   # reference range of each QC value in training
    qc_margin: float                      # widen that range by this fraction of its width on each side
    lung_hu: tuple[float, float]          # aerated lung incl. ground glass (lung mask seed)
    ggo_hu: tuple[float, float]           # ground-glass opacity
    consolidation_hu: tuple[float, float]
    lung_min_component: float             # keep air regions >= this fraction of the largest one
    lung_closing_px: int                  # 2D closing (px, after subsampling) that takes in lesions at the lung edge
    lesion_max_slices: int                # slices read for the lesion fractions (evenly spaced)
    lesion_max_px: int                    # in-plane size they are subsampled to (at most)
    device: str                           # where the network runs: auto (cuda when available), cpu, cuda

    def __post_init__(self) -> None:
        from covidnet.serve.source import ModelSourceError, parse_model_uri

        if not self.model_uri.strip():
            raise ParamsError(f"serve.model_uri must name a models:/ URI or a folder, got {self.model_uri!r}")
        try:
            parse_model_uri(self.model_uri)
        except ModelSourceError as exc:
            raise ParamsError(f"serve.model_uri: {exc}") from None
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ParamsError(f"serve.threshold must be in [0, 1], got {self.threshold}")
        for name in ("max_body_mb", "max_uncompressed_mb", "max_members", "max_studies", "lesion_max_slices",
                     "lesion_max_px"):
            if getattr(self, name) <= 0:
                raise ParamsError(f"serve.{name} must be > 0, got {getattr(self, name)}")
        for name in ("qc_percentiles", "lung_hu", "ggo_hu", "consolidation_hu"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ParamsError(f"serve.{name} must be [low, high] with low < high, got {[lo, hi]}")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if self.qc_margin < 0 or self.lung_closing_px < 0 or not 0 < self.lung_min_component <= 1:
            raise ParamsError("serve.qc_margin and serve.lung_closing_px must be >= 0, serve.lung_min_component "
                              f"in (0, 1]; got {self.qc_margin}, {self.lung_closing_px}, {self.lung_min_component}")


@dataclass(frozen=True)
class Study:
    """One study ready for the network: its tensor ``(1, D, C, C)`` float32 and what to report."""

    tensor: np.ndarray
    info: dict[str, Any]


def qc_reference(table, percentiles: tuple[float, float] = (1.0, 99.0), margin: float = 0.0,
                 source: str = "qc.csv") -> dict[str, Any]:
    """Reference range of each pixel QC value (:data:`covidnet.preprocess.stage.PIXEL_QC`) from a training
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


def tensor_batch(array: Any, shape: tuple[int, ...], label: str = "tensor") -> np.ndarray:
    """A batch ``(B, 1, D, C, C)`` float32 from an array of that shape or one ``(1, D, C, C)``.

    Raises:
        ServeInputError: wrong shape (the expected one is named), not numeric, not finite.
    """
    try:
        x = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ServeInputError(f"{label}: not a numeric array ({exc})") from None
    if x.shape == tuple(shape):
        x = x[None]
    if x.ndim != len(shape) + 1 or x.shape[1:] != tuple(shape) or x.shape[0] == 0:
        raise ServeInputError(f"{label}: shape {list(x.shape)} does not match the model's input "
                              f"[B, {', '.join(map(str, shape))}] (from the model card)")
    if not np.isfinite(x).all():
        raise ServeInputError(f"{label}: holds NaN or infinite values")
    return x


@dataclass(frozen=True)
class Bundle:
    """What serving loads once: the network, the card's preprocessing, selection rules and decision.

    ``model_dir`` is the local model folder (downloaded from the registry when served by URI):
    its reference profile (``reference/``) is there for the monitor.
    """

    net: Any
    preprocess: PreprocessParams
    series: SeriesParams
    shape: tuple[int, ...]
    calibrator: Calibrator
    threshold: float
    model: dict[str, Any]
    serve: ServeParams
    model_dir: Path
    qc_reference: dict[str, Any] | None = None
    device: str = "cpu"


def load_bundle(source, params: dict[str, Any], name: str | None = None) -> Bundle:
    """Load a model for serving, with the preprocessing parameters of its card.

    Args:
        source: a :class:`covidnet.serve.source.ModelSource` (from :func:`fetch_model`), or a
            model folder.
        params: merged params (``serve``, ``series``, ``evaluate``, ``paths``).
        name: the model's name when neither the registry nor the card gives one.

    The calibrator is the folder's (``evaluate`` logs it with the run); for
    a plain folder without one, ``paths.calibrator``; else none. The threshold is
    ``serve.threshold`` when set, else the registered version's promoted threshold, else
    ``evaluate.threshold``. The QC reference comes from :func:`load_qc_reference`. Series
    selection follows the ``series`` params (one process).

    Raises:
        ModelFolderError: the folder lacks its weights or card (named).
        ParamsError: a bad ``serve`` or ``series`` value (the key is named).
    """
    from covidnet.evaluate.params import EvaluateParams
    from covidnet.model.card import ModelCard
    from covidnet.params import section
    from covidnet.paths import Paths
    from covidnet.serve.source import ModelSource

    src = source if isinstance(source, ModelSource) else ModelSource(model_dir=Path(source), uri=str(source))
    model_dir = src.model_dir
    sp = section(params, "serve", ServeParams)
    device = resolve_device(sp.device)
    net, card = ModelCard.load(model_dir, device=device)
    pre = PreprocessParams(**{**card.config["preprocess"], "workers": 1})
    shape = card.input_shape
    paths = Paths.from_params(params)
    candidates = [model_dir / ModelCard.CALIBRATOR] + ([] if src.registered else [paths.calibrator])
    cal = next((f for f in candidates if f.is_file()), None)
    calibrator = Calibrator.from_dict(json.loads(cal.read_text()) if cal else {"kind": "none"})
    if sp.threshold is not None:
        threshold, threshold_from = sp.threshold, "serve.threshold"
    elif src.threshold is not None:
        threshold, threshold_from = src.threshold, f"version {src.version} tag covidnet.threshold"
    else:
        threshold, threshold_from = section(params, "evaluate", EvaluateParams).threshold, "evaluate.threshold"
    model = {"name": src.name or card.provenance.get("name", name or sp.model_name),
             "version": src.version or card.version(model_dir), "weights": ModelCard.digest(model_dir),
             "uri": src.uri, "alias": src.alias,
             "mlflow_run_id": src.run_id or card.mlflow_run_id, "synthetic": card.provenance.get("synthetic"),
             "calibrator": calibrator.kind, "threshold_from": threshold_from}
    log.info("loaded %s version %s from %s (calibrator %s, threshold %g from %s)", model["name"], model["version"],
             model_dir, calibrator.kind, threshold, threshold_from)
    return Bundle(net, pre, replace(section(params, "series", SeriesParams), workers=1), shape, calibrator,
                  threshold, model, sp, model_dir,
                  load_qc_reference(model_dir, card, sp, None if src.registered else paths.preprocessed / "qc.csv"),
                  device)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsError(f"serve.device: {device!r}, but torch sees no CUDA device")
    return device


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
