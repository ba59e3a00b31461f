"""Which study was analysed, in the prediction log's database: the ``pacs_studies`` table.

One row per study, keyed by the log's hash of its StudyInstanceUID
(:func:`covidnet.pacs.ids.study_hash`; the database, URL and key are the prediction log's:
:meth:`covidnet.monitor.predlog.PredictionLog.from_params`). Columns:

``study_hash``, ``status`` (``waiting``, ``done``, ``unanalysable``, ``retrying``), ``via``
(``watch`` or ``listen``), ``counts`` (series/instances at the last poll), ``fingerprint``
(:func:`covidnet.pacs.ids.fingerprint` of the study's own series) and ``stable_since`` (when it
last changed), ``first_seen`` (the worklist's waiting time starts there), ``done_fingerprint``
(the content the current result was computed on), ``analyses`` (results stored),
``lease_owner`` / ``lease_until`` (the worker analysing it), ``attempts``, ``next_try_at`` and
``last_error`` (redacted) after a failure, and the current result for the worklist:
``result_at``, ``probability``, ``score``, ``threshold``, ``decision``, the three lesion
fractions, ``qc_flags``, ``model_name``, ``model_version``, ``reason`` (why a study could not be
analysed, redacted).

Exactly once: a worker :meth:`StudyState.claim` s a study for one fingerprint (an atomic UPDATE:
no other live lease, not already done for that content); :meth:`StudyState.finish` records the
result *and* the study's ``predictions`` row in one transaction, only while it still holds the
lease. A worker killed between storing into the PACS and ``finish`` leaves the study claimable
again; the next one derives the same SOP Instance UIDs (:func:`covidnet.pacs.ids.derived_uid`
from the study, its fingerprint and ``analyses``), so the PACS keeps one copy and the log one row.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from covidnet.monitor.predlog import Prediction, PredictionLog, utc_naive

log = logging.getLogger(__name__)

TABLE = "pacs_studies"
STATUSES = ("waiting", "done", "unanalysable", "retrying")
#: Result columns :meth:`StudyState.finish` takes.
RESULT_COLUMNS = ("probability", "score", "threshold", "decision", "abnormal_fraction", "ggo_fraction",
                  "consolidation_fraction", "qc_flags", "model_name", "model_version", "reason")


def _table(meta):
    import sqlalchemy as sa

    return sa.Table(
        TABLE, meta,
        sa.Column("study_hash", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("counts", sa.String(32)),
        sa.Column("fingerprint", sa.String(64)),
        sa.Column("stable_since", sa.DateTime),
        sa.Column("first_seen", sa.DateTime, nullable=False),
        sa.Column("done_fingerprint", sa.String(64)),
        sa.Column("analyses", sa.Integer, nullable=False, default=0),
        sa.Column("lease_owner", sa.String(96)),
        sa.Column("lease_until", sa.DateTime),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("next_try_at", sa.DateTime),
        sa.Column("last_error", sa.String(512)),
        sa.Column("result_at", sa.DateTime),
        *[sa.Column(c, sa.Float) for c in ("probability", "score", "threshold", "abnormal_fraction", "ggo_fraction",
                                           "consolidation_fraction")],
        sa.Column("decision", sa.String(32)),
        sa.Column("qc_flags", sa.String(256)),
        sa.Column("model_name", sa.String(128)),
        sa.Column("model_version", sa.String(128)),
        sa.Column("reason", sa.String(1024)),
    )


def now_utc() -> dt.datetime:
    """Now, as the table stores time (naive UTC)."""
    return utc_naive(dt.datetime.now(dt.timezone.utc))


class StudyState:
    """The ``pacs_studies`` table beside the prediction log (see the module docstring).

    Args:
        plog: the open prediction log (its engine, its ``predictions`` table and its hash key).
        lease_s: how long a claim holds (``pacs.lease_s``).
    """

    def __init__(self, plog: PredictionLog, lease_s: float) -> None:
        import sqlalchemy as sa

        self.log, self.lease_s, self._sa = plog, lease_s, sa
        self.meta = sa.MetaData()
        self.table = _table(self.meta)
        try:
            self.meta.create_all(plog.engine, checkfirst=True)
        except sa.exc.OperationalError:  # another process created it between the check and the CREATE
            if not sa.inspect(plog.engine).has_table(TABLE):
                raise

    @classmethod
    def open(cls, params: dict[str, Any], lease_s: float) -> "StudyState":
        """The state in the database the params' prediction log uses, with its hash key."""
        return cls(PredictionLog.from_params(params), lease_s)

    @property
    def key(self) -> bytes:
        return self.log.key

    def close(self) -> None:
        self.log.close()

    def get(self, study_hash: str) -> dict[str, Any] | None:
        """The row of one study, None when unknown."""
        with self.log.engine.begin() as conn:
            row = conn.execute(self._sa.select(self.table).where(self.table.c.study_hash == study_hash)).mappings().first()
        return dict(row) if row else None

    def observe(self, study_hash: str, via: str, counts: str | None = None, fingerprint: str | None = None,
                now: dt.datetime | None = None) -> dict[str, Any]:
        """Record what a poll (or a push) saw of a study; returns its row.

        A new study starts ``waiting`` with ``first_seen = now``; a new ``fingerprint`` restarts
        ``stable_since`` and, when it differs from the analysed content, puts the study back to
        ``waiting`` (its previous result stays visible until the new one supersedes it).
        """
        now = now or now_utc()
        t = self.table
        with self.log.engine.begin() as conn:
            row = conn.execute(self._sa.select(t).where(t.c.study_hash == study_hash)).mappings().first()
            if row is None:
                values = {"study_hash": study_hash, "status": "waiting", "via": via, "counts": counts,
                          "fingerprint": fingerprint, "stable_since": now, "first_seen": now, "analyses": 0,
                          "attempts": 0}
                conn.execute(t.insert().values(**values))
                return {**{c.name: None for c in t.columns}, **values}
            changes: dict[str, Any] = {}
            if counts is not None and counts != row["counts"]:
                changes["counts"] = counts
            if fingerprint is not None and fingerprint != row["fingerprint"]:
                changes.update(fingerprint=fingerprint, stable_since=now)
                if fingerprint != row["done_fingerprint"] and row["status"] in ("done", "unanalysable"):
                    changes["status"] = "waiting"
            if changes:
                conn.execute(t.update().where(t.c.study_hash == study_hash).values(**changes))
            return {**row, **changes}

    def claim(self, study_hash: str, fingerprint: str, owner: str, now: dt.datetime | None = None) -> int | None:
        """Take a study for analysis of content ``fingerprint``; its analysis number, or None when it is
        done for that content, another worker's lease runs, or its back-off after a failure has not passed."""
        now = now or now_utc()
        t, sa = self.table, self._sa
        free = sa.or_(t.c.lease_until.is_(None), t.c.lease_until < now, t.c.lease_owner == owner)
        todo = sa.or_(t.c.done_fingerprint.is_(None), t.c.done_fingerprint != fingerprint)
        due = sa.or_(t.c.next_try_at.is_(None), t.c.next_try_at <= now)
        with self.log.engine.begin() as conn:
            claimed = conn.execute(t.update().where(t.c.study_hash == study_hash, free, todo, due).values(
                lease_owner=owner, lease_until=now + dt.timedelta(seconds=self.lease_s))).rowcount
            if claimed != 1:
                return None
            return int(conn.execute(sa.select(t.c.analyses).where(t.c.study_hash == study_hash)).scalar_one())

    def finish(self, study_hash: str, fingerprint: str, owner: str, status: str, result: dict[str, Any],
               predictions: Sequence[Prediction] = (), now: dt.datetime | None = None) -> bool:
        """Record a stored result and its prediction log rows in one transaction.

        Returns False (and writes nothing) when ``owner`` no longer holds the lease.
        """
        if status not in ("done", "unanalysable"):
            raise ValueError(f"finish: status {status!r} is not done or unanalysable")
        unknown = set(result) - set(RESULT_COLUMNS)
        if unknown:
            raise ValueError(f"finish: unknown result column(s) {sorted(unknown)}")
        now = now or now_utc()
        t = self.table
        values = {c: result.get(c) for c in RESULT_COLUMNS}
        with self.log.engine.begin() as conn:
            updated = conn.execute(t.update().where(t.c.study_hash == study_hash, t.c.lease_owner == owner).values(
                **values, status=status, done_fingerprint=fingerprint, analyses=t.c.analyses + 1, result_at=now,
                lease_owner=None, lease_until=None, attempts=0, next_try_at=None, last_error=None)).rowcount
            if updated != 1:  # nothing was written
                return False
            if predictions:
                conn.execute(self.log.predictions_table.insert(), [p.row() for p in predictions])
        return True

    def fail(self, study_hash: str, owner: str, error: str, retry_in_s: float, now: dt.datetime | None = None) -> None:
        """Release a claim after a failure (``error`` must be redacted); the study is due again in ``retry_in_s``."""
        now = now or now_utc()
        t = self.table
        with self.log.engine.begin() as conn:
            conn.execute(t.update().where(t.c.study_hash == study_hash, t.c.lease_owner == owner).values(
                status="retrying", attempts=t.c.attempts + 1, last_error=error[:512], lease_owner=None,
                lease_until=None, next_try_at=now + dt.timedelta(seconds=retry_in_s)))

    def release(self, study_hash: str, owner: str) -> None:
        """Give a claim back unchanged (a worker stopping)."""
        t = self.table
        with self.log.engine.begin() as conn:
            conn.execute(t.update().where(t.c.study_hash == study_hash, t.c.lease_owner == owner).values(
                lease_owner=None, lease_until=None))

    def frame(self, limit: int | None = None) -> pd.DataFrame:
        """Every row (most recently seen first), times as UTC."""
        t = self.table
        q = self._sa.select(t).order_by(t.c.first_seen.desc(), t.c.study_hash)
        if limit is not None:
            q = q.limit(limit)
        with self.log.engine.begin() as conn:
            result = conn.execute(q)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        for c in ("stable_since", "first_seen", "lease_until", "next_try_at", "result_at"):
            if c in frame and len(frame):
                frame[c] = pd.to_datetime(frame[c], utc=True)
        return frame
