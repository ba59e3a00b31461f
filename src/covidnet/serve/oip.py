"""The Open Inference Protocol (V2) side of the server: what the model declares, and one decoder.

No kserve import: the KServe model (:mod:`covidnet.serve.kserve_model`) and the routes
(:mod:`covidnet.serve.routes`) hand this module what arrived, in any of the three encodings,

* JSON (``POST /v2/models/<name>/infer``, ``data`` in the JSON; with or without a
  ``Content-Type``, as tritonclient's JSON mode sends it),
* the binary tensor extension (``Inference-Header-Content-Length``: a JSON header, then the
  tensors' raw bytes, ``parameters.binary_data_size`` each; tritonclient's HTTP default),
* gRPC ``ModelInfer``, with typed ``contents`` or ``raw_input_contents`` (tritonclient's gRPC
  default),

as :class:`OipRequest` of :class:`Tensor` (:func:`parse_rest`, :func:`from_infer_request`), and
:func:`decode_input` turns each tensor into what it names, by the same rules whatever the
encoding: :data:`INPUTS` (its name, datatype and shape) say what is accepted, and
:func:`model_metadata` says it to clients (``GET /v2/models/<name>``, gRPC ``ModelMetadata``).

Every refusal is a :class:`covidnet.serve.study.ServeInputError` naming the input and the rule;
no message quotes the request's bytes (only sizes, shapes, datatypes and the input's name).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covidnet.serve.study import ServeInputError

#: The zip signatures (local file header; empty archive) that mark a BYTES element as raw zip bytes.
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

#: The tensor datatypes of the protocol (a datatype outside them is not echoed back).
V2_DATATYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
                          "FP32", "FP64", "BYTES", "BF16"})

_NUMPY = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2")}


@dataclass(frozen=True)
class InputSpec:
    """One input the model accepts (every input is optional; a request names at least one study)."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the batch: one element per study)
    kind: str               # study_zip | study_ref | tensor
    description: str


@dataclass(frozen=True)
class OutputSpec:
    name: str
    datatype: str
    description: str


#: What the V2 response carries, each of shape ``[N]`` (one element per study).
OUTPUTS = (
    OutputSpec("covid19_probability", "FP32", "COVID-19 probability (calibrated when a calibrator was fitted)"),
    OutputSpec("decision", "BYTES", "covid19 or other_pneumonia, the score at the threshold"),
    OutputSpec("result", "BYTES", "one JSON document per study: probability, score, threshold, model, series, QC"),
)


def input_specs(shape: tuple[int, ...]) -> tuple[InputSpec, ...]:
    """The inputs of a model whose card gives the input ``shape`` ``(1, D, C, C)``."""
    batch = (-1, *shape)
    return (
        InputSpec("study_zip", "BYTES", (-1,), "study_zip",
                  "one DICOM study zip per element: raw bytes (binary extension, gRPC) or base64 text (JSON)"),
        InputSpec("study_ref", "BYTES", (-1,), "study_ref",
                  "one s3://bucket/key per element: a .zip object or a prefix of DICOM files"),
        InputSpec("tensor", "FP32", batch, "tensor", "preprocessed volumes (B, 1, D, C, C), values in [0, 1]"),
        InputSpec("tensor_fp16", "FP16", batch, "tensor", "the same as FP16"),
    )


def model_metadata(name: str, version: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """The V2 model metadata (``$metadata_model_response``) of the served model."""
    return {"name": name, "versions": [version], "platform": "pytorch",
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in input_specs(shape)],
            "outputs": [{"name": o.name, "datatype": o.datatype, "shape": [-1]} for o in OUTPUTS]}


@dataclass
class Tensor:
    """One input as it arrived: ``data`` (JSON or gRPC typed contents) or ``raw`` (binary bytes)."""

    name: str
    datatype: str
    shape: Any
    data: Any = None
    raw: bytes | memoryview | None = None


@dataclass
class OipRequest:
    """A V2 request in any encoding (``json``, ``binary`` or ``grpc``).

    ``outputs`` lists the requested outputs as ``(name, binary_data)`` (None: all of them);
    ``binary_output`` is the request's ``binary_data_output`` (always, for gRPC).
    """

    inputs: list[Tensor]
    id: str | None = None
    parameters: dict = field(default_factory=dict)
    outputs: list[tuple[str, bool | None]] | None = None
    binary_output: bool = False
    encoding: str = "json"


