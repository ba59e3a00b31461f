"""A decoded request body to the studies it names: what the KServe model's ``preprocess`` calls.

KServe hands the model one of three things (it imports nothing from kserve; a V2 request is
recognised by its ``inputs``):

* ``bytes``: the body of a V1 request (``POST /v1/models/<name>:predict``) sent with
  ``Content-Type: application/zip``: one raw study zip, with no JSON or base64 step (KServe
  passes a body whose content type is not JSON to the model as is; it parses
  ``application/octet-stream`` as JSON, so that one cannot carry a zip);
* a dict with ``instances`` (V1 JSON): each instance a base64 zip (a string or
  ``{"b64": ...}``), an ``s3://`` reference (a string or ``{"s3": ...}``) or a nested-list tensor;
* a V2 ``InferRequest``: BYTES inputs whose elements are base64 zips or ``s3://`` references,
  and FP32/FP16/FP64 inputs holding preprocessed tensors.

Several studies in one request are answered together (up to ``serve.max_studies``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covidnet.serve.bundle import Bundle
from covidnet.serve.study import ServeInputError, Study, tensor_batch

#: Content types of a raw study zip body.
ZIP_CONTENT_TYPES = ("application/zip", "application/x-zip-compressed")


def request_studies(payload: Any, bundle: Bundle, content_type: str | None = None) -> list[Study]:
    """Every study (or tensor) a request names, read and preprocessed.

    Args:
        payload: what KServe decoded (see the module docstring).
        bundle: the loaded model.
        content_type: the request's ``Content-Type`` header (for a raw body).

    Raises:
        ServeInputError: an unsupported content type or datatype, a body that is neither V1 nor
            V2, no study at all, more than ``serve.max_studies``, and every error of the
            study readers (named by input and element, e.g. ``input 'study_zip'[1]: ...``).
    """
    from covidnet.serve.study import study_zip

    if isinstance(payload, (bytes, bytearray, memoryview)):
        kind = (content_type or "").split(";")[0].strip().lower()
        if kind not in ZIP_CONTENT_TYPES:
            raise ServeInputError(f"request body: Content-Type {content_type!r} is neither application/json (V1/V2 "
                                  f"JSON) nor one of {', '.join(ZIP_CONTENT_TYPES)} (a raw study zip)")
        studies = study_zip(payload, bundle, "request body (zip)")
    elif isinstance(payload, dict) and isinstance(payload.get("instances"), list):
        studies = [s for i, item in enumerate(payload["instances"]) for s in _item(item, bundle, f"instances[{i}]")]
    elif hasattr(payload, "inputs"):
        studies = []
        for inp in payload.inputs:
            label = f"input {inp.name!r}"
            if inp.datatype == "BYTES":
                studies += [s for i, z in enumerate(inp.data or []) for s in _item(z, bundle, f"{label}[{i}]")]
            elif inp.datatype in ("FP32", "FP16", "FP64"):
                try:
                    x = np.asarray(inp.data, np.float32).reshape(inp.shape)
                except ValueError as exc:  # data that do not fill the declared shape
                    raise ServeInputError(f"{label}: {exc}") from None
                studies += _item(x, bundle, label)
            else:
                raise ServeInputError(f"{label}: datatype {inp.datatype} is not BYTES (base64 study zip or s3:// "
                                      "reference) or FP32/FP16 (preprocessed tensor)")
    else:
        raise ServeInputError("request body: expected V2 'inputs', V1 'instances' (a list) or a raw zip "
                              "(Content-Type: application/zip)")
    if not studies:
        raise ServeInputError("request: no study and no tensor given")
    if len(studies) > bundle.serve.max_studies:
        raise ServeInputError(f"request: {len(studies)} studies > serve.max_studies {bundle.serve.max_studies}")
    return studies


def _item(item: Any, bundle: Bundle, label: str) -> list[Study]:
    """A V1 instance or a V2 element: a base64 zip (str, or ``{"b64": str}``), an ``s3://``
    reference (str, or ``{"s3": str}``) or a tensor."""
    from covidnet.serve.study import decode_base64, study_s3, study_zip

    if isinstance(item, dict) and "s3" in item or isinstance(item, str) and item.startswith("s3://"):
        return study_s3(item["s3"] if isinstance(item, dict) else item, bundle, label)
    if isinstance(item, (str, bytes)) or (isinstance(item, dict) and "b64" in item):
        return study_zip(decode_base64(item["b64"] if isinstance(item, dict) else item, label), bundle, label)
    return [Study(x, {}) for x in tensor_batch(item, bundle.shape, label)]
