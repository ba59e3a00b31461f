"""A decoded request body to the studies it names: what the KServe model's ``preprocess`` calls.

The model gets one of (this module imports nothing from kserve):

* ``bytes``: the body of a V1 request (``POST /v1/models/<name>:predict``) sent with
  ``Content-Type: application/zip``: one raw study zip, with no JSON or base64 step;
* a dict with ``instances`` (V1 JSON): each instance a base64 zip (a string or
  ``{"b64": ...}``), an ``s3://`` reference (a string or ``{"s3": ...}``) or a nested-list tensor;
* a V2 request, in any encoding (:class:`covidnet.serve.oip.OipRequest`, or KServe's
  ``InferRequest`` of a gRPC call): its inputs decoded by :func:`covidnet.serve.oip.decode_input`.

The work comes in stages, and each limit is checked before the stage it guards:

1. the request's shape: names, datatypes, shapes and the count of studies it names, against
   ``serve.max_studies`` (nothing decoded yet);
2. the data: base64 decoded, tensors checked; every zip's directory read (members, declared
   sizes, zip slip) and every ``s3://`` reference listed, against the per-zip limits and the
   request's totals ``serve.max_request_members`` and ``serve.max_request_uncompressed_mb``
   (nothing extracted or downloaded yet);
3. extraction and download, then series selection on the headers: the studies found, against
   ``serve.max_studies`` again (a zip may hold several; nothing preprocessed yet);
4. preprocessing, QC and lesion fractions of each selected series.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from typing import Any

import numpy as np

from covidnet.serve.bundle import Bundle
from covidnet.serve.oip import OipRequest, check_request, decode_input, from_infer_request
from covidnet.serve.study import (
    ServeInputError,
    Study,
    extract_members,
    open_zip,
    read_study,
    select_studies,
    tensor_batch,
)

#: Content types of a raw study zip body.
ZIP_CONTENT_TYPES = ("application/zip", "application/x-zip-compressed")

Item = tuple[str, str, Any]  # (kind: zip | ref | tensor, label, value)


def request_studies(payload: Any, bundle: Bundle, content_type: str | None = None) -> list[Study]:
    """Every study (or tensor) a request names, read and preprocessed, in the request's order.

    Args:
        payload: what KServe decoded (see the module docstring).
        bundle: the loaded model.
        content_type: the request's ``Content-Type`` header (for a raw body).

    Raises:
        ServeInputError: an unsupported content type, input or datatype, a body that is neither
            V1 nor V2, no study at all, a limit passed (module docstring), and every error of the
            study readers (named by input and element, e.g. ``input 'study_zip'[1]: ...``).
    """
    return read_items(request_items(payload, bundle, content_type), bundle)


def request_items(payload: Any, bundle: Bundle, content_type: str | None = None) -> list[Item]:
    """Stages 1 and 2 of the request's decoding without reading any zip: ``(kind, label, value)``
    per zip (bytes), reference (``s3://...``) or tensor (``(1, D, C, C)`` float32)."""
    max_studies = bundle.serve.max_studies
    if isinstance(payload, (bytes, bytearray, memoryview)):
        kind = (content_type or "").split(";")[0].strip().lower()
        if kind not in ZIP_CONTENT_TYPES:
            raise ServeInputError(f"request body: Content-Type {kind[:60]!r} is neither application/json (V1/V2 "
                                  f"JSON) nor one of {', '.join(ZIP_CONTENT_TYPES)} (a raw study zip)",
                                  "request.content_type")
        items = [("zip", "request body (zip)", payload)]
    elif isinstance(payload, dict) and "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise ServeInputError("request 'instances': must be a list", "request.instances")
        if len(instances) > max_studies:
            raise ServeInputError(f"request: {len(instances)} instances > serve.max_studies {max_studies}",
                                  "request.max_studies")
        items = [it for i, inst in enumerate(instances) for it in _v1_item(inst, bundle, f"instances[{i}]")]
    elif isinstance(payload, OipRequest) or hasattr(payload, "inputs"):
        request = payload if isinstance(payload, OipRequest) else from_infer_request(payload)
        items = [it for t, spec in check_request(request, bundle.shape, max_studies) for it in decode_input(t, spec)]
    else:
        raise ServeInputError("request body: expected V2 'inputs', V1 'instances' (a list) or a raw zip "
                              "(Content-Type: application/zip)", "request.format")
    if not items:
        raise ServeInputError("request: no study and no tensor given", "request.empty")
    if len(items) > max_studies:
        raise ServeInputError(f"request: {len(items)} studies or tensors > serve.max_studies {max_studies}",
                              "request.max_studies")
    return items


def _v1_item(item: Any, bundle: Bundle, label: str) -> list[Item]:
    """A V1 instance: a base64 zip (str, or ``{"b64": str}``), an ``s3://`` reference (str, or
    ``{"s3": str}``) or a tensor ``(1, D, C, C)`` (or a batch of them)."""
    from covidnet.serve.study import decode_base64

    if isinstance(item, dict) and "s3" in item or isinstance(item, str) and item.startswith("s3://"):
        return [("ref", label, item["s3"] if isinstance(item, dict) else item)]
    if isinstance(item, str) or (isinstance(item, dict) and "b64" in item):
        text = item["b64"] if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ServeInputError(f"{label}: 'b64' must be a string", "input.data")
        return [("zip", label, decode_base64(text, label))]
    if isinstance(item, dict):
        raise ServeInputError(f"{label}: an object instance needs 'b64' (a base64 zip) or 's3' (a reference)",
                              "input.structure")
    return [("tensor", f"{label}[{i}]", x) for i, x in enumerate(tensor_batch(item, bundle.shape, label))]


def read_items(items: list[Item], bundle: Bundle) -> list[Study]:
    """Stages 2 (zip directories, S3 listings, the request's totals) to 4: the studies, in order."""
    from covidnet.serve.s3 import S3Study

    sp = bundle.serve
    sources = {}  # item index -> opened zip or planned reference
    for i, (kind, label, value) in enumerate(items):
        if kind == "zip":
            sources[i] = open_zip(value, sp, label)
    for i, (kind, label, value) in enumerate(items):
        if kind == "ref":
            sources[i] = S3Study.plan(value, sp, label)
    _check_totals(sources.values(), sp)
    with ExitStack() as stack:
        found: list[list] = []
        for i, (kind, label, value) in enumerate(items):
            if kind == "tensor":
                found.append([value])
                continue
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="covidnet-serve-"))
            source = sources[i]
            if kind == "zip":
                extract_members(source, tmp, sp)
            else:
                source.fetch(tmp, sp)
            found.append(select_studies(tmp, bundle.series, label))
        total = sum(len(f) for f in found)
        if total > sp.max_studies:
            raise ServeInputError(f"request: {total} studies found in its zips and references > serve.max_studies "
                                  f"{sp.max_studies}", "request.max_studies")
        return [Study(np.asarray(s, np.float32), {}) if isinstance(s, np.ndarray) else
                read_study(s, bundle.preprocess, sp) for f in found for s in f]


def _check_totals(sources, sp) -> None:
    """The request's zips (declared sizes) and references (listed sizes; a zip object counts as
    its compressed size, its own limits apply once it is downloaded) together."""
    sources = list(sources)
    members, size = sum(s.n_files for s in sources), sum(s.n_bytes for s in sources)
    if members > sp.max_request_members:
        raise ServeInputError(f"request: {members} files in its zips and references together > "
                              f"serve.max_request_members {sp.max_request_members}", "request.max_members")
    if size > sp.max_request_uncompressed_mb * 2**20:
        raise ServeInputError(f"request: {size} bytes uncompressed in its zips and references together > "
                              f"serve.max_request_uncompressed_mb {sp.max_request_uncompressed_mb:g} MiB",
                              "request.max_uncompressed")
