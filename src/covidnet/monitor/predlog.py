"""The prediction log: one row per answered study, in any SQLAlchemy database.

A SQLite file by default (``paths.predlog``), PostgreSQL or any other SQLAlchemy URL in a
cluster (``monitor.log.url``, or the environment variable named by ``monitor.log.url_env``,
which wins). Two tables (SQLAlchemy Core, created when missing):

``predictions``
    ``request_id``, ``time`` (UTC), ``hospital`` (a request parameter, else the DICOM
    InstitutionName), ``model_name``, ``model_version``, ``mlflow_run_id`` (the training run,
    where the model's reference profile is), ``patient_hash``, ``study_hash``,
    ``score`` (the network's sigmoid output), ``probability`` (calibrated), ``threshold``,
    ``decision``, one column per QC value (:data:`covidnet.preprocess.qc.QC_VALUES`) and
    ``qc_out_of_range`` (the QC fields outside the training range, comma-separated).
``feedback``
    one PCR result per patient: ``patient_hash`` (unique), ``pcr_positive``, ``pcr_date``,
    ``source`` (the file it came from), ``ingested_at`` (UTC).

No names or other identifying data are stored: patient and study ids appear only as
``HMAC-SHA256(key, "<kind>:<id>")`` in hex (:func:`hash_id`, kind ``patient`` or ``study``),
the key coming from the environment variable named by ``monitor.log.key_env``. Without it
:func:`resolve_key` refuses, unless ``monitor.log.allow_insecure_key`` is set for the
synthetic demo, where a fixed public key is used and a warning says so (refused when
``data.source`` is ``real``).

Every :meth:`PredictionLog.append` is one transaction, committed before it returns. SQLite
runs in WAL mode with a busy timeout and each write transaction starts with ``BEGIN
IMMEDIATE``, so concurrent writers (threads or processes) wait for each other instead of
failing, and none of their rows is lost. A database that cannot be reached when the log is
opened raises :class:`PredLogError` naming the URL (password hidden).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from covidnet.errors import CovidnetError
from covidnet.monitor.params import LogParams
from covidnet.params import is_synthetic
from covidnet.preprocess.qc import QC_VALUES

log = logging.getLogger(__name__)

#: The synthetic demo's key: public, so hashes made with it protect nothing.
INSECURE_KEY = b"covidnet synthetic demo key - public, never for patient data"
#: HMAC keys shorter than this are refused (128 bits).
MIN_KEY_BYTES = 16


class PredLogError(CovidnetError, RuntimeError):
    """The prediction log cannot be used: unreachable database, missing key; the message says which."""


def resolve_url(params: LogParams, sqlite_path: Path | str) -> str:
    """The database URL: ``$<url_env>``, else ``params.url``, else SQLite at ``sqlite_path``."""
    env = os.environ.get(params.url_env, "").strip()
    if env:
        return env
    if params.url:
        return params.url
    return f"sqlite:///{Path(sqlite_path)}"


def resolve_key(params: LogParams, synthetic: bool) -> bytes:
    """The HMAC key from ``$<key_env>``; the public demo key only where params allow it.

    Raises:
        PredLogError: the variable is unset (or too short) and the insecure key is not
            allowed, or it is allowed but the data are not synthetic.
    """
    raw = os.environ.get(params.key_env, "")
    if raw:
        key = raw.encode()
        if len(key) < MIN_KEY_BYTES:
            raise PredLogError(f"${params.key_env}: the hash key has {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                               "(e.g. `openssl rand -hex 32`)")
        return key
    if not params.allow_insecure_key:
        raise PredLogError(f"${params.key_env} is not set: the prediction log needs a secret key to hash patient and "
                           "study ids (monitor.log.key_env); refusing to start")
    if not synthetic:
        raise PredLogError(f"${params.key_env} is not set and monitor.log.allow_insecure_key applies to synthetic data "
                           "only (data.source is not 'synthetic'); refusing to start")
    log.warning("$%s is not set: hashing ids with the PUBLIC demo key (monitor.log.allow_insecure_key, synthetic "
                "data only); set $%s for real patients", params.key_env, params.key_env)
    return INSECURE_KEY


def hash_id(key: bytes, kind: str, value: Any) -> str | None:
    """``HMAC-SHA256(key, f"{kind}:{value}")`` as 64 hex digits; None for a missing or empty id."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return None
    return hmac.new(key, f"{kind}:{str(value).strip()}".encode(), hashlib.sha256).hexdigest()


def utc_naive(t: dt.datetime) -> dt.datetime:
    """A datetime as naive UTC (how the log stores time); a naive input is taken as UTC."""
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


