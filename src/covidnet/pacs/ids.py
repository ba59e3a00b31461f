"""Identifiers in the PACS loop: keyed hashes for logs and tables, derived UIDs for what we store.

Nothing the loop logs or writes to the prediction log database names a patient or a study:
StudyInstanceUIDs and other UIDs appear as :func:`covidnet.monitor.predlog.hash_id` hashes
(HMAC-SHA256 with the log's key), in logs shortened to 12 hex digits (:func:`short`), and
messages that may carry UIDs (series selection reasons) pass through :func:`redact`.

The UIDs of the SR and the Secondary Capture are *derived* (:func:`derived_uid`): an HMAC of
the study, its series composition, the model and the analysis number under ``pacs.uid_root``.
The same analysis stored twice (a worker killed after STOW-RS, before it recorded the study as
done) therefore has the same SOP Instance UIDs, and the PACS keeps one copy: that is what makes
storing exactly once survive crashes. A series whose UID starts with ``pacs.uid_root`` is ours
(:func:`is_own`): it is left out of the study's fingerprint, so our own results never make a
study look changed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable

from covidnet.monitor.predlog import hash_id

#: Anything shaped like a DICOM UID (at least four numeric components).
_UID_LIKE = re.compile(r"\b[0-2](?:\.(?:0|[1-9][0-9]*)){3,}\b")


def study_hash(key: bytes, study_uid: str) -> str:
    """The prediction log's hash of a StudyInstanceUID (``hash_id(key, "study", uid)``)."""
    return hash_id(key, "study", study_uid)


def short(h: str | None) -> str:
    """A hash shortened for log lines and the worklist (12 hex digits)."""
    return (h or "?")[:12]


def redact(text: str, key: bytes) -> str:
    """``text`` with every UID-shaped token replaced by ``uid:<short hash>`` (for logs and tables)."""
    return _UID_LIKE.sub(lambda m: f"uid:{short(hash_id(key, 'uid', m.group(0)))}", str(text))


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's message through :func:`redact` (on the CLI's handlers)."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.key)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def fingerprint(key: bytes, series: Iterable[tuple[str, int]], uid_root: str) -> str:
    """A keyed hash of a study's series composition: ``(SeriesInstanceUID, instances)`` of every
    series that is not ours (:func:`is_own`), in any order. Equal for equal content however it
    was read (QIDO-RS counts, or the files a PACS pushed)."""
    parts = sorted(f"{uid}={int(n)}" for uid, n in series if not is_own(uid, uid_root))
    return hmac.new(key, ("series:" + "|".join(parts)).encode(), hashlib.sha256).hexdigest()


def is_own(uid: str, uid_root: str) -> bool:
    """Whether a UID was made by this loop (it starts with ``pacs.uid_root``)."""
    return str(uid).startswith(uid_root)


def derived_uid(key: bytes, uid_root: str, *parts: object) -> str:
    """A UID under ``uid_root`` from an HMAC of ``parts``: 32 digits, the first non-zero, so at most 64 characters."""
    digest = hmac.new(key, "|".join(map(str, parts)).encode(), hashlib.sha256).digest()
    n = int.from_bytes(digest, "big") % (9 * 10**31) + 10**31
    uid = f"{uid_root}{n}"
    if len(uid) > 64:
        raise ValueError(f"pacs.uid_root {uid_root!r} leaves no room for a 32-digit suffix within 64 characters")
    return uid


def orthanc_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's identifier of a study: SHA-1 of ``PatientID|StudyInstanceUID`` in five groups of 8 hex digits.

    Used only to build a viewer link when the worklist is rendered; never stored or logged.
    """
    h = hashlib.sha1(f"{patient_id}|{study_uid}".encode()).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))
