"""A study as the server receives it (zip bytes, base64 text, an ``s3://`` reference) to model tensors.

Each step is a function, so a request can be checked whole before any of its studies is read
(:func:`covidnet.serve.request.request_studies`):

* :func:`open_zip` reads a zip's directory only and refuses members that escape it (zip slip),
  too many members and too many declared uncompressed bytes (zip bomb);
  :func:`extract_members` then writes the members, numbered, and counts the bytes actually read;
  :func:`extract_zip` is the two together;
* :func:`select_studies` runs the pipeline's series selection
  (:func:`covidnet.data.series.index_tree`, headers only) and :func:`read_study` its
  preprocessing (:func:`covidnet.preprocess.series.preprocess_series`) on the chosen series: one
  ``(1, D, C, C)`` tensor per study with the chosen SeriesInstanceUID, why it was chosen, the QC
  values and the lesion fractions (:mod:`covidnet.serve.lesions`); :func:`studies_from_folder`
  is the two together (what the PACS loop calls);
* :func:`study_zip` (zip bytes), :func:`decode_base64` (base64 text to bytes) and
  :func:`study_s3` (a zip object or a prefix of DICOM files in S3, :mod:`covidnet.serve.s3`)
  for one study at a time.

Every refusal is a :class:`ServeInputError` with the ``rule`` it broke and the identifiers its
message names (``private``), which log lines hash (:mod:`covidnet.serve.redact`). The extracted
files live in a temporary folder on disk for the request only, not in memory.
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
    """A request the model cannot answer; the message names the offending part and the rule.

    Args:
        message: what the client is told (it may name the UIDs, member paths and references
            that client sent).
        rule: a short key of the rule broken (``zip.slip``, ``study.no_usable_series``, ...),
            for log lines and tests.
        private: the identifiers ``message`` names, by kind (``{"study": [uid], "member":
            [path]}``); :meth:`log_text` hashes them.
    """

    def __init__(self, message: str, rule: str = "input", private: dict[str, list] | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.private = {k: [str(v) for v in vs if v is not None and str(v)] for k, vs in (private or {}).items()}

    def log_text(self, key: bytes) -> str:
        """The message for a log line: each private identifier, and any UID, as its keyed hash."""
        from covidnet.serve.redact import redact

        return redact(str(self), self.private, key)


@dataclass(frozen=True)
class Study:
    """One study ready for the network: its tensor ``(1, D, C, C)`` float32 and what to report."""

    tensor: np.ndarray
    info: dict[str, Any]


@dataclass(frozen=True)
class SelectedSeries:
    """The series chosen for one study under ``root`` (:func:`select_studies`), not yet read."""

    root: Path
    study_uid: str
    row: Any      # the row of ``index.series`` (pandas)
    files: Any    # its rows of ``index.files``
    label: str


def tensor_batch(array: Any, shape: tuple[int, ...], label: str = "tensor") -> np.ndarray:
    """A batch ``(B, 1, D, C, C)`` float32 from an array of that shape or one ``(1, D, C, C)``.

    Raises:
        ServeInputError: wrong shape (the expected one is named), not numeric, not finite.
    """
    try:
        x = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError):
        raise ServeInputError(f"{label}: not a numeric array (numbers in nested lists)", "tensor.data") from None
    if x.shape == tuple(shape):
        x = x[None]
    if x.ndim != len(shape) + 1 or x.shape[1:] != tuple(shape) or x.shape[0] == 0:
        raise ServeInputError(f"{label}: shape {list(x.shape)} does not match the model's input "
                              f"[B, {', '.join(map(str, shape))}] (from the model card)", "input.shape")
    if not np.isfinite(x).all():
        raise ServeInputError(f"{label}: holds NaN or infinite values", "tensor.finite")
    return x


@dataclass
class ZipContents:
    """A study zip opened and checked from its central directory (:func:`open_zip`), not yet extracted."""

    zf: zipfile.ZipFile
    members: list[zipfile.ZipInfo]
    declared: int  # uncompressed bytes, as the headers declare them
    label: str

    @property
    def n_files(self) -> int:
        return len(self.members)

    @property
    def n_bytes(self) -> int:
        return self.declared


def open_zip(data: bytes | memoryview, params: ServeParams, label: str = "zip") -> ZipContents:
    """Read a zip's directory and check it before anything is extracted.

    Raises:
        ServeInputError: not a zip; a member with an absolute path, a drive or ``..`` (zip
            slip); more than ``params.max_members`` members; more than
            ``params.max_uncompressed_mb`` uncompressed as declared.
    """
    cap = int(params.max_uncompressed_mb * 1024 * 1024)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ServeInputError(f"{label}: not a zip archive ({exc})", "zip.not_zip") from None
    members = [m for m in zf.infolist() if not m.is_dir()]
    if len(members) > params.max_members:
        raise ServeInputError(f"{label}: {len(members)} members > serve.max_members {params.max_members}",
                              "zip.max_members")
    for m in zf.infolist():
        p = PurePosixPath(m.filename.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise ServeInputError(f"{label}: unsafe member path {m.filename!r} (absolute or '..': zip slip)",
                                  "zip.slip", {"member": [m.filename]})
    declared = sum(m.file_size for m in members)
    if declared > cap:
        raise ServeInputError(f"{label}: {declared} bytes uncompressed > serve.max_uncompressed_mb "
                              f"{params.max_uncompressed_mb:g} MiB (zip bomb guard)", "zip.max_uncompressed")
    return ZipContents(zf, members, declared, label)


def extract_members(contents: ZipContents, dest: Path | str, params: ServeParams) -> int:
    """Write an opened zip's members into ``dest``, numbered by their place in the zip
    (``000012.dcm``: neither the layout nor a member's name, which may name the patient, reaches
    the disk or a message), streamed in 1 MiB chunks, counting the bytes actually read.

    Raises:
        ServeInputError: more than ``params.max_uncompressed_mb`` actually read (the headers can
            lie); a member that cannot be read.
    """
    dest, label = Path(dest), contents.label
    cap = int(params.max_uncompressed_mb * 1024 * 1024)
    written = 0
    with contents.zf as zf:
        for i, m in enumerate(contents.members):
            try:
                with zf.open(m) as src, open(dest / f"{i:06d}.dcm", "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > cap:  # sizes in the headers can lie
                            raise ServeInputError(f"{label}: more than serve.max_uncompressed_mb "
                                                  f"{params.max_uncompressed_mb:g} MiB uncompressed (zip bomb guard)",
                                                  "zip.max_uncompressed")
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError,
                    RuntimeError, OSError) as exc:
                raise ServeInputError(f"{label}: member {i} {m.filename!r} cannot be read ({exc})",
                                      "zip.member", {"member": [m.filename]}) from None
    return len(contents.members)


def extract_zip(data: bytes | memoryview, dest: Path | str, params: ServeParams, label: str = "zip") -> int:
    """Unpack a zip safely into ``dest``; returns the number of files written.

    Members are written under numbered names (:func:`extract_members`), so the layout inside
    the zip does not matter and cannot escape ``dest``.

    Raises:
        ServeInputError: every refusal of :func:`open_zip` and :func:`extract_members`.
    """
    return extract_members(open_zip(data, params, label), dest, params)


def select_studies(root: Path | str, series: SeriesParams, label: str = "zip") -> list[SelectedSeries]:
    """Series selection (the pipeline's :func:`covidnet.data.series.index_tree`) of every study
    under ``root``, reading headers only.

    Raises:
        ServeInputError: no DICOM file; a study without an eligible series (each series'
            reason is named, e.g. ``modality MR is not CT`` or ``gap in slice positions``).
    """
    index = index_tree(root, series)
    if index.series.empty:
        reasons = sorted(set(index.skipped["reason"]))[:3]
        raise ServeInputError(f"{label}: no DICOM files ({len(index.skipped)} file(s) skipped: {'; '.join(reasons)})",
                              "study.no_dicom")
    out = []
    for study_uid, group in index.series.groupby("study_uid", sort=True):
        chosen = group[group["selected"]]
        if chosen.empty:
            why = "; ".join(f"series {r.series_uid}: {r.reason}" for r in group.itertuples())
            raise ServeInputError(f"{label}: study {study_uid} has no usable CT series ({why})",
                                  "study.no_usable_series",
                                  {"study": [study_uid], "series": list(group["series_uid"])})
        row = chosen.iloc[0]
        out.append(SelectedSeries(Path(root), str(study_uid), row,
                                  index.files[index.files["series_uid"] == row["series_uid"]], label))
    return out


def read_study(selected: SelectedSeries, preprocess: PreprocessParams, serve: ServeParams | None = None) -> Study:
    """The selected series read and preprocessed as the pipeline does (and, with ``serve``, its
    lesion fractions, :func:`covidnet.serve.lesions.lung_abnormality`).

    Raises:
        ServeInputError: pixel data that cannot be read.
    """
    from covidnet.serve.lesions import lesion_sample, lung_abnormality

    row, files, root = selected.row, selected.files, selected.root
    shape = (int(row["rows"]), int(row["columns"]))
    try:
        tensor, qc = preprocess_series(files, root, preprocess, shape=shape)
        lesions = None if serve is None else lung_abnormality(lesion_sample(files, root, shape, serve),
                                                              preprocess.body_hu, serve)
    except SeriesReadError as exc:
        raise ServeInputError(f"{selected.label}: series {row['series_uid']}: {exc}", "series.pixels",
                              {"series": [row["series_uid"]], "study": [selected.study_uid]}) from None
    return Study(tensor.astype(np.float32), {
        "study_uid": selected.study_uid, "series_uid": str(row["series_uid"]), "patient_id": str(row["patient_id"]),
        "selection": str(row["selection"]), "qc": {k: _json_float(v) for k, v in qc.items()},
        "lesions": lesions, "institution": _text_or_none(row["institution"])})


def studies_from_folder(root: Path | str, series: SeriesParams, preprocess: PreprocessParams,
                        label: str = "zip", serve: ServeParams | None = None) -> list[Study]:
    """Select one series per study under ``root`` and preprocess it as the pipeline does.

    :func:`select_studies` then :func:`read_study` for each: the very functions the pipeline
    runs, :func:`covidnet.data.series.index_tree` (series selection) and
    :func:`covidnet.preprocess.series.preprocess_series`. With ``serve``, also measure the lesion
    fractions on up to ``serve.lesion_max_slices`` evenly spaced slices of the selected series.

    Raises:
        ServeInputError: no DICOM file; a study without an eligible series (each series'
            reason is named, e.g. ``modality MR is not CT`` or ``gap in slice positions``);
            pixel data that cannot be read. ``rule`` names the rule, ``private`` the UIDs.
    """
    return [read_study(s, preprocess, serve) for s in select_studies(root, series, label)]


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
        raise ServeInputError(f"{label}: not a zip and not base64 ({exc})", "zip.base64") from None


def study_zip(data: bytes | memoryview, bundle: Bundle, label: str = "zip") -> list[Study]:
    """The bytes of a study zip to its studies: unzip safely into a temporary folder, select, preprocess."""
    with tempfile.TemporaryDirectory(prefix="covidnet-serve-") as tmp:
        extract_zip(data, tmp, bundle.serve, label)
        return studies_from_folder(tmp, bundle.series, bundle.preprocess, label, bundle.serve)


def study_s3(uri: str, bundle: Bundle, label: str = "s3") -> list[Study]:
    """A study referenced as ``s3://bucket/key`` (a ``.zip`` object or a prefix of DICOM files),
    fetched into a temporary folder (:mod:`covidnet.serve.s3`), selected and preprocessed.

    Raises:
        ServeInputError: see :class:`covidnet.serve.s3.S3Study`.
    """
    from covidnet.serve.s3 import S3Study

    with tempfile.TemporaryDirectory(prefix="covidnet-s3-") as tmp:
        S3Study.plan(uri, bundle.serve, label).fetch(tmp, bundle.serve)
        return studies_from_folder(tmp, bundle.series, bundle.preprocess, f"{label} s3", bundle.serve)
