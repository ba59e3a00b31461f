"""DIMSE: Orthanc sends studies by C-STORE (as to a modality) to ``covidnet pacs listen``; results come back into Orthanc.

The listener runs as the ``covidnet`` command in a subprocess; Orthanc knows it as the
modality ``covidnet`` (its ``DicomModalities``) and is asked over its REST API to send each
study (``/modalities/covidnet/store``). Skipped, saying so, where Orthanc is not installed.
"""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from covidnet.pacs.scorer import LocalScorer
from covidnet.pacs.sr import report_values
from covidnet.params import load_params
from support.orthanc import (
    KEY,
    Orthanc,
    ct_study,
    free_port,
    identifiers,
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


def _finished(db) -> int:
    return studies_with_status(db, "done", "unanalysable")


def test_studies_pushed_by_c_store_get_one_result_each(tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "model-run")
    port = free_port()
    folders = {f"ct{i}": ct_study(tmp_path / "studies", f"ct{i}", f"PACSLISTEN-{i:02d}", seed=i) for i in range(2)}
    folders["contrast"] = ct_study(tmp_path / "studies", "contrast", "PACSLISTEN-CONTRAST", contrast=True, seed=6)
    with Orthanc(tmp_path / "orthanc", modalities={"covidnet": ("COVIDNET", port)}) as orthanc:
        params = write_params(tmp_path, orthanc)
        for folder in folders.values():
            orthanc.upload(folder)
        uids = {k: study_uid_of(f) for k, f in folders.items()}
        log_path = tmp_path / "listen.log"
        with open(log_path, "w") as out:
            listener = subprocess.Popen(
                [sys.executable, "-m", "covidnet.cli.main", "pacs", "listen", "--port", str(port), "--params",
                 str(params), "--model-dir", str(model)], stdout=out, stderr=subprocess.STDOUT, env=pacs_env())
        try:
            wait_until(lambda: _echo(orthanc), 60, f"the SCP answers C-ECHO:\n{log_path.read_text()[-2000:]}")
            for uid in uids.values():
                orthanc.post("/modalities/covidnet/store", {"Resources": [orthanc.study_id(uid)], "Synchronous": True})
            wait_until(lambda: _finished(tmp_path / "predlog.db") == 3, 120, f"3 studies:\n{log_path.read_text()[-3000:]}")
            # the same study pushed again: nothing new
            orthanc.post("/modalities/covidnet/store", {"Resources": [orthanc.study_id(uids["ct0"])], "Synchronous": True})
            time.sleep(3.0)
        finally:
            listener.send_signal(signal.SIGTERM)
            assert listener.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        monkeypatch.setenv("COVIDNET_HASH_KEY", KEY)
        scorer = LocalScorer.load(load_params(params), str(model), KEY.encode())
        for name in ("ct0", "ct1"):
            found = orthanc.results(uids[name], ROOT)
            assert len(found["SR"]) == 1 and len(found["OT"]) == 1, (name, {k: len(v) for k, v in found.items()})
            v = report_values(found["SR"][0])
            expected = scorer.analyse(folders[name], "check").answer
            assert abs(v["probability"] - expected["covid19_probability"]) <= 1e-6 and v["series"] == expected["series_uid"]
        found = orthanc.results(uids["contrast"], ROOT)
        assert len(found["SR"]) == 1 and not found["OT"]
        assert "contrast-enhanced" in report_values(found["SR"][0])["reason"]
        # what the listener analysed, the watcher does not analyse again (same fingerprint), nor the reverse
        r = subprocess.run([sys.executable, "-m", "covidnet.cli.main", "pacs", "watch", "--once", "--params",
                            str(params), "--model-dir", str(model)], capture_output=True, text=True, env=pacs_env(),
                           timeout=300)
        assert r.returncode == 0 and "processed: nothing new" in r.stdout, r.stdout + r.stderr[-2000:]
    secret = set().union(*(identifiers(f) for f in folders.values()))
    text = log_path.read_text() + "\n".join(p.name for p in (tmp_path / "spool").rglob("*"))
    with sqlite3.connect(tmp_path / "predlog.db") as db:
        text += "\n".join(db.iterdump())
    assert "pushed studies processed" in text
    leaked = sorted(s for s in secret if s in text)
    assert not leaked, leaked


def _echo(orthanc) -> bool:
    try:
        orthanc.post("/modalities/covidnet/echo", json.dumps({}).encode(), timeout=10)
        return True
    except OSError:
        return False
