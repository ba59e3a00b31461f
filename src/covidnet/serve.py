"""Serving without KServe: request bodies in, model tensors and per-study answers out.

The KServe model (``serving/covidnet_model.py``) only translates between HTTP and these
functions, so everything here is testable without a server and imports no kserve:

* :func:`extract_zip` unpacks one uploaded study zip into a folder, refusing members that
  escape it (zip slip), too many members and too many uncompressed bytes (zip bomb);
* :func:`studies_from_folder` runs the very functions the pipeline runs —
  :func:`covidnet.dicom.index_tree` (series selection) and
  :func:`covidnet.preprocess.preprocess_series` — and returns one ``(1, D, C, C)`` tensor per
  study with the chosen SeriesInstanceUID, why it was chosen, and the QC values;
* :func:`lung_abnormality` measures ground-glass and consolidation fractions of the lung
  volume by HU thresholds (synthetic-phantom validated only; see serving/README.md);
* :func:`qc_reference` / :func:`qc_check` compare each study's QC values with the range seen
  in training (``qc.csv``);
* :func:`study_s3` fetches a study (a zip object or a prefix of DICOM files) from S3;
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
    """The ``serve`` section of params.yaml (every value comes from there)."""

    model_name: str
    threshold: float | None               # None: evaluate.threshold
    max_uncompressed_mb: float            # zip bomb guard, per uploaded zip
    max_members: int                      # zip bomb guard, per uploaded zip
    max_studies: int                      # studies answered in one request
    qc_percentiles: tuple[float, float]   # reference range of each QC value in training
    qc_margin: float                      # widen that range by this fraction of its width on each side
    lung_hu: tuple[float, float]          # aerated lung incl. ground glass (lung mask seed)
    ggo_hu: tuple[float, float]           # ground-glass opacity
    consolidation_hu: tuple[float, float]
    lung_min_component: float             # keep air regions >= this fraction of the largest one
    lung_closing_px: int                  # 2D closing (px, after subsampling) that takes in lesions at the lung edge
    lesion_max_slices: int                # slices read for the lesion fractions (evenly spaced)
    lesion_max_px: int                    # in-plane size they are subsampled to (at most)
    device: str                           # where the network runs: auto (cuda when available), cpu, cuda

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"serve.threshold must be in [0, 1], got {self.threshold}")
        for name in ("max_uncompressed_mb", "max_members", "max_studies", "lesion_max_slices", "lesion_max_px"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serve.{name} must be > 0, got {getattr(self, name)}")
        for name in ("qc_percentiles", "lung_hu", "ggo_hu", "consolidation_hu"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"serve.{name} must be [low, high] with low < high, got {[lo, hi]}")
            object.__setattr__(self, name, (float(lo), float(hi)))
        if self.qc_margin < 0 or self.lung_closing_px < 0 or not 0 < self.lung_min_component <= 1:
            raise ValueError("serve.qc_margin and serve.lung_closing_px must be >= 0, serve.lung_min_component "
                             f"in (0, 1]; got {self.qc_margin}, {self.lung_closing_px}, {self.lung_min_component}")


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
                        label: str = "zip", serve: ServeParams | None = None) -> list[Study]:
    """Select one series per study under ``root`` and preprocess it as the pipeline does.

    With ``serve``, also measure the lesion fractions (:func:`lung_abnormality`) on up to
    ``serve.lesion_max_slices`` evenly spaced slices of the selected series.

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
            lesions = None if serve is None else lung_abnormality(_lesion_sample(files, root, row, serve),
                                                                  preprocess.body_hu, serve)
        except SeriesReadError as exc:
            raise ServeInputError(f"{label}: series {row['series_uid']}: {exc}") from None
        qc = {**qc, "n_slices": int(len(files)),
              "slice_spacing_mm": float(np.median(np.diff(files["position_mm"]))) if len(files) > 1 else None}
        out.append(Study(tensor.astype(np.float32), {
            "study_uid": str(study_uid), "series_uid": str(row["series_uid"]), "patient_id": str(row["patient_id"]),
            "selection": str(row["selection"]), "qc": {k: _json_float(v) for k, v in qc.items()},
            "lesions": lesions}))
    return out


