"""Serving without KServe: request bodies in, model tensors and per-study answers out.

The KServe model (``serving/covidnet_model.py``) only translates between HTTP and these
functions, so everything here is testable without a server and imports no kserve:

* :func:`extract_zip` unpacks one uploaded study zip into a folder, refusing members that
  escape it (zip slip), too many members and too many uncompressed bytes (zip bomb);
* :func:`studies_from_folder` runs the very functions the pipeline runs —
  :func:`covidnet.dicom.index_tree` (series selection) and
  :func:`covidnet.preprocess.preprocess_series` — and returns one ``(1, D, C, C)`` tensor per
  study with the chosen SeriesInstanceUID, why it was chosen, and the QC values;
* :func:`tensor_batch` checks a preprocessed tensor against the model card's input shape;
* :func:`load_bundle` loads a model folder once (network, card, calibrator, threshold);
* :func:`results` turns logits into the per-study answers (:func:`answer`);
* :func:`zip_folder` and :func:`post_study` are the client side (``covidnet predict``).

Every bad input raises :class:`ServeInputError` with a message naming the problem; the server
answers it with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from covidnet.dicom import SeriesParams, SeriesReadError, index_tree
from covidnet.metrics import Calibrator
from covidnet.preprocess import PreprocessParams, preprocess_series


class ServeInputError(ValueError):
    """A request the model cannot answer; the message names the offending part."""


@dataclass(frozen=True)
class ServeParams:
    """The ``serve`` section of params.yaml."""

    model_name: str = "covidnet"
    threshold: float | None = None       # None: evaluate.threshold
    max_uncompressed_mb: float = 2048.0  # zip bomb guard, per uploaded zip
    max_members: int = 20000             # zip bomb guard, per uploaded zip
    max_studies: int = 16                # studies answered in one request

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"serve.threshold must be in [0, 1], got {self.threshold}")
        for name in ("max_uncompressed_mb", "max_members", "max_studies"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serve.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Study:
    """One study ready for the network: its tensor ``(1, D, C, C)`` float32 and what to report."""

    tensor: np.ndarray
    info: dict[str, Any]


def extract_zip(data: bytes, dest: Path | str, params: ServeParams, label: str = "zip") -> int:
    """Unpack a zip safely into ``dest``; returns the number of files written.

    Raises:
        ServeInputError: not a zip; a member with an absolute path, a drive or ``..`` (zip
            slip); more than ``params.max_members`` members; more than
            ``params.max_uncompressed_mb`` uncompressed (declared or actually read).
    """
    dest = Path(dest)
    cap = int(params.max_uncompressed_mb * 1024 * 1024)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ServeInputError(f"{label}: not a zip archive ({exc})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > params.max_members:
            raise ServeInputError(f"{label}: {len(members)} members > serve.max_members {params.max_members}")
        for m in zf.infolist():
            p = PurePosixPath(m.filename.replace("\\", "/"))
            if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
                raise ServeInputError(f"{label}: unsafe member path {m.filename!r} (absolute or '..': zip slip)")
        declared = sum(m.file_size for m in members)
        if declared > cap:
            raise ServeInputError(f"{label}: {declared} bytes uncompressed > serve.max_uncompressed_mb "
                                  f"{params.max_uncompressed_mb:g} MiB (zip bomb guard)")
        written = 0
        for i, m in enumerate(members):
            target = dest / f"{i:06d}_{PurePosixPath(m.filename.replace(chr(92), '/')).name}"
            try:
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > cap:  # sizes in the headers can lie
                            raise ServeInputError(f"{label}: more than serve.max_uncompressed_mb "
                                                  f"{params.max_uncompressed_mb:g} MiB uncompressed (zip bomb guard)")
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
                raise ServeInputError(f"{label}: member {m.filename!r} cannot be read ({exc})") from None
    return len(members)


def studies_from_folder(root: Path | str, series: SeriesParams, preprocess: PreprocessParams,
                        label: str = "zip") -> list[Study]:
    """Select one series per study under ``root`` and preprocess it as the pipeline does.

    Raises:
        ServeInputError: no DICOM file; a study without an eligible series (each series'
            reason is named, e.g. ``modality MR is not CT`` or ``gap in slice positions``);
            pixel data that cannot be read.
    """
    index = index_tree(root, series)
    if index.series.empty:
        reasons = sorted(set(index.skipped["reason"]))[:3]
        raise ServeInputError(f"{label}: no DICOM files ({len(index.skipped)} file(s) skipped: {'; '.join(reasons)})")
    out = []
    for study_uid, group in index.series.groupby("study_uid", sort=True):
        chosen = group[group["selected"]]
        if chosen.empty:
            why = "; ".join(f"series {r.series_uid}: {r.reason}" for r in group.itertuples())
            raise ServeInputError(f"{label}: study {study_uid} has no usable CT series ({why})")
        row = chosen.iloc[0]
        files = index.files[index.files["series_uid"] == row["series_uid"]]
        try:
            tensor, qc = preprocess_series(files, root, preprocess, shape=(int(row["rows"]), int(row["columns"])))
        except SeriesReadError as exc:
            raise ServeInputError(f"{label}: series {row['series_uid']}: {exc}") from None
        qc = {**qc, "n_slices": int(len(files)),
              "slice_spacing_mm": float(np.median(np.diff(files["position_mm"]))) if len(files) > 1 else None}
        out.append(Study(tensor.astype(np.float32), {
            "study_uid": str(study_uid), "series_uid": str(row["series_uid"]), "patient_id": str(row["patient_id"]),
            "selection": str(row["selection"]), "qc": {k: _json_float(v) for k, v in qc.items()}}))
    return out


def tensor_batch(array: Any, shape: tuple[int, ...], label: str = "tensor") -> np.ndarray:
    """A batch ``(B, 1, D, C, C)`` float32 from an array of that shape or one ``(1, D, C, C)``.

    Raises:
        ServeInputError: wrong shape (the expected one is named), not numeric, not finite.
    """
    try:
        x = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ServeInputError(f"{label}: not a numeric array ({exc})") from None
    if x.shape == tuple(shape):
        x = x[None]
    if x.ndim != len(shape) + 1 or x.shape[1:] != tuple(shape) or x.shape[0] == 0:
        raise ServeInputError(f"{label}: shape {list(x.shape)} does not match the model's input "
                              f"[B, {', '.join(map(str, shape))}] (from the model card)")
    if not np.isfinite(x).all():
        raise ServeInputError(f"{label}: holds NaN or infinite values")
    return x


@dataclass(frozen=True)
class Bundle:
    """What serving loads once: the network, the card's preprocessing, selection rules and decision."""

    net: Any
    preprocess: PreprocessParams
    series: SeriesParams
    shape: tuple[int, ...]
    calibrator: Calibrator
    threshold: float
    model: dict[str, Any]
    serve: ServeParams