def _err(message: str, rule: str, name: str | None = None) -> ServeInputError:
    """A refusal; an input name not among the model's is the client's text, so it is kept out of logs."""
    return ServeInputError(message, rule=rule, private={"name": [name]} if name else None)


def parse_rest(body: bytes, header_length: str | None = None) -> OipRequest:
    """A V2 REST body: JSON, or (with ``Inference-Header-Content-Length``) the binary tensor extension.

    Only the structure is checked here (JSON object, ``inputs``, each input's ``name``,
    ``datatype``, ``shape`` and either ``data`` or ``parameters.binary_data_size``, the binary
    sizes adding up to the body); the values are :func:`decode_input`'s.

    Raises:
        ServeInputError: naming the field and the rule it broke.
    """
    body = memoryview(body)
    n = len(body)
    if header_length is not None:
        try:
            json_len = int(header_length)
        except ValueError:
            raise _err("Inference-Header-Content-Length: not a whole number", "request.header_length") from None
        if not 0 < json_len <= n:
            raise _err(f"Inference-Header-Content-Length {json_len}: must be in 1..{n} (the body's length)",
                       "request.header_length")
    else:
        json_len = n
    try:
        head = json.loads(bytes(body[:json_len]))
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise _err(f"request body: not JSON{where} (the V2 request is a JSON object; with binary tensors, "
                   "Inference-Header-Content-Length gives the JSON part's length)", "request.json") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list) or not head["inputs"]:
        raise _err("request body: a V2 request is a JSON object with a non-empty list 'inputs'", "request.inputs")
    params = head.get("parameters") or {}
    if not isinstance(params, dict):
        raise _err("request 'parameters': must be an object", "request.parameters")
    rid = head.get("id")
    outputs = _requested_outputs(head.get("outputs"))
    inputs, offset = [], json_len
    for i, raw in enumerate(head["inputs"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise _err(f"inputs[{i}]: an input is an object with a string 'name'", "input.structure")
        name = raw["name"]
        label = f"input {name!r}"
        if not isinstance(raw.get("datatype"), str) or "shape" not in raw:
            raise _err(f"{label}: 'datatype' (a string) and 'shape' are required", "input.structure", name)
        p = raw.get("parameters") or {}
        size = p.get("binary_data_size") if isinstance(p, dict) else None
        if "data" in raw and size is not None:
            raise _err(f"{label}: both 'data' and parameters.binary_data_size given", "input.structure", name)
        if size is not None:
            if header_length is None:
                raise _err(f"{label}: parameters.binary_data_size without the Inference-Header-Content-Length header",
                           "request.header_length", name)
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _err(f"{label}: parameters.binary_data_size must be a whole number >= 0", "input.binary_size",
                           name)
            if offset + size > n:
                raise _err(f"{label}: parameters.binary_data_size {size} runs past the body's end "
                           f"({n - offset} bytes left)", "input.binary_size", name)
            inputs.append(Tensor(name, raw["datatype"], raw["shape"], raw=body[offset:offset + size]))
            offset += size
        elif "data" in raw:
            inputs.append(Tensor(name, raw["datatype"], raw["shape"], data=raw["data"]))
        else:
            raise _err(f"{label}: neither 'data' nor parameters.binary_data_size", "input.structure", name)
    if offset != n:
        raise _err(f"request body: {n - offset} bytes after the binary tensors that no input's "
                   "binary_data_size accounts for", "input.binary_size")
    return OipRequest(inputs, rid if isinstance(rid, str) else None, params, outputs,
                      params.get("binary_data_output") is True, "binary" if header_length is not None else "json")


def _requested_outputs(outputs: Any) -> list[tuple[str, bool | None]] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise _err("request 'outputs': must be a list", "request.outputs")
    out = []
    for o in outputs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise _err("request 'outputs': each is an object with a string 'name'", "request.outputs")
        p = o.get("parameters") or {}
        out.append((o["name"], p.get("binary_data") if isinstance(p, dict) else None))
    return out


def from_infer_request(request: Any) -> OipRequest:
    """A KServe ``InferRequest`` (gRPC ``ModelInfer``, or one built in process) as an :class:`OipRequest`.

    KServe puts gRPC ``raw_input_contents`` on each input's ``_raw_data`` and leaves ``data``
    empty (``kserve/protocol/infer_type.py``, ``InferRequest.__init__``); typed ``contents`` are in
    ``data``.
    """
    inputs = []
    for inp in request.inputs:
        raw = getattr(inp, "_raw_data", None)
        inputs.append(Tensor(inp.name, inp.datatype, list(inp.shape), data=None if raw is not None else inp.data,
                             raw=raw))
    params = {k: _parameter(v) for k, v in (request.parameters or {}).items()}
    # gRPC answers in raw_output_contents, as Triton does: tritonclient reads outputs from there
    # (or bytes_contents), never from fp32_contents
    binary = bool(getattr(request, "from_grpc", False))
    outputs = None
    if getattr(request, "request_outputs", None):
        outputs = [(o.name, None) for o in request.request_outputs]
    return OipRequest(inputs, request.id or None, params, outputs, binary,
                      "grpc" if getattr(request, "from_grpc", False) else "json")


def _parameter(value: Any) -> Any:
    """A gRPC ``InferParameter`` as its plain value (REST parameters are plain already)."""
    which = getattr(value, "WhichOneof", None)
    if which is None:
        return value
    choice = which("parameter_choice")
    return getattr(value, choice) if choice else None


def check_request(request: OipRequest, shape: tuple[int, ...], max_studies: int) -> list[tuple[Tensor, InputSpec]]:
    """Names, datatypes, shapes and the study count of a request, before any data is decoded.

    Raises:
        ServeInputError: an unknown or repeated input name, a datatype or shape the model's
            metadata does not declare, an unknown requested output, more elements than
            ``serve.max_studies``.
    """
    specs = {s.name: s for s in input_specs(shape)}
    out, seen, total = [], set(), 0
    for t in request.inputs:
        label = f"input {t.name!r}"
        spec = specs.get(t.name)
        if spec is None:
            raise _err(f"{label}: not an input of this model (its inputs: {', '.join(specs)}; see the model "
                       "metadata, GET /v2/models/<name>)", "input.name", t.name)
        if t.name in seen:
            raise _err(f"{label}: given twice", "input.name")
        seen.add(t.name)
        if t.datatype != spec.datatype:
            given = t.datatype if t.datatype in V2_DATATYPES else "(not a V2 datatype)"
            raise _err(f"{label}: datatype {given}, expected {spec.datatype} (model metadata)", "input.datatype")
        dims = _shape(t, spec)
        t.shape = dims
        total += dims[0]
        out.append((t, spec))
    if total > max_studies:
        raise _err(f"request: {total} studies or tensors > serve.max_studies {max_studies}", "request.max_studies")
    if request.outputs is not None:
        known = {o.name for o in OUTPUTS}
        for name, _ in request.outputs:
            if name not in known:
                raise _err(f"requested output {name!r}: not an output of this model (its outputs: "
                           f"{', '.join(sorted(known))})", "request.outputs", name)
    return out


def _shape(t: Tensor, spec: InputSpec) -> list[int]:
    """The shape as whole numbers matching the spec (a tensor may leave out the batch: one volume)."""
    label = f"input {t.name!r}"
    s = t.shape
    if not isinstance(s, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in s):
        raise _err(f"{label}: shape must be a list of whole numbers", "input.shape")
    s = list(s)
    if spec.kind == "tensor" and len(s) == len(spec.shape) - 1:
        s = [1, *s]
    expected = "[" + ", ".join("B" if d == -1 else str(d) for d in spec.shape) + "]"
    if len(s) != len(spec.shape) or any(d != e for d, e in zip(s[1:], spec.shape[1:])) or s[0] < 1:
        shown = str(s) if len(s) <= 8 else f"of {len(s)} dimensions"
        raise _err(f"{label}: shape {shown} does not match the model's {expected} with B >= 1 (model metadata, "
                   "from the model card)", "input.shape")
    return s


def decode_input(t: Tensor, spec: InputSpec) -> list[tuple[str, str, Any]]:
    """One checked input (:func:`check_request`) to what it names: ``(kind, label, value)`` per
    element: ``("zip", label, bytes)``, ``("ref", label, "s3://...")`` or ``("tensor", label,
    array (1, D, C, C) float32)``. The same rules for JSON, binary and gRPC, typed or raw.

    Raises:
        ServeInputError: data that do not fill the shape (too few, too many, a binary size that
            is not a whole number of elements), non-numeric or non-finite tensor values, BYTES
            elements that are not zips (raw or base64) or ``s3://bucket/key`` references.
    """
    label = f"input {t.name!r}"
    count = math.prod(t.shape)
    if spec.datatype == "BYTES":
        elements = _bytes_elements(t, count, label)
        if spec.kind == "study_ref":
            return [("ref", f"{label}[{i}]", _reference(e, f"{label}[{i}]")) for i, e in enumerate(elements)]
        return [("zip", f"{label}[{i}]", _zip_bytes(e, f"{label}[{i}]")) for i, e in enumerate(elements)]
    x = _numbers(t, count, spec.datatype, label).reshape(t.shape)
    if not np.isfinite(x).all():
        raise _err(f"{label}: holds NaN or infinite values", "tensor.finite")
    return [("tensor", f"{label}[{i}]", v) for i, v in enumerate(x)]


def _numbers(t: Tensor, count: int, datatype: str, label: str) -> np.ndarray:
    dtype = _NUMPY[datatype]
    if t.raw is not None:
        size = len(t.raw)
        if size != count * dtype.itemsize:
            raise _err(f"{label}: {size} bytes of binary data, but shape {t.shape} of {datatype} takes "
                       f"{count * dtype.itemsize} ({dtype.itemsize} bytes per value)", "input.size")
        return np.frombuffer(t.raw, dtype).astype(np.float32)
    data = t.data
    if isinstance(data, np.ndarray):
        a = data
    else:
        try:
            a = np.asarray(data if isinstance(data, list) else [data])
        except (ValueError, TypeError):
            raise _err(f"{label}: 'data' is not a list of numbers (ragged or mixed)", "input.data") from None
    if a.dtype.kind not in "fiu":
        raise _err(f"{label}: 'data' must hold numbers only", "input.data")
    if a.size != count:
        raise _err(f"{label}: {a.size} values given, shape {t.shape} takes {count}", "input.size")
    # JSON FP16 values pass through float16, so they are the values a binary FP16 tensor would hold
    return a.astype(dtype).astype(np.float32).ravel()


def _bytes_elements(t: Tensor, count: int, label: str) -> list[bytes | str]:
    if t.raw is not None:
        return _deserialize_bytes(t.raw, t.shape, count, label)
    data = t.data
    if isinstance(data, (str, bytes)):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(e, (str, bytes)) for e in data):
        raise _err(f"{label}: 'data' must be a list of strings (BYTES elements)", "input.data")
    if len(data) != count:
        raise _err(f"{label}: {len(data)} elements given, shape {t.shape} takes {count}", "input.size")
    return data


def _deserialize_bytes(raw: bytes | memoryview, shape: list[int], count: int, label: str) -> list[memoryview]:
    """Triton's BYTES serialization: per element a 4-byte little-endian length, then the bytes."""
    view, out, offset = memoryview(raw), [], 0
    while offset < len(view):
        if len(view) - offset < 4:
            raise _err(f"{label}: binary BYTES data ends inside an element's 4-byte length", "input.size")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if length > len(view) - offset:
            raise _err(f"{label}: binary BYTES element {len(out)} declares {length} bytes, {len(view) - offset} "
                       "follow (each element: a 4-byte little-endian length, then the bytes)", "input.size")
        out.append(view[offset:offset + length])
        offset += length
        if len(out) > count:
            break
    if len(out) != count:
        raise _err(f"{label}: {len(out) if len(out) <= count else 'more'} elements in the binary data, shape "
                   f"{shape} takes {count}", "input.size")
    return out


def _zip_bytes(e: bytes | memoryview | str, label: str) -> bytes | memoryview:
    """A study_zip element: raw zip bytes (binary data) as they are, anything else read as base64
    (text in JSON is always base64)."""
    from covidnet.serve.study import decode_base64

    if not isinstance(e, str) and bytes(e[:4]) in ZIP_MAGIC:
        return e
    if isinstance(e, str) and e.startswith("s3://") or not isinstance(e, str) and bytes(e[:5]) == b"s3://":
        raise _err(f"{label}: an s3:// reference; send references in input 'study_ref'", "input.study_ref")
    return decode_base64(e if isinstance(e, str) else bytes(e), label)


def _reference(e: bytes | memoryview | str, label: str) -> str:
    if not isinstance(e, str):
        try:
            e = bytes(e).decode("utf-8")
        except UnicodeDecodeError:
            raise _err(f"{label}: not UTF-8 text (an s3://bucket/key reference)", "ref.format") from None
    if not e.startswith("s3://") or "/" not in e[5:].strip("/") or len(e) > 2048:
        raise _err(f"{label}: not an s3://bucket/key reference", "ref.format")
    return e
