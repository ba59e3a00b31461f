"""The prediction log and the metrics inside the real KServe server, over real HTTP on loopback.

The slow tests: a tiny model is trained (as tests/test_train.py does, with preprocess's qc.csv so its card
names a reference profile) and served by `covidnet serve` in a subprocess; studies are real
DICOM files (tests/test_serving.py's helpers). The log is a real SQLite file, read back with
:class:`covidnet.monitor.predlog.PredictionLog` after and across server restarts. The quick tests drive
:class:`covidnet.monitor.serving.ServingMonitor` directly on a real log and registry.
"""

import base64
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from covidnet.monitor.predlog import PredictionLog, hash_id
from covidnet.monitor.serving import ServingMonitor, request_hospital
from covidnet.serve.client import v2_zip_request, zip_folder  # noqa: E402
from support import REPO
from support.server import NAME, post_json, start_server, stop_server, write_study
from support.train import PRE, TINY, qc_csv, tiny_cohort, train_params, train_paths

KEY = "monitor-test-key-0123456789abcdef"


def _start(tmp: Path, params: Path, name: str):
    """`covidnet serve` of the model folder; (process, base URL or None if it never got ready, log file)."""
    log = tmp / f"{name}.log"
    proc, base = start_server(["--model-dir", str(tmp / "model"), "--params", str(params)], tmp,
                              {**os.environ, "COVIDNET_HASH_KEY": KEY}, log)
    return proc, base, log