def load_bundle(model_dir: Path | str, params: dict[str, Any], name: str | None = None) -> Bundle:
    """Load a model folder for serving, with the preprocessing parameters of its card.

    The calibrator is ``model_dir/calibrator.json``, else ``paths.calibrator``, else none; the
    threshold ``serve.threshold``, else ``evaluate.threshold``. Series selection follows the
    ``series`` params (one process). Raises FileNotFoundError / ParamsError naming the file.
    """
    from covidnet.params import section
    from covidnet.predict import load_model

    model_dir = Path(model_dir)
    net, card = load_model(model_dir)
    sp = section(params, "serve", ServeParams)
    pre = PreprocessParams(**{**card["config"]["preprocess"], "workers": 1})
    shape = tuple(card["config"]["model"].get("input_shape") or (1, pre.depth, pre.crop, pre.crop))
    cal = next((f for f in (model_dir / "calibrator.json", Path(params["paths"]["calibrator"])) if f.is_file()), None)
    calibrator = Calibrator.from_dict(json.loads(cal.read_text()) if cal else {"kind": "none"})
    threshold = sp.threshold if sp.threshold is not None else float(params["evaluate"]["threshold"])
    model = {"name": card.get("name", name or sp.model_name), "version": model_version(model_dir, card),
             "mlflow_run_id": card.get("mlflow_run_id"), "synthetic": card.get("synthetic"),
             "calibrator": calibrator.kind}
    return Bundle(net, pre, replace(section(params, "series", SeriesParams), workers=1), shape, calibrator,
                  threshold, model, sp)


def study_zip(b64: Any, bundle: Bundle, label: str = "zip") -> list[Study]:
    """A base64 study zip (str or bytes) to its studies: unzip safely, select, preprocess."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ServeInputError(f"{label}: not base64 ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="covidnet-serve-") as tmp:
        extract_zip(data, tmp, bundle.serve, label)
        return studies_from_folder(tmp, bundle.series, bundle.preprocess, label)


def results(logits: np.ndarray, bundle: Bundle, infos: list[dict]) -> list[dict]:
    """Per-study answers for a batch of logits (see :func:`answer`)."""
    from covidnet.predict import sigmoid

    s = sigmoid(logits)
    p = bundle.calibrator.apply(s)
    return [answer(a, b, bundle.threshold, bundle.model, info) for a, b, info in zip(s, p, infos)]


def model_version(model_dir: Path | str, card: dict) -> str:
    """The card's ``version`` if a registry set one, else ``sha256:`` of the weights (12 hex)."""
    if card.get("version"):
        return str(card["version"])
    digest = hashlib.sha256((Path(model_dir) / "weights.pt").read_bytes()).hexdigest()
    return f"sha256:{digest[:12]}"


def answer(score: float, probability: float, threshold: float, model: dict, info: dict | None) -> dict:
    """The result of one study (JSON-ready).

    ``score`` is the network's sigmoid output, ``probability`` the calibrated one (equal when no
    calibrator exists); the decision compares ``score`` with the threshold, the operating point
    the evaluation figures were computed at.
    """
    info = info or {}
    return {"covid19_probability": float(probability), "score": float(score), "threshold": float(threshold),
            "decision": "covid19" if score >= threshold else "other_pneumonia", "model": model,
            "study_uid": info.get("study_uid"), "series_uid": info.get("series_uid"),
            "selection": info.get("selection"), "qc": info.get("qc")}


def _json_float(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v.item() if isinstance(v, np.generic) else v


# --- client side --------------------------------------------------------------------------

def zip_folder(folder: Path | str) -> bytes:
    """Every file under ``folder`` (any depth) in one zip, paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: DICOM folder not found")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def v2_zip_request(zips: list[bytes]) -> dict:
    """An Open Inference Protocol request: one BYTES element (base64 zip) per study."""
    return {"inputs": [{"name": "study_zip", "shape": [len(zips)], "datatype": "BYTES",
                        "data": [base64.b64encode(z).decode("ascii") for z in zips]}]}


def post_study(folder: Path | str, url: str, timeout: float = 300.0) -> dict:
    """Zip a DICOM folder, POST it to ``url`` (``.../v2/models/<name>/infer``), return the JSON.

    Raises:
        ServeInputError: the server answered with an error (its message is kept).
    """
    import urllib.error
    import urllib.request

    body = json.dumps(v2_zip_request([zip_folder(folder)])).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ServeInputError(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
    except urllib.error.URLError as exc:
        raise ServeInputError(f"{url}: cannot reach the server ({exc.reason})") from None
