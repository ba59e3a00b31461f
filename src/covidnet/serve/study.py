"""A study as the server receives it (zip bytes, base64 text, an ``s3://`` reference) to model tensors.

* :func:`extract_zip` unpacks one uploaded study zip into a folder, refusing members that
  escape it (zip slip), too many members and too many uncompressed bytes (zip bomb);
* :func:`studies_from_folder` runs the very functions the pipeline runs —
  :func:`covidnet.data.series.index_tree` (series selection) and
  :func:`covidnet.preprocess.series.preprocess_series` — and returns one ``(1, D, C, C)`` tensor per
  study with the chosen SeriesInstanceUID, why it was chosen, the QC values and the lesion
  fractions (:mod:`covidnet.serve.lesions`);
* :func:`study_zip` (zip bytes), :func:`decode_base64` (base64 text to bytes) and
  :func:`study_s3` (a zip object or a prefix of DICOM files in S3) put the two together.

The extracted files live in a temporary folder on disk for the request only, not in memory.
"""

from __future__ import annotations

import binascii
import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from covidnet.data.pixels import SeriesReadError
from covidnet.data.series import SeriesParams, index_tree
from covidnet.errors import CovidnetError
from covidnet.preprocess.params import PreprocessParams
from covidnet.preprocess.series import preprocess_series
from covidnet.serve.params import ServeParams

if TYPE_CHECKING:
    from covidnet.serve.bundle import Bundle


class ServeInputError(CovidnetError, ValueError):
    """A request the model cannot answer; the message names the offending part."""


@dataclass(frozen=True)
class Study:
    """One study ready for the network: its tensor ``(1, D, C, C)`` float32 and what to report."""

    tensor: np.ndarray
    info: dict[str, Any]


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


def extract_zip(data: bytes | memoryview, dest: Path | str, params: ServeParams, label: str = "zip") -> int:
    """Unpack a zip safely into ``dest``; returns the number of files written.

    Members are written under flat names (``000012_<name>``), so the layout inside the zip
    does not matter and cannot escape ``dest``; they are streamed in 1 MiB chunks.

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

    With ``serve``, also measure the lesion fractions
    (:func:`covidnet.serve.lesions.lung_abnormality`) on up to ``serve.lesion_max_slices``
    evenly spaced slices of the selected series.

    Raises:
        ServeInputError: no DICOM file; a study without an eligible series (each series'
            reason is named, e.g. ``modality MR is not CT`` or ``gap in slice positions``);
            pixel data that cannot be read.
    """
    from covidnet.serve.lesions import lesion_sample, lung_abnormality

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
        shape = (int(row["rows"]), int(row["columns"]))
        try:
            tensor, qc = preprocess_series(files, root, preprocess, shape=shape)
            lesions = None if serve is None else lung_abnormality(lesion_sample(files, root, shape, serve),
                                                                  preprocess.body_hu, serve)
        except SeriesReadError as exc:
            raise ServeInputError(f"{label}: series {row['series_uid']}: {exc}") from None
        out.append(Study(tensor.astype(np.float32), {
            "study_uid": str(study_uid), "series_uid": str(row["series_uid"]), "patient_id": str(row["patient_id"]),
            "selection": str(row["selection"]), "qc": {k: _json_float(v) for k, v in qc.items()},
            "lesions": lesions, "institution": _text_or_none(row["institution"])}))
    return out


def _text_or_none(v: Any) -> str | None:
    """A header text (e.g. the InstitutionName the prediction log records), None when empty."""
    return v.strip() or None if isinstance(v, str) else None


def _json_float(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v.item() if isinstance(v, np.generic) else v


def decode_base64(text: str | bytes, label: str = "zip") -> bytes:
    """Strict base64 (no characters outside the alphabet) to bytes.

    ``binascii`` reads an ASCII ``str`` in place, so the text is not first copied to bytes.

    Raises:
        ServeInputError: not base64, or not ASCII.
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ServeInputError(f"{label}: not base64 ({exc})") from None


def study_zip(data: bytes | memoryview, bundle: Bundle, label: str = "zip") -> list[Study]:
    """The bytes of a study zip to its studies: unzip safely into a temporary folder, select, preprocess."""
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
