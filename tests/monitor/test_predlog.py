"""The prediction log (src/covidnet/monitor/predlog.py) on real SQLite files: restart, concurrency, keys."""

import datetime as dt
import hashlib
import hmac
import multiprocessing
import threading

import pytest

from covidnet.monitor.params import LogParams
from covidnet.monitor.predlog import (
    INSECURE_KEY,
    Prediction,
    PredictionLog,
    PredLogError,
    hash_id,
    predictions_from_answers,
    resolve_key,
    resolve_url,
)
from covidnet.params import ParamsError, load_params
from covidnet.preprocess.qc import QC_VALUES
from support import REPO

KEY = b"0123456789abcdef0123456789abcdef"


def _lp(**changes) -> LogParams:
    base = dict(url=None, url_env="COVIDNET_TEST_PREDLOG_URL", key_env="COVIDNET_TEST_KEY", allow_insecure_key=False,
                busy_timeout_s=30.0)
    return LogParams(**{**base, **changes})


def _row(i: int, version: str = "v1", t: dt.datetime | None = None, **kw) -> Prediction:
    qc = {c: float(i) for c in QC_VALUES}
    return Prediction(request_id=f"r{i}", time=t or dt.datetime(2024, 5, 1, 12, 0, i % 60, tzinfo=dt.timezone.utc),
                      model_name="covidnet", model_version=version, score=i / 100, probability=i / 100,
                      threshold=0.5, decision="covid19" if i >= 50 else "other_pneumonia", hospital="h1",
                      patient_hash=hash_id(KEY, "patient", f"P{i}"), study_hash=hash_id(KEY, "study", f"S{i}"),
                      qc=qc, qc_out_of_range=("noise_hu",) if i % 2 else (), **kw)


def test_hash_is_hmac_sha256_of_kind_and_id():
    expected = hmac.new(KEY, b"patient:P0001", hashlib.sha256).hexdigest()
    assert hash_id(KEY, "patient", "P0001") == expected and len(expected) == 64
    assert hash_id(KEY, "patient", " P0001 ") == expected  # stripped like the CSV cells
    assert hash_id(KEY, "study", "P0001") != expected and hash_id(b"another key of 16+ b", "patient", "P0001") != expected
    assert hash_id(KEY, "patient", None) is None and hash_id(KEY, "patient", "  ") is None


def test_key_rules(monkeypatch, caplog):
    monkeypatch.delenv("COVIDNET_TEST_KEY", raising=False)
    with pytest.raises(PredLogError, match=r"\$COVIDNET_TEST_KEY is not set.*refusing to start"):
        resolve_key(_lp(), synthetic=True)
    with pytest.raises(PredLogError, match="synthetic data only"):
        resolve_key(_lp(allow_insecure_key=True), synthetic=False)
    assert resolve_key(_lp(allow_insecure_key=True), synthetic=True) == INSECURE_KEY
    assert "PUBLIC demo key" in caplog.text
    monkeypatch.setenv("COVIDNET_TEST_KEY", "short")
    with pytest.raises(PredLogError, match="5 bytes; use at least 16"):
        resolve_key(_lp(allow_insecure_key=True), synthetic=True)
    monkeypatch.setenv("COVIDNET_TEST_KEY", KEY.decode())
    assert resolve_key(_lp(), synthetic=False) == KEY


