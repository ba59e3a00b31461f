"""The drift alarm on SYNTHETIC cohorts written as DICOM (the issue's drift test).

A reference cohort, an independent undrifted one and a drifted one (every hospital's scanner
noise + 20 HU, from synth's hospital parameters) go through series selection and
``preprocess_series`` (what training and serving run) to per-scan QC values; windows of them
are logged in a real SQLite prediction log and judged by ``covidnet monitor drift`` against a
model folder whose reference profile is the reference cohort. The score is left out (no
network is trained here; score drift is covered in tests/test_drift.py and test_monitor.py).
The false-alarm rate over repeated windows is measured by benchmarks/drift_alarm.py (figures
in benchmarks/README.md); here a small version of it must stay under 5%.
"""

import dataclasses
import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from covidnet.cli import main as cli
from covidnet.model.card import ModelCard
from covidnet.monitor.params import monitor_params
from covidnet.monitor.predlog import Prediction, PredictionLog
from covidnet.params import load_params
from covidnet.preprocess.qc import QC_VALUES
from support import REPO

KEY = b"0123456789abcdef0123456789abcdef"
pytestmark = pytest.mark.slow


def _bench():
    spec = importlib.util.spec_from_file_location("drift_alarm", REPO / "benchmarks" / "drift_alarm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["drift_alarm"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    bench = _bench()
    tmp = tmp_path_factory.mktemp("cohorts")
    params = load_params(REPO / "params.yaml", profile="tiny")
    return {"bench": bench, "params": params,
            "reference": bench.cohort_qc(params, tmp / "reference", 40, seed=7),
            "undrifted": bench.cohort_qc(params, tmp / "undrifted", 40, seed=8),
            "drifted": bench.cohort_qc(params, tmp / "drifted", 40, seed=9, drift="noise", noise_add=20.0)}


def _model(root: Path, reference_qc: pd.DataFrame) -> Path:
    """A model folder with the reference cohort as its training QC reference (no score reference)."""
    root.mkdir(parents=True)
    (root / "weights.pt").write_bytes(b"synthetic drift test")
    (root / "reference").mkdir()
    reference_qc.to_csv(root / "reference" / "qc.csv", index=False)
    (root / "model.json").write_text(json.dumps({"config": {}, "qc_reference": "reference/qc.csv"}))
    return root


def _log_window(plog: PredictionLog, qc: pd.DataFrame, version: str, start: dt.datetime) -> None:
    plog.append([Prediction(request_id=f"{start:%d}-{i}", time=start + dt.timedelta(minutes=i), model_name="covidnet",
                            model_version=version, score=0.5, probability=0.5, threshold=0.5, decision="covid19",
                            hospital=str(r["hospital"]), qc={c: float(r[c]) for c in QC_VALUES})
                 for i, (_, r) in enumerate(qc.iterrows())])


def test_drifted_cohort_raises_the_alarm_undrifted_does_not(cohorts, tmp_path):
    model = _model(tmp_path / "model", cohorts["reference"])
    version = ModelCard.folder_version(model)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update({"predlog": str(tmp_path / "log.db"), "model": str(model), "monitor": str(tmp_path / "out")})
    raw["monitor"]["drift"]["score"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    plog = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", KEY, 30.0)
    day1, day2 = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc), dt.datetime(2024, 6, 2, tzinfo=dt.timezone.utc)
    _log_window(plog, cohorts["undrifted"], version, day1)
    _log_window(plog, cohorts["drifted"], version, day2)
    plog.close()

    def drift(since: str, until: str) -> tuple[int, dict]:
        code = cli.main(["monitor", "drift", "--params", str(tmp_path / "params.yaml"), "--no-mlflow",
                         "--since", since, "--until", until])
        return code, json.loads((tmp_path / "out" / "drift.json").read_text())

    code, report = drift("2024-06-01", "2024-06-02")
    assert code == 0 and report["status"] == "ok" and report["n"] == len(cohorts["undrifted"]), report
    code, report = drift("2024-06-02", "2024-06-03")
    assert code == 3 and report["status"] == "alarm", report
    assert "noise_hu" in report["models"][0]["drifted"]


def test_false_alarm_rate_over_repeated_windows(cohorts):
    """200 random windows of monitor.drift.min_window studies from each pool (the benchmark's method)."""
    bench = cohorts["bench"]
    p = dataclasses.replace(monitor_params(cohorts["params"]).drift, score=False)
    calm = bench.window_rates(cohorts["reference"], cohorts["undrifted"], p, p.min_window, 200, seed=1)
    noisy = bench.window_rates(cohorts["reference"], cohorts["drifted"], p, p.min_window, 200, seed=1)
    assert calm["rate"] <= 0.05, calm
    assert noisy["rate"] >= 0.95 and noisy["series_drifting"]["noise_hu"] >= 190, noisy
