"""COVIDNet as a KServe model: DICOM study zips, s3:// references or tensors in, per-study answers out.

Run: ``covidnet serve`` (the champion of the local MLflow store), or ``python -m
covidnet.serve.kserve_model --model_dir /mnt/models --http_port 8080`` (any KServe ModelServer flag
works). The logic lives in ``covidnet.serve.*`` (the bundle, the request's decoding, the
answer); series selection and preprocessing are the pipeline's own functions. Where KServe
0.21 falls short of the Open Inference Protocol, :mod:`covidnet.serve.routes` answers instead
(serving/README.md, "KServe's gaps").
"""

import argparse
import asyncio
import json
import logging
import re
import uuid

import kserve
import numpy as np
import torch
from kserve import InferOutput, InferResponse
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import RequestedOutput

from covidnet.model.explain import ExplainParams, saliency
from covidnet.model.inference import score
from covidnet.monitor.serving import FEEDBACK_ROUTE, ServingMonitor, feedback_endpoint, request_hospital
from covidnet.pacs.worklist import WORKLIST_ROUTE, worklist_endpoint
from covidnet.params import load_params, section
from covidnet.serve.answer import results
from covidnet.serve.bundle import load_bundle
from covidnet.serve.explain import encode_map, montage_png, request_explain
from covidnet.serve.http import BodyLimit
from covidnet.serve.oip import OipRequest, from_infer_request, model_metadata
from covidnet.serve.params import ServeParams
from covidnet.serve.redact import hashed, install
from covidnet.serve.request import request_studies
from covidnet.serve.source import fetch_model
from covidnet.serve.study import ServeInputError
from covidnet.tracking import mlflow_params

log = logging.getLogger(__name__)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Refused(InvalidInput):
    """A client's mistake, logged already without identifiers: a 400 with the message, logged by no one else."""