def _metrics(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from covidnet.train.loop import train_model

    tmp = tmp_path_factory.mktemp("monitor-serve")
    index = tiny_cohort(tmp / "pre", n_train=4, n_val=2)
    qc_csv(index, tmp / "pre" / "qc.csv")
    train_model(index, train_paths(tmp), TINY, train_params(epochs=1, batch_size=2),
                {**PRE, "dtype": "float16", "body_hu": -500.0, "lung_hu": [-950.0, -400.0], "workers": 1},
                progress=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["paths"]["predlog"] = str(tmp / "log" / "predictions.db")
    params["paths"]["calibrator"] = str(tmp / "calibrator.json")
    params["monitor"]["log"]["allow_insecure_key"] = False  # the key comes from the environment
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    folders = [write_study(tmp / "dicom", uid=f"c{i}", seed=i, noise=14.0, tissue=40.0, patient_id=f"PAT-{i}",
                      institution="hospital_z") for i in range(8)]
    return {"tmp": tmp, "params": tmp / "params.yaml", "db": tmp / "log" / "predictions.db", "studies": folders}


def _rows(project):
    plog = PredictionLog(f"sqlite:///{project['db']}", KEY.encode(), 30.0)
    try:
        return plog.predictions()
    finally:
        plog.close()


@pytest.mark.slow
def test_concurrent_requests_restart_and_metrics(project):
    proc, base, log = _start(project["tmp"], project["params"], "first")
    assert base, log.read_text()[-3000:]
    try:
        statuses = {}

        def post(i: int) -> None:
            body = v2_zip_request([zip_folder(project["studies"][i])])
            if i % 2:
                body["parameters"] = {"hospital": "clinic_x"}  # the request parameter wins over InstitutionName
            statuses[i] = post_json(f"{base}/v2/models/{NAME}/infer", body)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(code == 200 for code, _ in statuses.values()), statuses
        rows = _rows(project)
        assert len(rows) == 8 and rows["request_id"].nunique() == 8
        assert set(rows["patient_hash"]) == {hash_id(KEY.encode(), "patient", f"PAT-{i}") for i in range(8)}
        assert sorted(rows["hospital"]) == ["clinic_x"] * 4 + ["hospital_z"] * 4
        assert not rows["noise_hu"].isna().any() and set(rows["decision"]) <= {"covid19", "other_pneumonia"}
        logged = json.loads({o["name"]: o for o in statuses[0][1]["outputs"]}["result"]["data"][0])
        row = rows[rows["study_hash"] == hash_id(KEY.encode(), "study", logged["study_uid"])].iloc[0]
        assert row["score"] == pytest.approx(logged["score"]) and row["model_version"] == logged["model"]["version"]
        assert "PAT-" not in rows.to_string()  # no identifier in the clear

        families = _metrics(base)
        for name in ("covidnet_predictions", "covidnet_score", "covidnet_qc_checked", "covidnet_qc_out_of_range",
                     "covidnet_drift_psi", "covidnet_drift_ks", "covidnet_drift_ks_pvalue", "covidnet_drift_window",
                     "covidnet_drift_alarm"):
            assert name in families, name
        assert sum(s.value for s in families["covidnet_predictions"].samples if s.name.endswith("_total")) == 8
        assert [s.value for s in families["covidnet_drift_window"].samples] == [8]
    finally:
        stop_server(proc)

    # A restart: the rows are still there, the drift window is seeded from them, new rows add up.
    proc, base, log = _start(project["tmp"], project["params"], "second")
    assert base, log.read_text()[-3000:]
    try:
        assert [s.value for s in _metrics(base)["covidnet_drift_window"].samples] == [8]
        study = base64.b64encode(zip_folder(project["studies"][0])).decode()
        code, _ = post_json(f"{base}/v1/models/{NAME}:predict", {"instances": [{"b64": study}]})
        assert code == 200
        assert len(_rows(project)) == 9
        # PCR feedback over HTTP beside the model: ids hashed with the server's key, bad lines named
        csv = ("patient_id,pcr_result,pcr_date\nPAT-1,positive,2024-05-01\nPAT-2,negative,2024-05-02\n"
               "PAT-3,maybe,2024-05-02\nNOBODY,positive,2024-05-02\n")
        code, body = post_json(f"{base}/covidnet/feedback", csv.encode(), "text/csv")
        assert code == 200 and body["rows"] == 4 and body["ingested"] == 2, body
        assert body["rejected"] == {"unparseable pcr_result": [4], "unknown id (no logged prediction)": [5]}
        assert post_json(f"{base}/covidnet/feedback", b"x,y\n1,2\n", "text/csv")[0] == 400
        assert post_json(f"{base}/covidnet/feedback", csv.encode(), "application/json")[0] == 415
        plog = PredictionLog(f"sqlite:///{project['db']}", KEY.encode(), 30.0)
        try:
            fb = plog.feedback()
        finally:
            plog.close()
        assert sorted(fb["patient_hash"]) == sorted(hash_id(KEY.encode(), "patient", f"PAT-{i}") for i in (1, 2))
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_unreachable_log_refuses_readiness(project, tmp_path):
    """The log's database cannot be opened: the server says so and never becomes ready."""
    params = yaml.safe_load(project["params"].read_text())
    (tmp_path / "a_folder").mkdir()
    params["monitor"]["log"]["url"] = f"sqlite:///{tmp_path / 'a_folder'}"  # a folder is no database
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "model").symlink_to(project["tmp"] / "model")
    proc, base, log = _start(tmp_path, tmp_path / "params.yaml", "refused")
    try:
        assert base is None and proc.wait(timeout=60) != 0
        text = log.read_text()
        assert "cannot be reached" in text and "refusing readiness" in text, text[-3000:]
    finally:
        if proc.poll() is None:
            stop_server(proc)


def test_request_hospital_from_v1_and_v2_parameters():
    from kserve import InferInput, InferRequest

    v2 = InferRequest(model_name=NAME, infer_inputs=[InferInput("x", [1], "BYTES", ["a"])],
                      parameters={"hospital": " clinic_y "})
    assert request_hospital(v2) == "clinic_y"
    assert request_hospital({"instances": [], "parameters": {"hospital": "clinic_v1"}}) == "clinic_v1"
    assert request_hospital({"instances": []}) is None and request_hospital(b"zip bytes") is None
    assert request_hospital({"parameters": {"hospital": "  "}}) is None


def test_serving_monitor_logs_then_counts(tmp_path, monkeypatch):
    """open() seeds the drift window from the log; record() commits the rows, then counts them;
    a log that cannot be opened raises (the server then never becomes ready)."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from covidnet.monitor.predlog import PredLogError
    from covidnet.params import load_params
    from support.monitor import model_folder

    params = load_params(REPO / "params.yaml")
    params["paths"]["predlog"] = str(tmp_path / "log.db")
    monkeypatch.setenv(params["monitor"]["log"]["key_env"], KEY)
    monkeypatch.delenv(params["monitor"]["log"]["url_env"], raising=False)
    bundle = SimpleNamespace(model_dir=model_folder(tmp_path / "model"), model={"name": NAME, "version": "5"})
    answer = {"score": 0.9, "covid19_probability": 0.9, "threshold": 0.5, "decision": "covid19",
              "model": {"name": NAME, "version": "5", "mlflow_run_id": "r1"}, "qc": {"noise_hu": 15.0},
              "qc_check": {"all_in_range": True, "out_of_range": []}}
    first = ServingMonitor.open(params, bundle, CollectorRegistry())
    rows = first.record([answer, answer], [{"patient_id": "P1", "institution": "h1"}, {"patient_id": "P2"}],
                        "req-1", hospital=None)
    assert [r.hospital for r in rows] == ["h1", None] and rows[0].patient_hash == hash_id(KEY.encode(), "patient", "P1")
    assert first.log.count() == 2 and first.metrics.verdict().n == 2
    first.close()
    again = ServingMonitor.open(params, bundle, CollectorRegistry())  # a restart
    assert again.metrics.verdict().n == 2 and again.log.predictions()["mlflow_run_id"].tolist() == ["r1", "r1"]
    again.close()
    params["monitor"]["log"]["url"] = f"sqlite:///{tmp_path}"  # a folder: cannot be opened
    with pytest.raises(PredLogError, match="cannot be reached"):
        ServingMonitor.open(params, bundle, CollectorRegistry())
