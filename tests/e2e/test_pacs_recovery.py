"""Exactly once across crashes and outages: a watcher killed mid-run, Orthanc restarted mid-run, a study that changes.

After recovery every CT study holds exactly one current result (one SR, one overlay) and the
prediction log one row per analysis: the tests count both, in Orthanc (through its REST API)
and in the database. Skipped, saying so, where Orthanc is not installed.
"""

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from covidnet.monitor.predlog import PredictionLog
from covidnet.pacs.dicomweb import PacsClient, current_reports
from covidnet.pacs.params import pacs_params
from covidnet.pacs.pipeline import Processor
from covidnet.pacs.retry import PacsError
from covidnet.pacs.scorer import LocalScorer
from covidnet.pacs.sr import report_values
from covidnet.pacs.state import StudyState
from covidnet.pacs.watch import Watcher
from covidnet.params import load_params
from support.orthanc import (
    KEY,
    Orthanc,
    ct_study,
    orthanc_missing,
    pacs_env,
    studies_with_status,
    study_uid_of,
    wait_until,
    write_params,
)
from support.server import tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.skipif(orthanc_missing() is not None, reason=str(orthanc_missing()))]
ROOT = "1.2.826.0.1.3680043.8.498.1.13."


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("recovery-model"))


@pytest.fixture
def pacs(tmp_path, model):
    """A fresh Orthanc with ``n`` CT studies uploaded on demand; params pointing at it."""
    with Orthanc(tmp_path / "orthanc") as orthanc:
        def upload(n: int, tag: str) -> list[str]:
            uids = []
            for i in range(n):
                folder = ct_study(tmp_path / "studies", f"{tag}{i}", f"RECOVERY-{tag}-{i}", seed=i)
                orthanc.upload(folder)
                uids.append(study_uid_of(folder))
            return uids

        yield {"orthanc": orthanc, "params": write_params(tmp_path, orthanc), "tmp": tmp_path, "upload": upload,
               "db": tmp_path / "predlog.db"}


def _watcher(params_path, model, monkeypatch, owner="test-worker") -> Watcher:
    monkeypatch.setenv("COVIDNET_HASH_KEY", KEY)
    params = load_params(params_path)
    pp = pacs_params(params)
    state = StudyState(PredictionLog.from_params(params), pp.lease_s)
    client = PacsClient(pp, state.key)
    processor = Processor(pp, LocalScorer.load(params, str(model), state.key), client, state, owner)
    return Watcher(pp, client, state, processor)


def assert_exactly_one_current_result(pacs, uids, analyses=1):
    """Each study: one SR (current) and one overlay in Orthanc; one prediction row per analysis in the log."""
    for uid in uids:
        found = pacs["orthanc"].results(uid, ROOT)
        assert len(found["SR"]) == analyses and len(found["OT"]) == analyses, {k: len(v) for k, v in found.items()}
        assert len(current_reports(found["SR"])) == 1
    with sqlite3.connect(pacs["db"]) as db:
        per_study = db.execute("SELECT study_hash, COUNT(*) FROM predictions GROUP BY study_hash").fetchall()
        state = db.execute("SELECT status, analyses FROM pacs_studies").fetchall()
    assert len(per_study) == len(uids) and all(n == analyses for _, n in per_study), per_study
    assert sorted(state) == [("done", analyses)] * len(uids), state


def test_crash_between_store_and_record_stores_once(pacs, model, monkeypatch):
    """Killed after STOW-RS, before the state: the next run derives the same UIDs, so the PACS keeps one copy."""
    uids = pacs["upload"](2, "crash")
    watcher = _watcher(pacs["params"], model, monkeypatch)
    real_finish, calls = watcher.state.finish, []

    def finish_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed between STOW-RS and the state's commit")
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(watcher.state, "finish", finish_then_die)
    with pytest.raises(KeyboardInterrupt):
        watcher.poll()
    stored = sum(len(pacs["orthanc"].results(u, ROOT)["SR"]) for u in uids)
    assert stored == 1  # the first study's SR reached the PACS; its state did not
    total = watcher.run(once=True)
    assert total.processed == {"done": 2}
    assert_exactly_one_current_result(pacs, uids)


