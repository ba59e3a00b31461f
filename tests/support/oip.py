"""One Open Inference Protocol request in each of its encodings, sent as a client sends it, and DICOM that names a patient.

The encoders take an input's declared ``shape`` apart from its data, so a request can say one
shape and carry another (what a broken client does); the REST ones build the body bytes by
hand, the gRPC one a ``ModelInferRequest`` (KServe's copy of the protocol's proto: tritonclient's
copy of the same proto cannot be imported into a process that imported KServe's, so the
tritonclient checks run in their own process, tests/support/tritonclient_flow.py).

* ``json``: V2 JSON, numbers and strings in ``data`` (a BYTES element of ``study_zip`` as base64),
  sent without a Content-Type, as tritonclient's JSON mode does;
* ``binary``: the binary tensor extension (``Inference-Header-Content-Length``, raw tensor
  bytes after the JSON, BYTES elements length-prefixed), tritonclient's HTTP default;
* ``grpc``: ``raw_input_contents``, tritonclient's gRPC default; ``grpc_typed``: ``contents``.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

ENCODINGS = ("json", "binary", "grpc")


@dataclass
class In:
    """One input: ``data`` is a numeric array or a list of bytes (BYTES elements)."""

    name: str
    datatype: str
    shape: list[int]
    data: object


def serve_bundle(**serve):
    """What :func:`covidnet.serve.request.request_studies` reads of a loaded model, without a network:
    the ``serve`` params (the repository's, max_uncompressed_mb 1, max_studies 4, then ``serve``),
    the tiny profile's series and preprocessing, the tests' model input shape."""
    import dataclasses
    from types import SimpleNamespace

    from covidnet.data.series import SeriesParams
    from covidnet.params import load_params, section
    from covidnet.preprocess.params import PreprocessParams
    from covidnet.serve.params import ServeParams
    from support import REPO
    from support.train import PRE, SHAPE

    params = load_params(REPO / "params.yaml", profile="tiny")
    sp = dataclasses.replace(section(params, "serve", ServeParams),
                             **{"max_uncompressed_mb": 1.0, "max_studies": 4, **serve})
    return SimpleNamespace(serve=sp, shape=SHAPE, series=SeriesParams(**{**params["series"], "workers": 1}),
                           preprocess=PreprocessParams(**{**PRE, "dtype": "float16", "body_hu": -500.0,
                                                          "lung_hu": [-950.0, -400.0], "workers": 1}))


def _bytes_payload(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _raw(inp: In) -> bytes:
    if isinstance(inp.data, (bytes, bytearray)):  # already raw (deliberately broken framing or size)
        return bytes(inp.data)
    if inp.datatype == "BYTES":
        return _bytes_payload(list(inp.data))
    return np.ascontiguousarray(inp.data).tobytes()


def _json_data(inp: In) -> list:
    if inp.datatype != "BYTES":
        return np.asarray(inp.data).ravel().tolist()
    if inp.name == "study_zip":
        return [base64.b64encode(e).decode("ascii") for e in inp.data]
    return [e.decode("utf-8", "replace") for e in inp.data]


def rest_json(inputs: list[In], **extra) -> tuple[bytes, dict]:
    body = {"inputs": [{"name": i.name, "datatype": i.datatype, "shape": i.shape, "data": _json_data(i)}
                       for i in inputs], **extra}
    return json.dumps(body).encode(), {}


def rest_binary(inputs: list[In], **extra) -> tuple[bytes, dict]:
    raws = [_raw(i) for i in inputs]
    head = json.dumps({"inputs": [{"name": i.name, "datatype": i.datatype, "shape": i.shape,
                                   "parameters": {"binary_data_size": len(r)}} for i, r in zip(inputs, raws)],
                       **extra}).encode()
    return head + b"".join(raws), {"Inference-Header-Content-Length": str(len(head))}


def grpc_request(inputs: list[In], model: str, raw: bool = True):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    for i in inputs:
        t = req.inputs.add(name=i.name, datatype=i.datatype, shape=i.shape)
        if raw:
            req.raw_input_contents.append(_raw(i))
        elif i.datatype == "BYTES":
            t.contents.bytes_contents.extend(list(i.data))
        elif i.datatype == "FP32":
            t.contents.fp32_contents.extend(np.asarray(i.data, np.float32).ravel().tolist())
        else:
            t.contents.int_contents.extend(np.asarray(i.data).ravel().astype(int).tolist())
    return req


def post(url: str, body: bytes, headers: dict, timeout: float = 120) -> tuple[int, dict, bytes]:
    """POST ``body`` exactly as given (urllib adds no Content-Type when none is given)."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    if "Content-Type" not in headers:
        req.remove_header("Content-type")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass
class Outcome:
    """What a request got: ``ok``, the HTTP status (or gRPC code name), the error message, the outputs."""

    ok: bool
    status: str
    error: str
    outputs: dict


def rest_outcome(status: int, headers: dict, body: bytes) -> Outcome:
    if status != 200:
        try:
            error = json.loads(body).get("error", "")
        except ValueError:
            error = body.decode(errors="replace")
        return Outcome(False, str(status), str(error), {})
    n = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    head = json.loads(body[: int(n)] if n else body)
    outputs, offset = {}, int(n) if n else 0
    for o in head["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            outputs[o["name"]] = list(o["data"])
            continue
        raw = body[offset: offset + size]
        offset += size
        outputs[o["name"]] = (_unpack_bytes(raw) if o["datatype"] == "BYTES"
                              else np.frombuffer(raw, np.float32).tolist())
    return Outcome(True, "200", "", outputs)


def _unpack_bytes(raw: bytes) -> list[str]:
    out, offset = [], 0
    while offset < len(raw):
        (n,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4: offset + 4 + n].decode())
        offset += 4 + n
    return out


def grpc_stub(channel):
    """The protocol's gRPC stub on ``channel``."""
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    return GRPCInferenceServiceStub(channel)


def grpc_outcome(stub, request) -> Outcome:
    import grpc

    try:
        resp = stub.ModelInfer(request, timeout=120)
    except grpc.RpcError as exc:
        return Outcome(False, exc.code().name, exc.details() or "", {})
    outputs = {}
    for i, o in enumerate(resp.outputs):
        if resp.raw_output_contents:
            raw = resp.raw_output_contents[i]
            outputs[o.name] = _unpack_bytes(raw) if o.datatype == "BYTES" else np.frombuffer(raw, np.float32).tolist()
        elif o.datatype == "BYTES":
            outputs[o.name] = [b.decode() for b in o.contents.bytes_contents]
        else:
            outputs[o.name] = list(o.contents.fp32_contents)
    return Outcome(True, "OK", "", outputs)


def send(encoding: str, inputs: list[In], server: dict, **extra) -> Outcome:
    """One request in ``encoding`` (:data:`ENCODINGS` or ``grpc_typed``) to the server of the fixture."""
    if encoding.startswith("grpc"):
        return grpc_outcome(server["grpc_stub"], grpc_request(inputs, server["name"], raw=encoding == "grpc"))
    body, headers = (rest_json if encoding == "json" else rest_binary)(inputs, **extra)
    return rest_outcome(*post(server["infer"], body, headers))


def identifiers(folders) -> set[str]:
    """Every PatientID, PatientName, AccessionNumber and UID in the DICOM files under ``folders``."""
    found = set()
    for f in (f for folder in folders for f in Path(folder).rglob("*")):
        if f.is_file():
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError):
                continue
            if "PatientID" not in ds:
                continue
            found |= {str(ds.PatientID), str(ds.PatientName), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                      str(ds.SOPInstanceUID), str(ds.get("FrameOfReferenceUID", "")), str(ds.AccessionNumber)}
    return {x for x in found if len(x) >= 6}
