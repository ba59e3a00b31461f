"""The ``pacs_studies`` table: observe, claim, finish exactly once, fail and retry; SQLite and PostgreSQL."""

import datetime as dt

import pytest

from covidnet.monitor.predlog import Prediction, PredictionLog
from covidnet.pacs.state import StudyState

KEY = b"k" * 32
T0 = dt.datetime(2024, 5, 1, 8, 0, 0)


def _prediction(h: str) -> Prediction:
    return Prediction(request_id="pacs-1", time=T0, model_name="covidnet", model_version="1", score=0.7,
                      probability=0.7, threshold=0.5, decision="covid19", study_hash=h)


@pytest.fixture(params=["sqlite", "postgres"])
def state(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    plog = PredictionLog(url, KEY, 5.0)
    if request.param == "postgres":  # one server for the session: start from empty tables
        with plog.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS pacs_studies")
            conn.exec_driver_sql("DELETE FROM predictions")
    s = StudyState(plog, lease_s=60.0)
    yield s
    s.close()


def test_observe_tracks_first_seen_and_stability(state):
    row = state.observe("h1", "watch", "1/12", "fpA", T0)
    assert row["status"] == "waiting" and row["first_seen"] == T0 and row["stable_since"] == T0
    later = T0 + dt.timedelta(seconds=30)
    assert state.observe("h1", "watch", "1/12", "fpA", later)["stable_since"] == T0  # unchanged: still stable
    row = state.observe("h1", "watch", "1/20", "fpB", later)
    assert row["stable_since"] == later and row["first_seen"] == T0 and row["counts"] == "1/20"


def test_claim_is_exclusive_and_finish_records_once(state):
    state.observe("h1", "watch", "1/12", "fpA", T0)
    assert state.claim("h1", "fpA", "w1", T0) == 0
    assert state.claim("h1", "fpA", "w2", T0) is None  # w1's lease runs
    assert state.finish("h1", "fpA", "w1", "done", {"probability": 0.7, "decision": "covid19"}, [_prediction("x")], T0)
    assert state.claim("h1", "fpA", "w2", T0) is None  # done for that content
    row = state.get("h1")
    assert row["status"] == "done" and row["analyses"] == 1 and row["probability"] == 0.7 and row["lease_owner"] is None
    assert state.log.count() == 1
    # the study changes: analysed again, with the next analysis number
    state.observe("h1", "watch", "2/30", "fpB", T0)
    assert state.get("h1")["status"] == "waiting" and state.get("h1")["probability"] == 0.7
    assert state.claim("h1", "fpB", "w2", T0) == 1


def test_lost_lease_writes_nothing(state):
    state.observe("h1", "watch", "1/12", "fpA", T0)
    assert state.claim("h1", "fpA", "w1", T0) == 0
    after_lease = T0 + dt.timedelta(seconds=61)
    assert state.claim("h1", "fpA", "w2", after_lease) == 0  # w1 took too long: w2 may take over
    assert not state.finish("h1", "fpA", "w1", "done", {"probability": 0.1}, [_prediction("x")], after_lease)
    assert state.log.count() == 0 and state.get("h1")["probability"] is None
    assert state.finish("h1", "fpA", "w2", "done", {"probability": 0.2}, [_prediction("x")], after_lease)
    assert state.log.count() == 1 and state.get("h1")["analyses"] == 1


def test_fail_backs_off_then_allows_a_retry(state):
    state.observe("h1", "watch", "1/12", "fpA", T0)
    state.claim("h1", "fpA", "w1", T0)
    state.fail("h1", "w1", "STOW-RS: HTTP 400", retry_in_s=30, now=T0)
    row = state.get("h1")
    assert row["status"] == "retrying" and row["attempts"] == 1 and row["lease_owner"] is None
    assert state.claim("h1", "fpA", "w1", T0 + dt.timedelta(seconds=10)) is None
    assert state.claim("h1", "fpA", "w1", T0 + dt.timedelta(seconds=31)) == 0
    state.release("h1", "w1")
    assert state.get("h1")["lease_owner"] is None


def test_finish_checks_its_arguments(state):
    with pytest.raises(ValueError, match="status"):
        state.finish("h", "f", "w", "retrying", {})
    with pytest.raises(ValueError, match="unknown result"):
        state.finish("h", "f", "w", "done", {"patient_id": "x"})


def test_two_processes_share_the_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    a, b = StudyState(PredictionLog(url, KEY, 5.0), 60.0), StudyState(PredictionLog(url, KEY, 5.0), 60.0)
    a.observe("h1", "listen", None, "fp", T0)
    assert b.claim("h1", "fp", "b", T0) == 0 and a.claim("h1", "fp", "a", T0) is None
    assert list(b.frame()["study_hash"]) == ["h1"]