def _lesion_sample(files, root: Path | str, row, serve: ServeParams) -> np.ndarray:
    """Up to ``lesion_max_slices`` evenly spaced slices in HU, subsampled to <= ``lesion_max_px``."""
    from covidnet.dicom import read_volume_hu

    take = np.unique(np.linspace(0, len(files) - 1, min(len(files), serve.lesion_max_slices)).round().astype(int))
    h, w = int(row["rows"]), int(row["columns"])
    step = max(1, -(-max(h, w) // serve.lesion_max_px))
    return read_volume_hu(files.iloc[take], root, (h, w))[:, ::step, ::step]


def lung_abnormality(hu: np.ndarray, body_hu: float, params: ServeParams) -> dict[str, float | int | None]:
    """Ground-glass and consolidation fractions of the lung volume, by HU thresholds.

    The lung mask: body = HU > ``body_hu`` with holes filled slice by slice; aerated lung =
    body voxels in ``params.lung_hu`` (air below its low end, i.e. trachea and outside air, is
    left out); its 3D connected regions of at least ``lung_min_component`` of the largest one;
    then, slice by slice, a closing of ``lung_closing_px`` and hole filling, so that lesions
    surrounded by lung (or in a small dent of its edge) join it; finally only voxels from the low
    end of ``lung_hu`` to the top of ``consolidation_hu`` are kept. Vessels inside the lung are
    counted (as consolidation); lesions broadly touching the chest wall are partly missed; no
    lobar split. Validated on synthetic phantoms only.

    Args:
        hu: ``(D, H, W)`` volume in HU (slices may be a sample; fractions are volume ratios).
        body_hu: HU above which a voxel is body.
        params: the HU ranges and mask settings.

    Returns:
        ``lung_voxels``, ``ggo_fraction``, ``consolidation_fraction``, ``abnormal_fraction``
        (fractions of the lung mask; None when no lung is found).
    """
    from scipy import ndimage

    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    body = ndimage.binary_fill_holes(hu > body_hu, structure=plane)
    aerated = body & (hu >= params.lung_hu[0]) & (hu <= params.lung_hu[1])
    labels, n = ndimage.label(aerated)
    if n == 0:
        return {"lung_voxels": 0, "ggo_fraction": None, "consolidation_fraction": None, "abnormal_fraction": None}
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= params.lung_min_component * sizes.max()) + 1
    lung = np.isin(labels, keep)
    if params.lung_closing_px:
        disk = np.zeros((1, 2 * params.lung_closing_px + 1, 2 * params.lung_closing_px + 1), bool)
        yy, xx = np.ogrid[-params.lung_closing_px:params.lung_closing_px + 1, -params.lung_closing_px:params.lung_closing_px + 1]
        disk[0] = yy ** 2 + xx ** 2 <= params.lung_closing_px ** 2
        pad = params.lung_closing_px
        lung = ndimage.binary_closing(np.pad(lung, ((0, 0), (pad, pad), (pad, pad))), structure=disk)[:, pad:-pad, pad:-pad]
    lung = ndimage.binary_fill_holes(lung, structure=plane) & body
    lung &= (hu >= params.lung_hu[0]) & (hu <= params.consolidation_hu[1])
    total = int(lung.sum())
    ggo = int((lung & (hu >= params.ggo_hu[0]) & (hu <= params.ggo_hu[1])).sum())
    cons = int((lung & (hu >= params.consolidation_hu[0]) & (hu <= params.consolidation_hu[1])).sum())
    if total == 0:
        return {"lung_voxels": 0, "ggo_fraction": None, "consolidation_fraction": None, "abnormal_fraction": None}
    return {"lung_voxels": total, "ggo_fraction": ggo / total, "consolidation_fraction": cons / total,
            "abnormal_fraction": (ggo + cons) / total}


QC_FIELDS = ("hu_p05", "hu_p25", "hu_p50", "hu_p75", "hu_p95", "lung_fraction", "noise_hu")


def qc_reference(table, percentiles: tuple[float, float] = (1.0, 99.0), margin: float = 0.0,
                 source: str = "qc.csv") -> dict[str, Any]:
    """Reference range of each QC value from a training QC table (``preprocess``'s ``qc.csv``).

    Rows with an ``error`` are dropped; when a ``split`` column names a ``train`` split, only its
    rows count. Each range is the ``percentiles`` of the column, widened by ``margin`` times its
    width on each side.
    """
    t = table
    if "error" in t:
        t = t[t["error"].fillna("").astype(str) == ""]
    if "split" in t and (t["split"] == "train").any():
        t = t[t["split"] == "train"]
    ranges = {}
    for f in QC_FIELDS:
        v = t[f].dropna().to_numpy(float) if f in t else np.empty(0)
        if v.size:
            lo, hi = np.percentile(v, percentiles)
            ranges[f] = [float(lo - margin * (hi - lo)), float(hi + margin * (hi - lo))]
    return {"source": f"{source} ({len(t)} scans, p{percentiles[0]:g}..p{percentiles[1]:g}, margin {margin:g})",
            "ranges": ranges}


def load_qc_reference(model_dir: Path | str, params: dict[str, Any], card: dict, sp: ServeParams) -> dict | None:
    """The QC reference for a model folder: the card's ``qc_reference`` (a path relative to the
    folder), else ``model_dir/qc.csv``, else ``paths.preprocessed/qc.csv``; None when none exists."""
    import pandas as pd

    model_dir = Path(model_dir)
    candidates = ([model_dir / card["qc_reference"]] if card.get("qc_reference") else []) + [
        model_dir / "qc.csv", Path(params.get("paths", {}).get("preprocessed", "data/preprocessed")) / "qc.csv"]
    for f in candidates:
        if f.is_file():
            return qc_reference(pd.read_csv(f), sp.qc_percentiles, sp.qc_margin, source=str(f))
    return None


def qc_check(qc: dict | None, reference: dict | None) -> dict | None:
    """Each QC value with the reference range and ``in_range`` (None when either is missing)."""
    if not qc:
        return None
    ranges = (reference or {}).get("ranges", {})
    fields = {}
    for f in QC_FIELDS:
        v, r = qc.get(f), ranges.get(f)
        ok = None if v is None or r is None else bool(r[0] <= v <= r[1])
        fields[f] = {"value": v, "in_range": ok, "range": r}
    flagged = [f for f, x in fields.items() if x["in_range"] is False]
    return {"reference": (reference or {}).get("source"), "all_in_range": None if reference is None else not flagged,
            "out_of_range": flagged, "fields": fields}


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
    qc_reference: dict[str, Any] | None = None
    device: str = "cpu"


def load_bundle(model_dir: Path | str, params: dict[str, Any], name: str | None = None) -> Bundle:
    """Load a model folder for serving, with the preprocessing parameters of its card.

    The calibrator is ``model_dir/calibrator.json``, else ``paths.calibrator``, else none; the
    threshold ``serve.threshold``, else ``evaluate.threshold``; the QC reference from
    :func:`load_qc_reference`. Series selection follows the
    ``series`` params (one process). Raises FileNotFoundError / ParamsError naming the file.
    """
    from covidnet.params import section
    from covidnet.predict import load_model

    model_dir = Path(model_dir)
    sp = section(params, "serve", ServeParams)
    device = resolve_device(sp.device)
    net, card = load_model(model_dir, device=device)
    pre = PreprocessParams(**{**card["config"]["preprocess"], "workers": 1})
    shape = tuple(card["config"]["model"].get("input_shape") or (1, pre.depth, pre.crop, pre.crop))
    cal = next((f for f in (model_dir / "calibrator.json", Path(params["paths"]["calibrator"])) if f.is_file()), None)
    calibrator = Calibrator.from_dict(json.loads(cal.read_text()) if cal else {"kind": "none"})
    threshold = sp.threshold if sp.threshold is not None else float(params["evaluate"]["threshold"])
    model = {"name": card.get("name", name or sp.model_name), "version": model_version(model_dir, card),
             "mlflow_run_id": card.get("mlflow_run_id"), "synthetic": card.get("synthetic"),
             "calibrator": calibrator.kind}
    return Bundle(net, pre, replace(section(params, "series", SeriesParams), workers=1), shape, calibrator,
                  threshold, model, sp, load_qc_reference(model_dir, params, card, sp), device)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"serve.device {device!r}: torch sees no CUDA device")
    return device


