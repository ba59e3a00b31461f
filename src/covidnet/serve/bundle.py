"""What serving loads once (:class:`Bundle`): network, card, preprocessing, calibrator, threshold, QC reference.

The KServe model (:mod:`covidnet.serve.kserve_model`) only translates between HTTP and the
``covidnet.serve`` modules, so everything is testable without a server and imports no kserve:

* this module: :func:`load_bundle`;
* :mod:`covidnet.serve.params`: the ``serve`` section of params.yaml;
* :mod:`covidnet.serve.answer`: logits to per-study answers, QC flags against the training
  reference (:func:`~covidnet.serve.answer.qc_reference`, :func:`~covidnet.serve.answer.qc_check`);
* :mod:`covidnet.serve.source`: the model by MLflow URI (``models:/covidnet@champion``) or folder;
* :mod:`covidnet.serve.request`: a request body (raw zip, V2 inputs, V1 instances) to studies;
* :mod:`covidnet.serve.study`: a study zip, folder or ``s3://`` reference to model tensors, with
  the pipeline's own series selection and preprocessing;
* :mod:`covidnet.serve.lesions`: ground-glass and consolidation fractions of the lung;
* :mod:`covidnet.serve.http`: the request body limit in front of KServe's routes;
* :mod:`covidnet.serve.client`: the client side of ``covidnet predict``.

Every bad input raises :class:`covidnet.serve.study.ServeInputError` with a message naming the
problem; the server answers it with HTTP 400.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from covidnet.data.series import SeriesParams
from covidnet.evaluate.metrics import Calibrator
from covidnet.params import ParamsError
from covidnet.preprocess.params import PreprocessParams
from covidnet.serve.answer import load_qc_reference
from covidnet.serve.params import ServeParams

log = logging.getLogger(__name__)


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
