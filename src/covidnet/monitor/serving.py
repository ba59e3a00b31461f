"""What the model server does for monitoring: log every answered study, count it, watch drift.

The KServe model (:mod:`covidnet.serve.kserve_model`) opens a :class:`ServingMonitor` in
``load()``: the prediction log (:mod:`covidnet.monitor.predlog`; a database that cannot be reached
raises :class:`covidnet.monitor.predlog.PredLogError`, so the model never becomes ready and KServe
does not start: no unlogged prediction is ever served), the model's reference profile (from
the served model folder, :mod:`covidnet.model.reference`) and the Prometheus series
(:mod:`covidnet.monitor.prometheus`, in the registry KServe's ``/metrics`` serves), whose rolling
drift window is filled from the log's last rows of this model version.

Per request, :meth:`ServingMonitor.record` appends one row per answered study in one committed
transaction and then updates the metrics; the server calls it before the response is sent,
so an answer the client sees is always in the log. The hospital is the request's
``hospital`` parameter (:func:`request_hospital`), else each study's DICOM InstitutionName.

PCR results can also arrive over HTTP beside the model's routes (:func:`feedback_endpoint`,
``POST /covidnet/feedback`` with a ``text/csv`` body): the same checks and table as
``covidnet monitor feedback FILE``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from covidnet.monitor.predlog import Prediction, PredictionLog, PredLogError, predictions_from_answers

log = logging.getLogger(__name__)

#: The HTTP route of PCR feedback beside the model server's routes.
FEEDBACK_ROUTE = "/covidnet/feedback"


def request_hospital(payload: Any) -> str | None:
    """The ``hospital`` request parameter: V2 ``parameters.hospital``, or V1 ``{"parameters": {"hospital": ...}}``."""
    params = getattr(payload, "parameters", None) if not isinstance(payload, dict) else payload.get("parameters")
    if not isinstance(params, dict):
        return None
    value = params.get("hospital")
    value = getattr(value, "string_param", value)  # a gRPC InferParameter
    if value is None or not str(value).strip():
        return None
    return str(value).strip()


class ServingMonitor:
    """The prediction log and the metrics of one served model.

    Args:
        plog: the open prediction log (with its hash key).
        metrics: the model's :class:`covidnet.monitor.prometheus.MonitorMetrics`.
    """

    def __init__(self, plog: PredictionLog, metrics) -> None:
        self.log = plog
        self.metrics = metrics

    @classmethod
    def open(cls, params: dict[str, Any], bundle, registry=None) -> "ServingMonitor":
        """Open the log and set up the metrics for a loaded :class:`covidnet.serve.bundle.Bundle`.

        Raises:
            PredLogError: the log's database cannot be reached, or no hash key (the server must
                not become ready).
        """
        from covidnet.model.reference import ReferenceProfileError, load_reference
        from covidnet.monitor.params import monitor_params
        from covidnet.monitor.prometheus import MonitorMetrics

        mp = monitor_params(params)
        try:
            plog = PredictionLog.from_params(params)
        except PredLogError:
            log.error("the prediction log cannot be opened: refusing readiness (no prediction is served unlogged)")
            raise
        try:
            reference = load_reference(bundle.model_dir)
        except ReferenceProfileError as exc:
            log.warning("no reference profile, so no drift gauges on /metrics: %s", exc)
            reference = None
        name, version = str(bundle.model["name"]), str(bundle.model["version"])
        metrics = MonitorMetrics(name, version, reference, mp, registry)
        seeded = metrics.seed(plog.recent(mp.metrics_window, name, version))
        log.info("prediction log %s open; drift window seeded with %d logged studies of %s %s", plog.url, seeded,
                 name, version)
        return cls(plog, metrics)

    def record(self, answers: Sequence[dict], infos: Sequence[dict], request_id: str | None = None,
               hospital: str | None = None) -> list[Prediction]:
        """Log one request's answers (committed when this returns), then count them.

        Raises:
            PredLogError: the write failed; the request must fail rather than answer unlogged.
        """
        rows = predictions_from_answers(answers, infos, self.log.key, request_id or uuid.uuid4().hex, hospital)
        self.log.append(rows)
        self.metrics.observe(rows)
        return rows

    def close(self) -> None:
        """Unregister the metrics and release the log's connections."""
        self.metrics.close()
        self.log.close()


def feedback_endpoint(monitor: ServingMonitor) -> Callable[[Any], Awaitable[Any]]:
    """A Starlette endpoint (``app.add_route``) for :data:`FEEDBACK_ROUTE`: PCR feedback CSV into the log.

    The body is the CSV of ``covidnet monitor feedback`` (``patient_hash`` or ``patient_id``,
    ``pcr_result``, ``pcr_date``; ids hashed with the server's key). Answers 200 with the counts
    and the rejected CSV lines by reason, 400 when the CSV cannot be read at all, 415 for another
    content type. The body size is capped by the server's body limit (``serve.max_body_mb``).
    """
    from starlette.responses import JSONResponse

    from covidnet.monitor.feedback import FeedbackError, ingest_feedback_frame, parse_feedback

    async def feedback(request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("text/csv", "application/csv"):
            return JSONResponse({"error": f"content type {kind or 'none'!r}: send PCR results as text/csv with "
                                          "columns patient_hash (or patient_id), pcr_result, pcr_date"},
                                status_code=415)
        try:
            frame = parse_feedback(await request.body(), "request body")
            result = await asyncio.to_thread(ingest_feedback_frame, frame, monitor.log, "http")
        except FeedbackError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"rows": result.rows, "ingested": result.ingested, "rejected": result.rejected,
                             "summary": result.summary()})

    return feedback