def study_zip(b64: Any, bundle: Bundle, label: str = "zip") -> list[Study]:
    """A base64 study zip (str or bytes) to its studies: unzip safely, select, preprocess."""
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ServeInputError(f"{label}: not base64 ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="covidnet-serve-") as tmp:
        extract_zip(data, tmp, bundle.serve, label)
        return studies_from_folder(tmp, bundle.series, bundle.preprocess, label, bundle.serve)


def study_s3(uri: str, bundle: Bundle, label: str = "s3") -> list[Study]:
    """A study referenced as ``s3://bucket/key``: a zip object (``.zip``), or every object under
    the prefix ``key`` (DICOM files, any layout). boto3 takes the endpoint and credentials from
    the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... or the pod's service account).

    Raises:
        ServeInputError: not an ``s3://bucket/key`` URI; no such object or prefix; access denied;
            the download exceeds ``serve.max_members`` or ``serve.max_uncompressed_mb``.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[5:].strip("/"):
        raise ServeInputError(f"{label}: {uri!r} is not an s3://bucket/key reference")
    bucket, key = uri[5:].split("/", 1)
    cap = int(bundle.serve.max_uncompressed_mb * 1024 * 1024)
    s3 = boto3.client("s3")
    with tempfile.TemporaryDirectory(prefix="covidnet-s3-") as tmp:
        try:
            if key.lower().endswith(".zip"):
                obj = s3.get_object(Bucket=bucket, Key=key)
                if obj["ContentLength"] > cap:
                    raise ServeInputError(f"{label}: {uri}: {obj['ContentLength']} bytes > serve.max_uncompressed_mb")
                extract_zip(obj["Body"].read(), tmp, bundle.serve, f"{label} {uri}")
            else:
                prefix = key.rstrip("/") + "/"
                objs = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                        for o in page.get("Contents", []) if not o["Key"].endswith("/")]
                if not objs:
                    raise ServeInputError(f"{label}: {uri}: no object found under this prefix (404)")
                if len(objs) > bundle.serve.max_members or sum(o["Size"] for o in objs) > cap:
                    raise ServeInputError(f"{label}: {uri}: {len(objs)} objects, {sum(o['Size'] for o in objs)} bytes "
                                          "exceed serve.max_members or serve.max_uncompressed_mb")
                for i, o in enumerate(objs):
                    s3.download_file(bucket, o["Key"], str(Path(tmp) / f"{i:06d}_{PurePosixPath(o['Key']).name}"))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            what = "not found" if code in ("NoSuchKey", "404", "NoSuchBucket") else f"cannot be read ({code})"
            raise ServeInputError(f"{label}: {uri}: {what}") from None
        except BotoCoreError as exc:
            raise ServeInputError(f"{label}: {uri}: cannot be fetched ({exc})") from None
        return studies_from_folder(tmp, bundle.series, bundle.preprocess, f"{label} {uri}", bundle.serve)


def results(logits: np.ndarray, bundle: Bundle, infos: list[dict]) -> list[dict]:
    """Per-study answers for a batch of logits (see :func:`answer`)."""
    from covidnet.predict import sigmoid

    s = sigmoid(logits)
    p = bundle.calibrator.apply(s)
    return [answer(a, b, bundle.threshold, bundle.model, {**info, "qc_check": qc_check(info.get("qc"), bundle.qc_reference)})
            for a, b, info in zip(s, p, infos)]


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
            "selection": info.get("selection"), "qc": info.get("qc"), "qc_check": info.get("qc_check"),
            "lesions": info.get("lesions")}


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
