"""The PACS loop end to end: a fresh Orthanc, ``covidnet pacs watch --once``, the endpoint, the worklist in Chromium.

Synthetic studies (real DICOM files, patient ids chosen here) are stored into Orthanc as a
modality would; the watcher runs as the ``covidnet`` command in a subprocess, scoring in its own
process; the endpoint is ``covidnet serve`` on the same tiny model; Orthanc is read back through
its own REST API. Skipped, saying so, where Orthanc (``bash scripts/orthanc.sh install``) or
Chromium is missing.
"""

import json
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pydicom
import pytest

from covidnet.pacs.sr import report_values
from covidnet.serve.client import send_study
from support.orthanc import (
    Orthanc,
    ct_study,
    free_port,
    identifiers,
    orthanc_missing,
    pacs_env,
    study_uid_of,
    write_params,
)
from support.server import running_server, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.skipif(orthanc_missing() is not None, reason=str(orthanc_missing()))]
ROOT = "1.2.826.0.1.3680043.8.498.1.13."


def covidnet(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covidnet.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=pacs_env(), timeout=timeout)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A tiny model, a fresh Orthanc holding 3 CT studies, a contrast-only one and an MR study."""
    tmp = tmp_path_factory.mktemp("pacs")
    model = tiny_model(tmp)
    studies = tmp / "studies"
    folders = {f"ct{i}": ct_study(studies, f"ct{i}", f"PACSWATCH-{i:02d}", seed=i) for i in range(3)}
    folders["contrast"] = ct_study(studies, "contrast", "PACSWATCH-CONTRAST", contrast=True, seed=7)
    mr = ct_study(studies, "mr", "PACSWATCH-MR", seed=8)
    for f in mr.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    with Orthanc(tmp / "orthanc") as orthanc:
        for folder in [*folders.values(), mr]:
            orthanc.upload(folder)
        yield {"tmp": tmp, "model": model, "orthanc": orthanc, "params": write_params(tmp, orthanc),
               "folders": folders, "mr": mr, "uids": {k: study_uid_of(f) for k, f in folders.items()}}


@pytest.fixture(scope="module")
def watched(pacs):
    t0 = time.perf_counter()
    r = covidnet("pacs", "watch", "--once", "--params", pacs["params"], "--model-dir", pacs["model"])
    assert r.returncode == 0, r.stderr[-3000:]
    return {"run": r, "seconds": time.perf_counter() - t0}


@pytest.fixture(scope="module")
def server(pacs):
    with running_server(["--model-dir", str(pacs["model"]), "--params", str(pacs["params"])], pacs["tmp"], pacs_env(),
                        pacs["tmp"] / "server.log") as base:
        yield base


def test_once_leaves_exactly_one_sr_and_one_image_in_each_ct_study(pacs, watched):
    orthanc = pacs["orthanc"]
    assert "processed: 3 done, 1 unanalysable" in watched["run"].stdout, watched["run"].stdout
    for name in ("ct0", "ct1", "ct2"):
        found = orthanc.results(pacs["uids"][name], ROOT)
        assert len(found["SR"]) == 1 and len(found["OT"]) == 1, (name, {k: len(v) for k, v in found.items()})
        (sr,), (sc,) = found["SR"], found["OT"]
        v = report_values(sr)
        assert v["status"] == "Analysed" and v["overlay"] == sc.SOPInstanceUID
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and "NOT FOR DIAGNOSIS" in sc.ImageComments
        assert sc.StudyInstanceUID == sr.StudyInstanceUID == pacs["uids"][name]
        import highdicom as hd

        hd.sr.ComprehensiveSR.from_dataset(sr)  # highdicom reads it back


def test_sr_probability_equals_the_endpoints_answer(pacs, watched, server):
    for name in ("ct0", "ct1", "ct2"):
        (answer,) = send_study(pacs["folders"][name], server, "covidnet")
        (sr,) = pacs["orthanc"].results(pacs["uids"][name], ROOT)["SR"]
        v = report_values(sr)
        assert abs(v["probability"] - answer["covid19_probability"]) <= 1e-6, (name, v["probability"], answer)
        assert v["series"] == answer["series_uid"] and v["threshold"] == answer["threshold"]
        assert v["decision"] == {"covid19": "COVID-19", "other_pneumonia": "Pneumonia"}[answer["decision"]]
        assert v["abnormal"] == pytest.approx(100 * answer["lesions"]["abnormal_fraction"], abs=1e-6)
        assert v["version"] == answer["model"]["version"]


def test_contrast_only_study_gets_an_sr_with_the_reason(pacs, watched):
    found = pacs["orthanc"].results(pacs["uids"]["contrast"], ROOT)
    assert len(found["SR"]) == 1 and not found["OT"]
    v = report_values(found["SR"][0])
    assert v["status"] == "Not analysed" and "contrast-enhanced" in v["reason"] and "probability" not in v


def test_non_ct_study_is_left_alone(pacs, watched):
    series = pacs["orthanc"].series_of(study_uid_of(pacs["mr"]))
    assert [s["modality"] for s in series] == ["MR"]


def test_a_second_run_adds_nothing(pacs, watched):
    r = covidnet("pacs", "watch", "--once", "--params", pacs["params"], "--model-dir", pacs["model"])
    assert r.returncode == 0 and "processed: nothing new" in r.stdout, r.stdout + r.stderr[-2000:]
    for uid in pacs["uids"].values():
        assert len(pacs["orthanc"].results(uid, ROOT)["SR"]) == 1


def test_no_identifier_in_the_watchers_log_or_the_database(pacs, watched):
    secret = set()
    for folder in [*pacs["folders"].values(), pacs["mr"]]:
        secret |= identifiers(folder)
    log = watched["run"].stdout + watched["run"].stderr
    assert "study " in log and "SR and overlay stored" in log  # it does say what it did
    with sqlite3.connect(pacs["tmp"] / "predlog.db") as db:
        dump = "\n".join(db.iterdump())
    assert "pacs_studies" in dump and "INSERT INTO" in dump
    leaked = sorted(s for s in secret if s in log or s in dump)
    assert not leaked, leaked
    with sqlite3.connect(pacs["tmp"] / "predlog.db") as db:
        n = db.execute("SELECT COUNT(*), COUNT(DISTINCT study_hash) FROM predictions WHERE request_id LIKE 'pacs-%'"
                       ).fetchone()
    assert n == (3, 3)  # one prediction row per study the watcher analysed (the endpoint logs its own)


def test_watch_through_a_running_endpoint(pacs, watched, server):
    folder = ct_study(pacs["tmp"] / "studies", "via-endpoint", "PACSWATCH-EP", seed=4)
    pacs["orthanc"].upload(folder)
    r = covidnet("pacs", "watch", "--once", "--params", pacs["params"], "--endpoint", server)
    assert r.returncode == 0 and "processed: 1 done" in r.stdout, r.stdout + r.stderr[-2000:]
    (sr,) = pacs["orthanc"].results(study_uid_of(folder), ROOT)["SR"]
    (answer,) = send_study(folder, server, "covidnet")
    assert abs(report_values(sr)["probability"] - answer["covid19_probability"]) <= 1e-6
    leaked = sorted(s for s in identifiers(folder) if s in r.stdout + r.stderr)
    assert not leaked, leaked


def _worklist(server) -> dict:
    with urllib.request.urlopen(f"{server}/covidnet/worklist?format=json", timeout=30) as resp:
        return json.loads(resp.read())


def test_worklist_json_and_terminal_table(pacs, watched, server):
    doc = _worklist(server)
    rows = doc["rows"]
    assert doc["pacs"] == "ok" and len(rows) >= 4
    scored = [r["probability"] for r in rows if r["probability"] is not None]
    assert scored == sorted(scored, reverse=True) and rows[len(scored)]["status"] == "unanalysable"
    assert all(r["link"] for r in rows)
    orthanc_id = rows[0]["link"].rsplit("uuid=", 1)[1]
    assert pacs["orthanc"].get(f"/studies/{orthanc_id}")["ID"] == orthanc_id  # the link opens that study
    r = covidnet("worklist", "--params", pacs["params"])
    assert r.returncode == 0 and r.stdout.splitlines()[0].split()[:3] == ["#", "study", "P(COVID)"], r.stdout
    assert "contrast-enhanced" in r.stdout and "PACSWATCH" not in r.stdout


class Chromium:
    """Headless Chromium driven over the DevTools protocol (websocket-client)."""

    def __init__(self, tmp):
        import websocket

        self.port = free_port()
        self.proc = subprocess.Popen(
            [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp}",
             f"--remote-debugging-port={self.port}", "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, target = time.time() + 60, None
        while target is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    target = next((t for t in json.loads(r.read()) if t["type"] == "page"), None)
            except OSError:
                time.sleep(0.2)
        assert target, "Chromium's DevTools endpoint did not come up"
        self.ws, self.n = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60), 0

    def send(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                return msg.get("result", {})

    def eval(self, expression):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (bash scripts/orthanc.sh install)")
def test_worklist_page_renders_sorts_and_updates_in_chromium(pacs, watched, server, tmp_path):
    browser = Chromium(tmp_path / "chromium-profile")
    rows_js = "[...document.querySelectorAll('#worklist tbody tr')].map(tr => [tr.dataset.study, tr.cells[6].textContent])"
    try:
        browser.send("Page.navigate", url=f"{server}/covidnet/worklist")
        n = browser.wait_for("document.querySelectorAll('#worklist tbody tr').length")
        expected = [r["study"] for r in _worklist(server)["rows"]]
        assert n == len(expected) and [s for s, _ in browser.eval(rows_js)] == expected  # the reading order
        assert "NOT FOR DIAGNOSIS" in browser.eval("document.body.innerText")
        assert browser.eval("document.querySelector('#worklist tbody tr a').href").startswith(pacs["orthanc"].url)
        # sort by the abnormal lung fraction: highest first, then lowest first on a second click
        browser.eval("document.querySelector('th[data-key=abnormal_fraction]').click()")
        shown = [float(a.rstrip("%")) for _, a in browser.eval(rows_js) if a]
        assert shown == sorted(shown, reverse=True) and len(shown) >= 3
        browser.eval("document.querySelector('th[data-key=abnormal_fraction]').click()")
        shown = [float(a.rstrip("%")) for _, a in browser.eval(rows_js) if a]
        assert shown == sorted(shown)
        # a new study analysed meanwhile appears without reloading the page (refresh_s 1 in these params)
        folder = ct_study(pacs["tmp"] / "studies", "late", "PACSWATCH-LATE", seed=5)
        pacs["orthanc"].upload(folder)
        r = covidnet("pacs", "watch", "--once", "--params", pacs["params"], "--model-dir", pacs["model"])
        assert r.returncode == 0, r.stderr[-2000:]
        browser.wait_for(f"document.querySelectorAll('#worklist tbody tr').length === {n + 1}")
        assert browser.eval("document.querySelector('th.sorted-asc').dataset.key") == "abnormal_fraction"  # sort kept
    finally:
        browser.close()
