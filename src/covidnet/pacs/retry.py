"""Retries with exponential back-off for a PACS (or an endpoint) that goes away and comes back.

:func:`with_retries` runs one request; a *transient* failure (:func:`is_transient`: the
connection refused or reset, a timeout, HTTP 408, 429 or 5xx) is retried after the waits of
:class:`covidnet.pacs.params.RetryParams` (``backoff_s``, times ``factor`` per retry, up to
``max_backoff_s``). When they are spent, :class:`PacsUnavailable` is raised: the study stays
pending and is taken up again at the next poll. Anything else (an HTTP 400 to a STOW-RS, say)
is not retried. Messages are passed through :func:`covidnet.pacs.ids.redact`, since request
URLs carry StudyInstanceUIDs.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
from collections.abc import Callable
from typing import TypeVar

from covidnet.errors import CovidnetError
from covidnet.pacs.ids import redact
from covidnet.pacs.params import RetryParams

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth a retry: timeout, too many requests, server errors.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class PacsError(CovidnetError, RuntimeError):
    """The PACS (or the endpoint) refused a request for a reason a retry does not change."""


class PacsUnavailable(PacsError):
    """The PACS (or the endpoint) stayed unreachable through every retry, or the worker was stopped while waiting."""


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a ``requests`` or ``urllib`` error, None when it has none."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None) is not None:
        return int(response.status_code)
    if isinstance(exc, urllib.error.HTTPError):
        return int(exc.code)
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may succeed: no connection, a timeout, or HTTP 408/429/5xx."""
    import requests

    status = http_status(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError,
                            urllib.error.URLError))


def with_retries(fn: Callable[[], T], policy: RetryParams, what: str, key: bytes,
                 stop: threading.Event | None = None) -> T:
    """``fn()``, retried on transient failures with back-off.

    Args:
        fn: the request.
        policy: the waits (``pacs.retry``).
        what: the request in words for the log (no identifiers).
        key: the hash key, to redact UIDs in error messages.
        stop: when set during a wait, give up at once (a worker asked to stop).

    Raises:
        PacsUnavailable: still failing after every retry, or ``stop`` was set.
        Exception: a non-transient failure, unchanged.
    """
    waits = policy.waits()
    for attempt in range(len(waits) + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified right here; anything else is re-raised
            if not is_transient(exc):
                raise
            why = redact(f"{type(exc).__name__}: {exc}", key)[:300]
            if attempt == len(waits):
                raise PacsUnavailable(f"{what}: unavailable after {len(waits)} retries ({why})") from None
            wait = waits[attempt]
            log.warning("%s: unavailable (%s); retry %d/%d in %.1f s", what, why, attempt + 1, len(waits), wait)
            if stop is not None:
                if stop.wait(wait):
                    raise PacsUnavailable(f"{what}: stopped while waiting to retry") from None
            else:
                threading.Event().wait(wait)
    raise AssertionError("unreachable")
