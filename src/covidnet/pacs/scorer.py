"""Scoring a retrieved study with the endpoint's own code: in this process, or by calling a running endpoint.

Both give the endpoint's per-study answer (:func:`covidnet.serve.answer.answer`) or the reason
the study cannot be analysed (the endpoint's 400 message):

:class:`LocalScorer`
    loads the model once (:func:`covidnet.serve.source.fetch_model`,
    :func:`covidnet.serve.bundle.load_bundle`) and runs what the server runs per request:
    :func:`covidnet.serve.study.studies_from_folder` (series selection, preprocessing, lesion
    fractions), :func:`covidnet.model.inference.score`, :func:`covidnet.serve.answer.results`.
    Its prediction log rows (:func:`covidnet.monitor.predlog.predictions_from_answers`) are
    committed with the study's state, in one transaction.
:class:`EndpointScorer`
    zips the study and POSTs it as a raw V1 body (``Content-Type: application/zip``, as
    ``covidnet predict`` does); the server logs the prediction itself. A 4xx answer is the
    study's fault (not analysable); no connection or a 5xx is retried with back-off.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.monitor.predlog import Prediction
from covidnet.pacs.params import RetryParams
from covidnet.pacs.retry import http_status, with_retries

#: The ``label`` the series selection's messages start with.
LABEL = "PACS study"


@dataclass(frozen=True)
class Outcome:
    """What scoring one study gave.

    Attributes:
        answer: the per-study answer; None when the study cannot be analysed.
        reason: why not (may name UIDs of the study: it goes into the SR, and redacted elsewhere).
        predictions: prediction log rows to commit with the state (in-process scoring only).
    """

    answer: dict[str, Any] | None
    reason: str | None = None
    predictions: tuple[Prediction, ...] = ()


class LocalScorer:
    """The endpoint's code in this process (see the module docstring).

    Args:
        bundle: a loaded :class:`covidnet.serve.bundle.Bundle`.
        key: the prediction log's hash key.
    """

    def __init__(self, bundle, key: bytes) -> None:
        self.bundle, self.key = bundle, key
        self.serve, self.series, self.body_hu = bundle.serve, bundle.series, bundle.preprocess.body_hu

    @classmethod
    def load(cls, params: dict[str, Any], model_uri: str, key: bytes) -> "LocalScorer":
        """Load ``model_uri`` (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a folder) as ``covidnet serve`` does."""
        from covidnet.serve.bundle import load_bundle
        from covidnet.serve.source import fetch_model
        from covidnet.tracking import mlflow_params

        source = fetch_model(model_uri, mlflow_params(params).tracking_uri)
        scorer = cls(load_bundle(source, params), key)
        scorer._source = source  # keeps a downloaded model folder alive
        return scorer

    def analyse(self, folder: Path, request_id: str) -> Outcome:
        """Select, preprocess and score the study under ``folder``."""
        import numpy as np
        import torch

        from covidnet.model.inference import score
        from covidnet.monitor.predlog import predictions_from_answers
        from covidnet.serve.answer import results
        from covidnet.serve.study import ServeInputError, studies_from_folder

        b = self.bundle
        try:
            studies = studies_from_folder(folder, b.series, b.preprocess, LABEL, b.serve)
        except ServeInputError as exc:
            return Outcome(None, str(exc))
        if len(studies) != 1:
            return Outcome(None, f"{LABEL}: {len(studies)} studies in one retrieved study")
        logits, _ = score(b.net, [torch.from_numpy(np.stack([s.tensor for s in studies]))], b.device)
        infos = [s.info for s in studies]
        out = results(logits, b, infos)
        return Outcome(out[0], None, tuple(predictions_from_answers(out, infos, self.key, request_id)))


class EndpointScorer:
    """A running endpoint (``covidnet serve``) called over HTTP (see the module docstring).

    Args:
        base_url: ``http://HOST:PORT``.
        model: the served model's name.
        timeout_s: seconds to wait for one answer.
        retry: back-off while the endpoint is away.
        key: the hash key (redacted error messages).
        serve, series, body_hu: this machine's ``serve`` and ``series`` params and
            ``preprocess.body_hu``, for the Secondary Capture drawn here.
        stop: set to stop waiting for a retry.
    """

    def __init__(self, base_url: str, model: str, timeout_s: float, retry: RetryParams, key: bytes, serve, series,
                 body_hu: float, stop: threading.Event | None = None) -> None:
        from covidnet.serve.client import endpoints

        self.url = endpoints(base_url, model)["v1"]
        self.timeout_s, self.retry, self.key, self.stop = timeout_s, retry, key, stop
        self.serve, self.series, self.body_hu = serve, series, body_hu

    def analyse(self, folder: Path, request_id: str) -> Outcome:
        """POST the study's zip; the answer, or the endpoint's reason for a 4xx."""
        from covidnet.serve.client import answers, zip_folder

        body = zip_folder(folder)

        def post() -> tuple[int, dict]:
            req = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/zip", "X-Request-Id": request_id})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                status = http_status(exc)
                if status is not None and 400 <= status < 500 and status not in (408, 429):
                    return status, json.loads(exc.read() or b"{}")
                raise

        status, response = with_retries(post, self.retry, "endpoint", self.key, self.stop)
        if status >= 400:
            return Outcome(None, str(response.get("error") or f"HTTP {status}"))
        (answer,) = answers(response)
        return Outcome(answer)
