"""COVIDNet as a KServe model: DICOM study zips, s3:// references or tensors in, per-study answers out.

Run: ``covidnet serve`` (the champion of the local MLflow store), or ``python
covidnet.serve.kserve_model --model_dir /mnt/models --http_port 8080`` (any KServe ModelServer flag
works). The logic lives in ``covidnet.serve.bundle*``; series selection and preprocessing are the
pipeline's own functions.
"""

import argparse
import asyncio
import json

import kserve
import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput

from covidnet.model.inference import score
from covidnet.monitor.serving import FEEDBACK_ROUTE, ServingMonitor, feedback_endpoint, request_hospital
from covidnet.pacs.worklist import WORKLIST_ROUTE, worklist_endpoint
from covidnet.params import load_params, section
from covidnet.serve.answer import results
from covidnet.serve.bundle import load_bundle
from covidnet.serve.http import BodyLimit
from covidnet.serve.params import ServeParams
from covidnet.serve.request import request_studies
from covidnet.serve.source import fetch_model
from covidnet.serve.study import ServeInputError
from covidnet.tracking import mlflow_params


class COVIDNetModel(kserve.Model):
    def __init__(self, name: str, model_uri: str, params: dict):
        super().__init__(name)
        self.model_uri, self.params = model_uri, params
        self.ready = False

    def load(self) -> bool:
        self.source = fetch_model(self.model_uri, mlflow_params(self.params).tracking_uri)
        self.bundle = load_bundle(self.source, self.params, self.name)
        self.monitor = ServingMonitor.open(self.params, self.bundle)  # log unreachable: raises, never ready
        score(self.bundle.net, [torch.zeros((1, *self.bundle.shape))], self.bundle.device)  # warm-up
        self.ready = True
        return self.ready

    async def preprocess(self, payload, headers=None) -> dict:
        # Off the event loop: a slow upload must not hold up health checks or other requests.
        return await asyncio.to_thread(self._preprocess, payload, (headers or {}).get("content-type"))

    def _preprocess(self, payload, content_type) -> dict:
        try:
            studies = request_studies(payload, self.bundle, content_type)
        except ServeInputError as exc:
            raise InvalidInput(str(exc)) from None
        return {"x": np.stack([s.tensor for s in studies]), "info": [s.info for s in studies],
                "v2": isinstance(payload, InferRequest), "id": getattr(payload, "id", None),
                "hospital": request_hospital(payload)}

    async def predict(self, payload: dict, headers=None) -> dict:
        logits, _ = await asyncio.to_thread(score, self.bundle.net, [torch.from_numpy(payload["x"])], self.bundle.device)
        return {**payload, "logits": logits}

    async def postprocess(self, result: dict, headers=None, response_headers=None):
        out = results(result["logits"], self.bundle, result["info"])  # the per-study answers
        # Logged (committed) and counted before the answer leaves; a failed write fails the request.
        await asyncio.to_thread(self.monitor.record, out, result["info"], result["id"], result["hospital"])
        if not result["v2"]:
            return {"predictions": out}
        n = [len(out)]
        return InferResponse(response_id=result["id"] or "", model_name=self.name, infer_outputs=[
            InferOutput("covid19_probability", n, "FP32", [r["covid19_probability"] for r in out]),
            InferOutput("decision", n, "BYTES", [r["decision"] for r in out]),
            InferOutput("result", n, "BYTES", [json.dumps(r) for r in out])], model_version=out[0]["model"]["version"])


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
    args, _ = build_parser().parse_known_args(argv)
    params = load_params(args.params, profile=args.profile)
    sp = section(params, "serve", ServeParams)
    # KServe's --model_name defaults to "model": then the name comes from serve.model_name.
    name = args.model_name if args.model_name != "model" else sp.model_name
    model = COVIDNetModel(name, args.model_dir or args.model_uri or sp.model_uri, params)
    model.load()
    kserve.model_server.app.add_middleware(BodyLimit, max_bytes=int(sp.max_body_mb * 2**20))
    kserve.model_server.app.add_route(FEEDBACK_ROUTE, feedback_endpoint(model.monitor), methods=["POST"])
    kserve.model_server.app.add_route(WORKLIST_ROUTE, worklist_endpoint(params, model.monitor.log), methods=["GET"])
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                       workers=args.workers).start([model])


if __name__ == "__main__":
    main()
