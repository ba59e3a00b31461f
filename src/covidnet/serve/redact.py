"""Log lines without identifiers: keyed hashes in place of the ids a message names, and a filter behind them.

The server's logs carry request ids, hashed study ids and the rule that refused a request;
never a UID, a patient's name or id, a zip member's path, an ``s3://`` key or request bytes.
Two layers:

* by construction: a :class:`covidnet.serve.study.ServeInputError` lists the identifiers its
  message names (``private``), and :func:`redact` replaces each with ``<kind:hash>``, the
  first 16 hex digits of the prediction log's own hash (:func:`covidnet.monitor.predlog.hash_id`,
  HMAC-SHA256 with the server's key), so a refused study can be matched to the log's
  ``study_hash`` and to nothing else;
* a safety net: :class:`RedactingFilter`, installed on every handler of the server's loggers
  (its own, KServe's, uvicorn's), hashes anything shaped like a DICOM UID (:data:`UID_PATTERN`)
  in every record, its arguments and its traceback, whoever logged it.

A patient's name or id has no shape a filter could find: those are kept out by the first layer
(the server never logs header values or request bytes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

#: A DICOM UID's shape: an ISO root (0, 1, 2) and two or more numeric components, not inside a
#: longer dotted number. :func:`redact_uids` hashes those of six or more components or 16 or
#: more characters (``2.25.<uuid>`` has three); an IPv4 address or a version number is neither.
UID_PATTERN = re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9]\d*)){2,}(?![\w.])")

#: Loggers whose handlers get the filter (the root covers covidnet.* and anything propagating).
SERVER_LOGGERS = ("", "kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access", "grpc")


def hashed(key: bytes, kind: str, value: str) -> str:
    """``<kind:first 16 hex digits of hash_id(key, kind, value)>``."""
    from covidnet.monitor.predlog import hash_id

    return f"<{kind}:{(hash_id(key, kind, value) or '')[:16]}>"


def redact(text: str, private: Mapping[str, Iterable[str]], key: bytes) -> str:
    """``text`` with every listed identifier (and its ``repr`` form) hashed, then any UID left over."""
    pairs = sorted(((str(v), k) for k, vs in private.items() for v in vs if v), key=lambda p: -len(p[0]))
    for value, kind in pairs:
        h = hashed(key, kind, value)
        text = text.replace(value, h)
        quoted = repr(value)[1:-1]
        if quoted != value:
            text = text.replace(quoted, h)
    return redact_uids(text, key)


def redact_uids(text: str, key: bytes) -> str:
    """Every UID-shaped run in ``text`` replaced by ``<uid:hash>``."""
    def one(m: re.Match) -> str:
        uid = m.group(0)
        return hashed(key, "uid", uid) if uid.count(".") >= 5 or len(uid) >= 16 else uid

    return UID_PATTERN.sub(one, text)


class RedactingFilter(logging.Filter):
    """A handler filter: the formatted message (and traceback) of every record with UIDs hashed."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self.key = key

    def _arg(self, a):
        return a if a is None or isinstance(a, (bool, int, float)) else redact_uids(str(a), self.key)

    def filter(self, record: logging.LogRecord) -> bool:
        # The arguments one by one (formatters such as uvicorn's access log read them), the format too.
        record.msg = redact_uids(str(record.msg), self.key)
        if isinstance(record.args, tuple):
            record.args = tuple(self._arg(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: self._arg(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_uids(record.exc_text, self.key)
        return True


def install(key: bytes, loggers: Iterable[str] = SERVER_LOGGERS) -> RedactingFilter:
    """Add one :class:`RedactingFilter` to every handler of ``loggers`` (call after logging is configured)."""
    f = RedactingFilter(key)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(x, RedactingFilter) for x in handler.filters):
                handler.addFilter(f)
    return f
