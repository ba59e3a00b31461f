"""The V2 REST routes the adapter answers itself, ahead of KServe's own at the same paths.

KServe 0.21's V2 REST handlers cannot do what an Open Inference Protocol client expects
(serving/README.md, "KServe's gaps", cites the lines): its infer route takes a body without a
``Content-Type`` for the binary extension and then wants ``Inference-Header-Content-Length``
(tritonclient's JSON mode sends neither), turns a shape that does not fit the data into a 500,
decodes binary BYTES elements as UTF-8 (a raw zip: a 500 whose message is the body), and its
versioned routes answer 501. The routes below are registered on KServe's app before
``ModelServer.start`` adds its own, so Starlette matches them first:

* ``POST /v2/models/{name}[/versions/{version}]/infer``: JSON or the binary tensor extension,
  decoded by :func:`covidnet.serve.oip.parse_rest`, then the model as KServe calls it
  (``Model.__call__``: preprocess, predict, postprocess, with KServe's latency metrics);
* ``GET /v2/models/{name}[/versions/{version}]``: the model metadata with ``versions``;
* ``GET /v2/models/{name}/versions/{version}/ready``.

gRPC stays KServe's (its decoding of ``raw_input_contents`` is sound); only the message size
limit is set (:func:`grpc_body_limit`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from covidnet.serve.oip import parse_rest
from covidnet.serve.study import ServeInputError

V2_MODEL = "/v2/models/{model_name}"
V2_VERSION = "/v2/models/{model_name}/versions/{model_version}"


async def refused_handler(_request: Request, exc: Exception) -> JSONResponse:
    """The answer to a :class:`covidnet.serve.kserve_model.Refused` (already logged): 400, no log line."""
    return JSONResponse({"error": str(exc)}, status_code=400)


def _which(model, request: Request) -> JSONResponse | None:
    """404 for another model or version, 503 before the model is ready; None when it is this one."""
    name, version = request.path_params["model_name"], request.path_params.get("model_version")
    if name != model.name:
        return JSONResponse({"error": f"Model with name {name[:100]} does not exist."}, status_code=404)
    if version is not None and version != model.version:
        return JSONResponse({"error": f"model {model.name} serves version {model.version}; there is no version "
                                      f"{version[:100]} here"}, status_code=404)
    if not model.ready:
        return JSONResponse({"error": f"Model with name {model.name} is not ready."}, status_code=503)
    return None


def add_v2_routes(app, model) -> None:
    """Register the routes on KServe's app (before ``ModelServer.start`` registers KServe's)."""

    async def metadata(request: Request) -> JSONResponse:
        return _which(model, request) or JSONResponse(model.metadata)

    async def ready(request: Request) -> JSONResponse:
        return _which(model, request) or JSONResponse({"name": model.name, "ready": True})

    async def infer(request: Request) -> Response:
        wrong = _which(model, request)
        if wrong is not None:
            return wrong
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await request.body()
        try:
            payload = parse_rest(body, headers.get("inference-header-content-length"))
        except ServeInputError as exc:
            raise model.refuse(exc, model.request_id(headers)) from None
        response, _ = await model(payload, headers=headers)
        return encode(response)

    for path in (V2_MODEL, V2_VERSION):
        app.add_route(path, metadata, methods=["GET"])
        app.add_route(path + "/infer", infer, methods=["POST"])
    app.add_route(V2_VERSION + "/ready", ready, methods=["GET"])


def encode(response: Any) -> Response:
    """An ``InferResponse`` as JSON, or as the binary extension when an output asked for binary data."""
    body, json_length = response.to_rest()
    if json_length is None:
        return JSONResponse(body)
    return Response(body, media_type="application/octet-stream",
                    headers={"inference-header-content-length": str(json_length)})


def grpc_body_limit(args, max_bytes: int) -> None:
    """gRPC's message size limit: ``serve.max_body_mb`` unless ``--grpc_max_receive_message_length``
    was given. KServe hands its import-time arguments (``kserve.model_server.args``), not the
    ModelServer's, to the gRPC server (``model_server.py``, ``GRPCServer(..., kwargs=vars(args))``)."""
    import kserve
    from kserve.constants.constants import MAX_GRPC_MESSAGE_LENGTH

    if args.grpc_max_receive_message_length == MAX_GRPC_MESSAGE_LENGTH:
        kserve.model_server.args.grpc_max_receive_message_length = min(max_bytes, 2**31 - 1)
    else:
        kserve.model_server.args.grpc_max_receive_message_length = args.grpc_max_receive_message_length