@dataclass(frozen=True)
class Prediction:
    """One row of the ``predictions`` table (ids already hashed)."""

    request_id: str
    time: dt.datetime
    model_name: str
    model_version: str
    score: float
    probability: float
    threshold: float
    decision: str
    mlflow_run_id: str | None = None
    hospital: str | None = None
    patient_hash: str | None = None
    study_hash: str | None = None
    qc: dict[str, float | None] = field(default_factory=dict)
    qc_out_of_range: tuple[str, ...] | None = None

    def row(self) -> dict[str, Any]:
        qc = {c: _float_or_none(self.qc.get(c)) for c in QC_VALUES}
        return {"request_id": self.request_id, "time": utc_naive(self.time), "hospital": self.hospital,
                "model_name": self.model_name, "model_version": self.model_version,
                "mlflow_run_id": self.mlflow_run_id, "patient_hash": self.patient_hash, "study_hash": self.study_hash, "score": float(self.score),
                "probability": float(self.probability), "threshold": float(self.threshold),
                "decision": self.decision, **qc,
                "qc_out_of_range": None if self.qc_out_of_range is None else ",".join(self.qc_out_of_range)}


def _float_or_none(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def predictions_from_answers(answers: Sequence[dict], infos: Sequence[dict], key: bytes, request_id: str,
                             hospital: str | None = None, time: dt.datetime | None = None) -> list[Prediction]:
    """Log rows for one request from :func:`covidnet.serve.answer.results` answers and the studies' infos.

    Args:
        answers: the per-study answers (score, probability, decision, model, qc, qc_check).
        infos: the per-study infos (``patient_id``, ``study_uid``, ``institution``), same order.
        key: the HMAC key of the id hashes.
        request_id: the request's id (one per request; studies of one request share it).
        hospital: the request's ``hospital`` parameter; else each study's InstitutionName.
        time: when it was answered (default now, UTC).
    """
    time = time or dt.datetime.now(dt.timezone.utc)
    rows = []
    for a, info in zip(answers, infos, strict=True):
        check = a.get("qc_check") or {}
        flagged = tuple(check.get("out_of_range") or ()) if check.get("all_in_range") is not None else None
        rows.append(Prediction(
            request_id=request_id, time=time, model_name=str(a["model"]["name"]),
            model_version=str(a["model"]["version"]), mlflow_run_id=a["model"].get("mlflow_run_id"),
            score=a["score"], probability=a["covid19_probability"],
            threshold=a["threshold"], decision=a["decision"],
            hospital=hospital or (info.get("institution") or None),
            patient_hash=hash_id(key, "patient", info.get("patient_id")),
            study_hash=hash_id(key, "study", info.get("study_uid")), qc=dict(a.get("qc") or {}),
            qc_out_of_range=flagged))
    return rows


def _tables():
    import sqlalchemy as sa

    meta = sa.MetaData()
    predictions = sa.Table(
        "predictions", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime, nullable=False, index=True),
        sa.Column("hospital", sa.String(128)),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("patient_hash", sa.String(64), index=True),
        sa.Column("study_hash", sa.String(64)),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        *[sa.Column(c, sa.Float) for c in QC_VALUES],
        sa.Column("qc_out_of_range", sa.String(256)),
    )
    feedback = sa.Table(
        "feedback", meta,
        sa.Column("patient_hash", sa.String(64), primary_key=True),
        sa.Column("pcr_positive", sa.Boolean, nullable=False),
        sa.Column("pcr_date", sa.Date, nullable=False),
        sa.Column("source", sa.String(256)),
        sa.Column("ingested_at", sa.DateTime, nullable=False),
    )
    return meta, predictions, feedback


