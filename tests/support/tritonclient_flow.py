"""tritonclient (HTTP and gRPC) against a running server, as an integrator would use it; prints JSON.

Run in its own process (``python tests/support/tritonclient_flow.py --http HOST:PORT --grpc
HOST:PORT --zip STUDY.zip``): tritonclient's gRPC module registers the protocol's proto under
the same names as KServe's copy, and protobuf refuses both in one process.

For each of ``http`` (default options: binary tensors and outputs), ``http-json`` (JSON data,
no Content-Type, as tritonclient sends it) and ``grpc`` (default: raw contents), the client
reads the model metadata, picks the inputs from it alone (the float input of several
dimensions for a tensor; the BYTES input named for zips for a study), builds each request
from the declared name, datatype and shape (a -1 as 1), sends it, and reads back every output
the metadata names. Printed: per protocol, the metadata it read and, per kind, the outputs.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import numpy as np


def _pick(inputs: list[dict], kind: str) -> tuple[str, str, list[int]]:
    if kind == "tensor":
        spec = next(i for i in inputs if i["datatype"] == "FP32" and len(i["shape"]) > 1)
    else:
        spec = next(i for i in inputs if i["datatype"] == "BYTES" and "zip" in i["name"])
    return spec["name"], spec["datatype"], [1 if int(d) == -1 else int(d) for d in spec["shape"]]


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def flow(protocol: str, url: str, model: str, study_zip: bytes) -> dict:
    if protocol == "grpc":
        import tritonclient.grpc as lib

        client = lib.InferenceServerClient(url=url)
        raw = client.get_model_metadata(model, as_json=True)
        meta = {"inputs": [{**i, "shape": [int(d) for d in i["shape"]]} for i in raw["inputs"]],
                "outputs": [{**o, "shape": [int(d) for d in o["shape"]]} for o in raw["outputs"]]}
        ready = client.is_model_ready(model)
    else:
        import tritonclient.http as lib

        client = lib.InferenceServerClient(url=url)
        meta = client.get_model_metadata(model)
        version = meta["versions"][0]
        meta["by_version_equal"] = client.get_model_metadata(model, model_version=version) == meta
        ready = client.is_model_ready(model, model_version=version)
    binary = protocol != "http-json"
    out = {"metadata": meta, "ready": ready}
    for kind in ("tensor", "study"):
        name, datatype, shape = _pick(meta["inputs"], kind)
        inp = lib.InferInput(name, shape, datatype)
        if kind == "tensor":
            data = np.random.default_rng(3).uniform(0, 1, shape).astype(np.float32)
        else:  # raw bytes where the encoding carries bytes, base64 text in JSON
            data = np.array([study_zip if binary else base64.b64encode(study_zip)], dtype=np.object_)
        if protocol == "grpc":
            inp.set_data_from_numpy(data)
            result = client.infer(model, [inp])
        else:
            inp.set_data_from_numpy(data, binary_data=binary)
            outputs = None if binary else [lib.InferRequestedOutput(o["name"], binary_data=False)
                                           for o in meta["outputs"]]
            result = client.infer(model, [inp], outputs=outputs)
        got = {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
        out[kind] = {name: {"shape": list(v.shape), "values": [float(x) if v.dtype.kind == "f" else _text(x)
                                                                for x in v.ravel()]} for name, v in got.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--zip", required=True)
    ap.add_argument("--model", default="covidnet")
    args = ap.parse_args()
    study = Path(args.zip).read_bytes()
    print(json.dumps({p: flow(p, args.grpc if p == "grpc" else args.http, args.model, study)
                      for p in ("http", "http-json", "grpc")}))


if __name__ == "__main__":
    main()