class COVIDNetModel(kserve.Model):
    def __init__(self, name: str, model_uri: str, params: dict):
        super().__init__(name)
        self.model_uri, self.params = model_uri, params
        self.ready = False

    def load(self) -> bool:
        self.source = fetch_model(self.model_uri, mlflow_params(self.params).tracking_uri)
        self.bundle = load_bundle(self.source, self.params, self.name)
        self.monitor = ServingMonitor.open(self.params, self.bundle)  # log unreachable: raises, never ready
        self.version = str(self.bundle.model["version"])
        self.metadata = model_metadata(self.name, self.version, self.bundle.shape)
        self.explain = section(self.params, "explain", ExplainParams)
        score(self.bundle.net, [torch.zeros((1, *self.bundle.shape))], self.bundle.device)  # warm-up
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:  # KServe's V2 metadata (gRPC ModelMetadata) reads these
        return self.metadata["inputs"]

    def get_output_types(self) -> list[dict]:
        return self.metadata["outputs"]

    def request_id(self, headers: dict | None, payload=None) -> str:
        """The client's ``x-request-id`` header or V2 ``id`` when it looks like an id, else a new one."""
        for rid in ((headers or {}).get("x-request-id"), getattr(payload, "id", None)):
            if isinstance(rid, str) and _SAFE_ID.match(rid):
                return rid
        return uuid.uuid4().hex

    def refuse(self, exc: ServeInputError, rid: str, grpc: bool = False) -> Exception:
        """Log a refusal (request id, rule, the message with its identifiers hashed); the error to raise."""
        log.warning("request %s refused [%s]: %s", rid, exc.rule, exc.log_text(self.monitor.log.key))
        if grpc:  # KServe's gRPC interceptor logs an InvalidInput's message; a GrpcException it passes on
            from grpc_interceptor.exceptions import InvalidArgument

            return InvalidArgument(details=str(exc))
        return Refused(str(exc))

    async def preprocess(self, payload, headers=None) -> dict:
        # Off the event loop: a slow upload must not hold up health checks or other requests.
        if hasattr(payload, "inputs") and not isinstance(payload, OipRequest):
            payload = from_infer_request(payload)  # KServe's InferRequest: gRPC (raw or typed contents)
        rid = self.request_id(headers, payload)
        try:
            explain = request_explain(payload)
            studies = await asyncio.to_thread(request_studies, payload, self.bundle, (headers or {}).get("content-type"))
        except ServeInputError as exc:
            raise self.refuse(exc, rid, getattr(payload, "encoding", None) == "grpc") from None
        return {"x": np.stack([s.tensor for s in studies]), "info": [s.info for s in studies], "id": rid,
                "oip": payload if isinstance(payload, OipRequest) else None, "hospital": request_hospital(payload),
                "explain": explain}

    async def predict(self, payload: dict, headers=None) -> dict:
        x = torch.from_numpy(payload["x"])
        logits, _ = await asyncio.to_thread(score, self.bundle.net, [x], self.bundle.device)
        maps = None
        if payload["explain"]:
            window = (self.bundle.preprocess.hu_min, self.bundle.preprocess.hu_max)
            maps = await asyncio.to_thread(saliency, self.bundle.net, x.to(self.bundle.device), self.explain, window)
        return {**payload, "logits": logits, "maps": maps}

    async def postprocess(self, result: dict, headers=None, response_headers=None):
        out = results(result["logits"], self.bundle, result["info"])  # the per-study answers
        if result["maps"] is not None:
            for r, x, m in zip(out, result["x"], result["maps"]):
                r["saliency"] = encode_map(m, self.explain.method)
                if result["explain"] == "png":
                    r["saliency_png"] = montage_png(x, m, self.explain.figure_slices)
        # Logged (committed) and counted before the answer leaves; a failed write fails the request.
        await asyncio.to_thread(self.monitor.record, out, result["info"], result["id"], result["hospital"])
        key = self.monitor.log.key
        log.info("request %s answered: %s", result["id"], ", ".join(
            f"{hashed(key, 'study', i['study_uid']) if i.get('study_uid') else 'tensor'} {r['decision']}"
            for r, i in zip(out, result["info"])))
        oip = result["oip"]
        if oip is None:
            return {"predictions": out}
        n = [len(out)]
        outputs = {o.name: o for o in (
            InferOutput("covid19_probability", n, "FP32", [r["covid19_probability"] for r in out]),
            InferOutput("decision", n, "BYTES", [r["decision"] for r in out]),
            InferOutput("result", n, "BYTES", [json.dumps(r) for r in out]))}
        wanted = oip.outputs or [(name, None) for name in outputs]
        requested = None if oip.encoding == "grpc" else [
            RequestedOutput(name, {"binary_data": oip.binary_output if b is None else bool(b)}) for name, b in wanted]
        return InferResponse(response_id=result["id"], model_name=self.name, model_version=self.version,
                             infer_outputs=[outputs[name] for name, _ in wanted], use_binary_outputs=oip.binary_output,
                             requested_outputs=requested)


def build_parser() -> argparse.ArgumentParser:
    """KServe's ModelServer parser plus the model's source and the params file."""
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", default=None, help="serve this model folder (e.g. /mnt/models)")
    parser.add_argument("--model_uri", default=None,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION or a folder (default: serve.model_uri)")
    parser.add_argument("--params", default="params.yaml", help="params file (serve, series, evaluate, mlflow, paths)")
    parser.add_argument("--profile", default=None, help="params profile to apply")
    return parser


def main(argv=None) -> None:
    from covidnet.serve.routes import add_v2_routes, grpc_body_limit, refused_handler

    args, _ = build_parser().parse_known_args(argv)
    params = load_params(args.params, profile=args.profile)
    sp = section(params, "serve", ServeParams)
    # KServe's --model_name defaults to "model": then the name comes from serve.model_name.
    name = args.model_name if args.model_name != "model" else sp.model_name
    model = COVIDNetModel(name, args.model_dir or args.model_uri or sp.model_uri, params)
    model.load()
    app = kserve.model_server.app
    app.add_middleware(BodyLimit, max_bytes=int(sp.max_body_mb * 2**20))
    app.add_exception_handler(Refused, refused_handler)
    add_v2_routes(app, model)
    app.add_route(FEEDBACK_ROUTE, feedback_endpoint(model.monitor), methods=["POST"])
    app.add_route(WORKLIST_ROUTE, worklist_endpoint(params, model.monitor.log), methods=["GET"])
    grpc_body_limit(args, int(sp.max_body_mb * 2**20))
    server = kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                                workers=args.workers)
    install(model.monitor.log.key)  # after KServe configured its log handlers
    server.start([model])


if __name__ == "__main__":
    main()