class PredictionLog:
    """The prediction log in one database (see the module docstring).

    Args:
        url: a SQLAlchemy URL; for SQLite the folder of the file is created.
        key: the HMAC key (:func:`resolve_key`); None for a reader that hashes nothing.
        busy_timeout_s: SQLite: how long a writer waits for another's lock.

    Raises:
        PredLogError: the database cannot be reached or its tables cannot be created.
    """

    def __init__(self, url: str, key: bytes | None, busy_timeout_s: float) -> None:
        import sqlalchemy as sa
        from sqlalchemy import event

        self.key = key
        self._sa = sa
        parsed = sa.engine.make_url(url)
        self.url = parsed.render_as_string(hide_password=True)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        if self.sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        try:
            self.engine = sa.create_engine(url, **kwargs)
        except (sa.exc.SQLAlchemyError, ImportError) as exc:  # ImportError: the URL's driver is not installed
            raise PredLogError(f"prediction log {self.url}: cannot create an engine ({type(exc).__name__}: {exc})") from None
        if self.sqlite:
            ms = int(busy_timeout_s * 1000)

            @event.listens_for(self.engine, "connect")
            def _sqlite_connect(dbapi_conn, _record):
                dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below emits BEGIN itself
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA busy_timeout={ms}")
                cur.close()

            @event.listens_for(self.engine, "begin")
            def _sqlite_begin(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock first: no upgrade deadlock

        self.meta, self.predictions_table, self.feedback_table = _tables()
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.text("SELECT 1"))
            self.meta.create_all(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise PredLogError(f"prediction log {self.url}: cannot be reached or set up "
                               f"({type(exc.orig or exc).__name__}: {exc.orig or exc})") from None

    @classmethod
    def from_params(cls, params: dict[str, Any], with_key: bool = True) -> "PredictionLog":
        """Open the log the params describe (``monitor.log``, ``paths.predlog``, ``data.source``).

        Args:
            with_key: resolve the hash key (:func:`resolve_key`); readers such as the drift
                report need none.
        """
        from covidnet.monitor.params import monitor_params
        from covidnet.paths import Paths

        lp = monitor_params(params).log
        key = resolve_key(lp, is_synthetic(params)) if with_key else None
        return cls(resolve_url(lp, Paths.from_params(params).predlog), key, lp.busy_timeout_s)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def append(self, rows: Sequence[Prediction]) -> int:
        """Insert ``rows`` in one transaction, committed when this returns; the number inserted.

        Raises:
            PredLogError: the write failed (nothing of ``rows`` is stored).
        """
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(self.predictions_table.insert(), [r.row() for r in rows])
        except self._sa.exc.SQLAlchemyError as exc:
            raise PredLogError(f"prediction log {self.url}: cannot write {len(rows)} row(s) ({exc.orig or exc})") from None
        return len(rows)

    def _frame(self, query) -> pd.DataFrame:
        with self.engine.begin() as conn:
            result = conn.execute(query)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        if "time" in frame and len(frame):
            frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame

    def predictions(self, since: dt.datetime | None = None, until: dt.datetime | None = None,
                    model_version: str | None = None) -> pd.DataFrame:
        """Rows with ``since <= time < until`` (UTC; None: unbounded), oldest first."""
        t = self.predictions_table
        q = self._sa.select(t).order_by(t.c.time, t.c.id)
        if since is not None:
            q = q.where(t.c.time >= utc_naive(since))
        if until is not None:
            q = q.where(t.c.time < utc_naive(until))
        if model_version is not None:
            q = q.where(t.c.model_version == model_version)
        return self._frame(q)

    def recent(self, n: int, model_name: str | None = None, model_version: str | None = None) -> pd.DataFrame:
        """The last ``n`` rows (of one model version when given), oldest first."""
        t = self.predictions_table
        q = self._sa.select(t).order_by(t.c.time.desc(), t.c.id.desc()).limit(n)
        if model_name is not None:
            q = q.where(t.c.model_name == model_name)
        if model_version is not None:
            q = q.where(t.c.model_version == model_version)
        return self._frame(q).iloc[::-1].reset_index(drop=True)

    def count(self) -> int:
        """Rows in ``predictions``."""
        t = self.predictions_table
        with self.engine.begin() as conn:
            return int(conn.execute(self._sa.select(self._sa.func.count()).select_from(t)).scalar_one())

    def _present(self, conn, column, values: Sequence[str]) -> set[str]:
        """The ``values`` that ``column`` holds, asked in bounded ``IN`` lists of 500."""
        wanted, found = sorted(set(values)), set()
        for start in range(0, len(wanted), 500):
            q = self._sa.select(column).where(column.in_(wanted[start:start + 500])).distinct()
            found |= {r[0] for r in conn.execute(q)}
        return found

    def known_patients(self, hashes: Sequence[str]) -> set[str]:
        """The hashes among ``hashes`` that some prediction carries."""
        with self.engine.begin() as conn:
            return self._present(conn, self.predictions_table.c.patient_hash, hashes)

    def feedback(self) -> pd.DataFrame:
        """Every PCR result (``patient_hash``, ``pcr_positive``, ``pcr_date``, ``source``, ``ingested_at``)."""
        frame = self._frame(self._sa.select(self.feedback_table).order_by(self.feedback_table.c.patient_hash))
        if len(frame):
            frame["pcr_date"] = pd.to_datetime(frame["pcr_date"])
            frame["pcr_positive"] = frame["pcr_positive"].astype(bool)
        return frame

    def add_feedback(self, rows: Sequence[dict[str, Any]]) -> tuple[int, list[str]]:
        """Insert PCR results in one transaction, skipping patients that already have one.

        Args:
            rows: ``{"patient_hash", "pcr_positive", "pcr_date", "source"}`` each.

        Returns:
            ``(inserted, already_present)``: the count inserted and the hashes skipped because
            the table held them already (checked inside the same transaction).
        """
        t = self.feedback_table
        now = utc_naive(dt.datetime.now(dt.timezone.utc))
        hashes = [r["patient_hash"] for r in rows]
        with self.engine.begin() as conn:
            present = self._present(conn, t.c.patient_hash, hashes)
            new = [{**r, "ingested_at": now} for r in rows if r["patient_hash"] not in present]
            if new:
                conn.execute(t.insert(), new)
        return len(new), sorted(present)
