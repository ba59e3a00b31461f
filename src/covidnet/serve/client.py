"""The client side of the endpoint (``covidnet predict``): zip a study, send it, read the answers.

Three ways to send a study to a server at ``base_url`` serving model ``model``:

``binary`` (default for a folder)
    ``POST /v1/models/<model>:predict`` with ``Content-Type: application/zip`` and the zip as
    the body: no base64, no JSON around it (KServe passes a non-JSON body to the model as is);
``base64``
    ``POST /v2/models/<model>/infer``, an Open Inference Protocol request with the zip base64
    encoded in one BYTES element (about a third larger, and decoded on the server);
an ``s3://`` reference
    the same V2 request with the reference instead of the zip: the server fetches the study.

Every way returns the per-study answers (the ``result`` documents of
:func:`covidnet.serve.answer.answer`).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from covidnet.errors import CovidnetError, InputError, MissingInputError

ENCODINGS = ("binary", "base64")


class PredictError(CovidnetError, RuntimeError):
    """The server refused a request (its status and message are kept) or could not be reached."""


def zip_folder(folder: Path | str) -> bytes:
    """Every file under ``folder`` (any depth) in one zip (deflated), paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"{folder}: DICOM folder not found")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def v2_zip_request(zips: list[bytes]) -> dict:
    """An Open Inference Protocol request: one BYTES element (base64 zip) per study."""
    return {"inputs": [{"name": "study_zip", "shape": [len(zips)], "datatype": "BYTES",
                        "data": [base64.b64encode(z).decode("ascii") for z in zips]}]}


def v2_reference_request(uris: list[str]) -> dict:
    """An Open Inference Protocol request naming studies in object storage (``s3://bucket/key``)."""
    return {"inputs": [{"name": "study_ref", "shape": [len(uris)], "datatype": "BYTES", "data": list(uris)}]}


def endpoints(base_url: str, model: str) -> dict[str, str]:
    """The V1 predict and V2 infer URLs of ``model`` on the server at ``base_url``.

    Raises:
        ValueError: ``base_url`` is not ``http(s)://host[:port]`` (e.g. a full endpoint URL).
    """
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
        raise InputError(f"--url {base_url!r}: give the server's base URL, http(s)://HOST[:PORT], without a path")
    base = f"{parts.scheme}://{parts.netloc}"
    return {"v1": f"{base}/v1/models/{model}:predict", "v2": f"{base}/v2/models/{model}/infer"}


def post(url: str, body: bytes, content_type: str, timeout: float) -> dict:
    """POST ``body`` and return the JSON answer.

    Raises:
        PredictError: the server answered with an error, or cannot be reached.
    """
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise PredictError(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
    except urllib.error.URLError as exc:
        raise PredictError(f"{url}: cannot reach the server ({exc.reason})") from None


def answers(response: dict) -> list[dict]:
    """The per-study answers of a V1 (``predictions``) or V2 (output ``result``) response."""
    if "predictions" in response:
        return list(response["predictions"])
    outputs = {o["name"]: o for o in response.get("outputs", [])}
    if "result" not in outputs:
        raise PredictError(f"response has neither 'predictions' nor a 'result' output: {str(response)[:300]}")
    return [json.loads(r) for r in outputs["result"]["data"]]


def send_study(target: str | Path, base_url: str, model: str, encoding: str = "binary",
            timeout: float = 600.0) -> list[dict]:
    """Send one study (a DICOM folder, or an ``s3://`` reference) and return its answers.

    Args:
        target: a folder holding the study's DICOM files (any depth), or ``s3://bucket/key``.
        base_url: the server, ``http://HOST:PORT``.
        model: the served model's name (``serve.model_name``).
        encoding: ``binary`` (the zip as the body of a V1 request) or ``base64`` (V2 JSON).
        timeout: seconds to wait for the answer.

    Raises:
        PredictError: the server refused the study (its message is kept) or cannot be reached.
        FileNotFoundError: the folder does not exist.
        ValueError: an unknown encoding or a bad URL.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {ENCODINGS}")
    urls = endpoints(base_url, model)
    if str(target).startswith("s3://"):
        body = json.dumps(v2_reference_request([str(target)])).encode()
        return answers(post(urls["v2"], body, "application/json", timeout))
    data = zip_folder(target)
    if encoding == "binary":
        return answers(post(urls["v1"], data, "application/zip", timeout))
    return answers(post(urls["v2"], json.dumps(v2_zip_request([data])).encode(), "application/json", timeout))