def test_url_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("COVIDNET_TEST_PREDLOG_URL", raising=False)
    assert resolve_url(_lp(), tmp_path / "p.db") == f"sqlite:///{tmp_path / 'p.db'}"
    assert resolve_url(_lp(url="sqlite:///other.db"), tmp_path / "p.db") == "sqlite:///other.db"
    monkeypatch.setenv("COVIDNET_TEST_PREDLOG_URL", "postgresql://u@db/covidnet")
    assert resolve_url(_lp(url="sqlite:///other.db"), tmp_path / "p.db") == "postgresql://u@db/covidnet"
    with pytest.raises(ParamsError, match="monitor.log.key_env must name an environment variable"):
        _lp(key_env="not a name")


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request, tmp_path):
    """The log's database: a SQLite file (the default), and a real PostgreSQL server (the cluster's)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'predictions.db'}"  # the folder is created
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    engine = sa.create_engine(url)  # a clean database per test
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS feedback, predictions CASCADE")
    engine.dispose()
    return url


def test_rows_survive_reopening(log_url):
    """Rows written, the log closed (a server restart), a new log on the same database reads them back."""
    url = log_url
    first = PredictionLog(url, KEY, 30.0)
    assert first.append([_row(i) for i in range(3)]) == 3
    assert first.append([]) == 0
    if first.sqlite:
        with first.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    first.close()
    again = PredictionLog(url, KEY, 30.0)
    assert again.append([_row(70, version="v2")]) == 1
    frame = again.predictions()
    assert len(frame) == again.count() == 4
    assert list(frame["request_id"]) == ["r0", "r1", "r2", "r70"]
    assert str(frame["time"].dt.tz) == "UTC" and frame["time"].iloc[1] == dt.datetime(2024, 5, 1, 12, 0, 1,
                                                                                       tzinfo=dt.timezone.utc)
    assert frame["noise_hu"].tolist() == [0.0, 1.0, 2.0, 70.0]
    assert frame["qc_out_of_range"].tolist() == ["", "noise_hu", "", ""]
    assert frame["patient_hash"].iloc[0] == hash_id(KEY, "patient", "P0")
    # Windows and versions
    assert len(again.predictions(since=dt.datetime(2024, 5, 1, 12, 0, 1, tzinfo=dt.timezone.utc),
                                 until=dt.datetime(2024, 5, 1, 12, 0, 2, tzinfo=dt.timezone.utc))) == 1
    assert list(again.recent(2)["request_id"]) == ["r2", "r70"]
    assert list(again.recent(5, model_version="v1")["request_id"]) == ["r0", "r1", "r2"]
    again.close()


def _append_in_process(url: str, start: int, n: int, barrier) -> None:
    plog = PredictionLog(url, KEY, 30.0)
    barrier.wait()
    for i in range(start, start + n):
        plog.append([_row(i)])
    plog.close()


def test_concurrent_writers_lose_nothing(log_url):
    """32 threads sharing one log (as the server's worker threads do) and 4 processes with their own
    connections, all released at once by a barrier: exactly as many rows as appends."""
    url = log_url
    plog = PredictionLog(url, KEY, 30.0)
    n_threads = 32
    barrier = threading.Barrier(n_threads)

    def write(i: int) -> None:
        barrier.wait()
        plog.append([_row(i)])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert plog.count() == n_threads

    ctx = multiprocessing.get_context("spawn")
    pbarrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_append_in_process, args=(url, 1000 + 100 * k, 25, pbarrier)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert plog.count() == n_threads + 100
    assert plog.predictions()["request_id"].is_unique
    plog.close()


def test_unreachable_database_is_a_clear_error(tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(PredLogError, match=rf"prediction log sqlite:///{folder}: cannot be reached"):
        PredictionLog(f"sqlite:///{folder}", KEY, 1.0)
    with pytest.raises(PredLogError, match=r"postgresql://u:\*\*\*@127.0.0.1:9/db") as err:
        PredictionLog("postgresql://u:secret@127.0.0.1:9/db", KEY, 1.0)
    assert "secret" not in str(err.value)


def test_rows_from_answers_hash_ids_and_pick_the_hospital():
    answer = {"score": 0.7, "covid19_probability": 0.65, "threshold": 0.5, "decision": "covid19",
              "model": {"name": "covidnet", "version": "3"}, "qc": {"noise_hu": 12.0, "n_slices": 40},
              "qc_check": {"all_in_range": False, "out_of_range": ["noise_hu"]}}
    info = {"patient_id": "P7", "study_uid": "1.2.3", "institution": "hospital_b"}
    (row,) = predictions_from_answers([answer], [info], KEY, "req-1")
    assert row.hospital == "hospital_b" and row.patient_hash == hash_id(KEY, "patient", "P7")
    assert row.qc_out_of_range == ("noise_hu",) and row.row()["noise_hu"] == 12.0 and row.row()["hu_p05"] is None
    assert "P7" not in str(row.row()) and "1.2.3" not in str(row.row())
    (row,) = predictions_from_answers([{**answer, "qc_check": None}], [{}], KEY, "req-2", hospital="clinic_x")
    assert row.hospital == "clinic_x" and row.patient_hash is None and row.qc_out_of_range is None


def test_from_params_uses_paths_and_env(tmp_path, monkeypatch):
    params = load_params(REPO / "params.yaml")
    params["paths"]["predlog"] = str(tmp_path / "log.db")
    monkeypatch.delenv(params["monitor"]["log"]["url_env"], raising=False)
    monkeypatch.setenv(params["monitor"]["log"]["key_env"], KEY.decode())
    plog = PredictionLog.from_params(params)
    assert plog.url == f"sqlite:///{tmp_path / 'log.db'}" and plog.key == KEY
    plog.close()
    monkeypatch.setenv(params["monitor"]["log"]["url_env"], f"sqlite:///{tmp_path / 'env.db'}")
    plog = PredictionLog.from_params(params)
    assert plog.url.endswith("env.db")
    plog.close()