def test_pacs_outage_during_store_is_retried(pacs, model, monkeypatch, caplog):
    """Orthanc stops just before a STOW-RS and comes back 1.5 s later: retried with back-off, nothing lost."""
    uids = pacs["upload"](2, "outage")
    watcher = _watcher(pacs["params"], model, monkeypatch)
    real_store, restarts = watcher.client.store, []

    def store_during_outage(datasets):
        if not restarts:
            pacs["orthanc"].stop()
            restarts.append(threading.Timer(1.5, pacs["orthanc"].start))
            restarts[0].start()
        return real_store(datasets)

    monkeypatch.setattr(watcher.client, "store", store_during_outage)
    with caplog.at_level(logging.WARNING, logger="covidnet.pacs.retry"):
        total = watcher.run(once=True)
    restarts[0].join()
    assert total.processed == {"done": 2} and total.failed == 0
    assert any("STOW-RS: unavailable" in r.getMessage() and "retry 1/" in r.getMessage() for r in caplog.records)
    assert_exactly_one_current_result(pacs, uids)


def _done(db) -> int:
    return studies_with_status(db, "done")


def test_killed_watcher_and_restarted_orthanc_leave_one_result_each(pacs, model):
    """The real command: SIGKILL the follower mid-run, restart it, restart Orthanc mid-run; then count."""
    uids = pacs["upload"](6, "kill")
    cmd = [sys.executable, "-m", "covidnet.cli.main", "pacs", "watch", "--params", str(pacs["params"]),
           "--model-dir", str(model)]
    logs = [pacs["tmp"] / "watch1.log", pacs["tmp"] / "watch2.log"]
    with open(logs[0], "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=pacs_env())
    try:
        wait_until(lambda: _done(pacs["db"]) >= 1, 120, "the first watcher analysed a study")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    killed_at = _done(pacs["db"])
    assert killed_at < len(uids), "the watcher finished before it was killed: not mid-run"
    with open(logs[1], "w") as out:
        second = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=pacs_env())
    try:
        wait_until(lambda: _done(pacs["db"]) > killed_at, 120, "the restarted watcher analysed a study")
        pacs["orthanc"].stop()
        time.sleep(2.0)
        pacs["orthanc"].start()
        wait_until(lambda: _done(pacs["db"]) == len(uids), 180, "every study analysed after Orthanc came back")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    text = logs[1].read_text()
    assert "unavailable" in text, text[-3000:]  # the outage was seen and retried
    assert_exactly_one_current_result(pacs, uids)


def test_changed_study_is_analysed_again_and_the_new_sr_supersedes(pacs, model, monkeypatch):
    (uid,) = pacs["upload"](1, "change")
    watcher = _watcher(pacs["params"], model, monkeypatch)
    assert watcher.run(once=True).processed == {"done": 1}
    (old,) = pacs["orthanc"].results(uid, ROOT)["SR"]
    patient = str(old.PatientID)
    longer = ct_study(pacs["tmp"] / "studies", "change-extra", patient, seed=3, slices=16, study_uid=uid, series_number=3)
    pacs["orthanc"].upload(longer)
    assert watcher.run(once=True).processed == {"done": 1}
    found = pacs["orthanc"].results(uid, ROOT)
    (current,) = current_reports(found["SR"])
    assert current.SOPInstanceUID != old.SOPInstanceUID and len(found["SR"]) == 2 and len(found["OT"]) == 2
    predecessor = current.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert report_values(current)["series"] != report_values(old)["series"]  # the longer series, chosen now
    assert "most slices (16)" in report_values(current)["selection"]
    assert watcher.run(once=True).processed == {}  # and not again
    assert_exactly_one_current_result(pacs, [uid], analyses=2)


def test_a_refused_store_is_retried_later_and_once_does_not_wait_for_it(pacs, model, monkeypatch):
    (uid,) = pacs["upload"](1, "refused")
    watcher = _watcher(pacs["params"], model, monkeypatch)
    real_store = watcher.client.store
    monkeypatch.setattr(watcher.client, "store", lambda datasets: (_ for _ in ()).throw(PacsError("STOW-RS: HTTP 400")))
    t0 = time.perf_counter()
    total = watcher.run(once=True)
    assert total.failed == 1 and not total.processed and time.perf_counter() - t0 < 30
    assert watcher.run(once=True).deferred == 1  # a second --once sees it backing off, and does not wait either
    with sqlite3.connect(pacs["db"]) as db:
        status, attempts, error = db.execute("SELECT status, attempts, last_error FROM pacs_studies").fetchone()
    assert (status, attempts) == ("retrying", 1) and "HTTP 400" in error
    assert not pacs["orthanc"].results(uid, ROOT)["SR"]
    monkeypatch.setattr(watcher.client, "store", real_store)
    with sqlite3.connect(pacs["db"]) as db:  # the back-off (pacs.retry.max_backoff_s) has passed
        db.execute("UPDATE pacs_studies SET next_try_at = NULL")
    assert watcher.run(once=True).processed == {"done": 1}
    assert_exactly_one_current_result(pacs, [uid])
