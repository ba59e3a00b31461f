"""COVIDNet as a KServe model: DICOM study zips, s3:// references or tensors in, per-study answers out.

Run: ``python serving/covidnet_model.py --model_dir models/covidnet --http_port 8080`` (any
KServe ModelServer flag works), or ``covidnet serve``. The logic lives in
:mod:`covidnet.serve`; series selection and preprocessing are the pipeline's own functions.
"""

import argparse
import asyncio
import json
from pathlib import Path

import kserve
import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput

from covidnet import serve as core
from covidnet.params import load_params, section
from covidnet.predict import score


class COVIDNetModel(kserve.Model):
    def __init__(self, name: str, model_dir: Path, params: dict):
        super().__init__(name)
        self.model_dir, self.params = Path(model_dir), params
        self.ready = False

    def load(self) -> bool:
        self.bundle = core.load_bundle(self.model_dir, self.params, self.name)
        score(self.bundle.net, [torch.zeros((1, *self.bundle.shape))], self.bundle.device)  # warm-up
        self.ready = True
        return self.ready

    def _item(self, item, label: str) -> list[core.Study]:
        """A V1 instance or a V2 element: a base64 zip (str, or ``{"b64": str}``), an ``s3://``
        reference (str, or ``{"s3": str}``) or a tensor."""
        if isinstance(item, dict) and "s3" in item or isinstance(item, str) and item.startswith("s3://"):
            return core.study_s3(item["s3"] if isinstance(item, dict) else item, self.bundle, label)
        if isinstance(item, (str, bytes)) or (isinstance(item, dict) and "b64" in item):
            return core.study_zip(item["b64"] if isinstance(item, dict) else item, self.bundle, label)
        return [core.Study(x, {}) for x in core.tensor_batch(item, self.bundle.shape, label)]

    def _studies(self, payload) -> list[core.Study]:
        if isinstance(payload, dict) and isinstance(payload.get("instances"), list):
            return [s for i, item in enumerate(payload["instances"]) for s in self._item(item, f"instances[{i}]")]
        if not isinstance(payload, InferRequest):
            raise core.ServeInputError("request body: expected V2 'inputs' or V1 'instances' (a list)")
        studies = []
        for inp in payload.inputs:
            label = f"input {inp.name!r}"
            if inp.datatype == "BYTES":
                studies += [s for i, z in enumerate(inp.data or []) for s in self._item(z, f"{label}[{i}]")]
            elif inp.datatype in ("FP32", "FP16", "FP64"):
                studies += self._item(np.asarray(inp.data, np.float32).reshape(inp.shape), label)
            else:
                raise core.ServeInputError(f"{label}: datatype {inp.datatype} is not BYTES (base64 study zip) "
                                           "or FP32/FP16 (preprocessed tensor)")
        return studies

    async def preprocess(self, payload, headers=None) -> dict:
        # Off the event loop: a slow upload must not hold up health checks or other requests.
        return await asyncio.to_thread(self._preprocess, payload)

    def _preprocess(self, payload) -> dict:
        try:
            studies = self._studies(payload)
        except (core.ServeInputError, ValueError) as exc:  # ValueError: V2 data that do not fill its shape
            raise InvalidInput(str(exc)) from None
        if not studies:
            raise InvalidInput("request: no study and no tensor given")
        if len(studies) > self.bundle.serve.max_studies:
            raise InvalidInput(f"request: {len(studies)} studies > serve.max_studies {self.bundle.serve.max_studies}")
        return {"x": np.stack([s.tensor for s in studies]), "info": [s.info for s in studies],
                "v2": isinstance(payload, InferRequest), "id": getattr(payload, "id", None)}

    async def predict(self, payload: dict, headers=None) -> dict:
        logits, _ = await asyncio.to_thread(score, self.bundle.net, [torch.from_numpy(payload["x"])], self.bundle.device)
        return {**payload, "logits": logits}

    def postprocess(self, result: dict, headers=None, response_headers=None):
        out = core.results(result["logits"], self.bundle, result["info"])
        if not result["v2"]:
            return {"predictions": out}
        n = [len(out)]
        return InferResponse(response_id=result["id"] or "", model_name=self.name, infer_outputs=[
            InferOutput("covid19_probability", n, "FP32", [r["covid19_probability"] for r in out]),
            InferOutput("decision", n, "BYTES", [r["decision"] for r in out]),
            InferOutput("result", n, "BYTES", [json.dumps(r) for r in out])], model_version=out[0]["model"]["version"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", default=None, help="model folder (default: paths.model in the params)")
    parser.add_argument("--params", default="params.yaml", help="params file (serve, series, evaluate, paths)")
    parser.add_argument("--profile", default=None, help="params profile to apply")
    args, _ = parser.parse_known_args(argv)
    params = load_params(args.params, profile=args.profile)
    # KServe's --model_name defaults to "model": then the name comes from serve.model_name.
    name = args.model_name if args.model_name != "model" else section(params, "serve", core.ServeParams).model_name
    model = COVIDNetModel(name, Path(args.model_dir or params["paths"]["model"]), params)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                       workers=args.workers).start([model])


if __name__ == "__main__":
    main()
