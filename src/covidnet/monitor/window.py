"""Time windows of the prediction log: ``--since``/``--until``/``--hours`` as UTC datetimes."""

from __future__ import annotations

import datetime as dt

from covidnet.errors import InputError


def parse_time(text: str, what: str = "time") -> dt.datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (naive input is taken as UTC).

    Raises:
        ValueError: naming ``what`` and the text.
    """
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise InputError(f"{what}: {text!r} is not an ISO 8601 date or time (e.g. 2024-05-01T08:00:00Z)") from None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def time_window(since: str | None, until: str | None, hours: float,
                now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """``[since, until)``: ``until`` defaults to now, ``since`` to ``hours`` before ``until``.

    Raises:
        ValueError: unparseable times, or ``since`` not before ``until``.
    """
    end = parse_time(until, "--until") if until else (now or dt.datetime.now(dt.timezone.utc))
    start = parse_time(since, "--since") if since else end - dt.timedelta(hours=hours)
    if not start < end:
        raise InputError(f"--since {start.isoformat()} must be before --until {end.isoformat()}")
    return start, end
