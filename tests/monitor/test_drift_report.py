"""`covidnet monitor drift` (src/covidnet/monitor/report.py): a real SQLite prediction log, a model folder as
`train` writes it (weights, card naming its reference profile), reports on disk, exit statuses."""

import datetime as dt
import json

import pandas as pd
import pytest
import yaml

from covidnet.cli import main as cli
from covidnet.model.card import ModelCard
from covidnet.model.reference import ReferenceProfileError
from covidnet.monitor.params import monitor_params
from covidnet.monitor.predlog import PredictionLog
from covidnet.monitor.report import ALARM_EXIT, drift_report, find_reference
from covidnet.monitor.window import parse_time, time_window
from covidnet.params import load_params
from support import REPO
from support.monitor import KEY, model_folder, rows

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)








@pytest.fixture()
def project(tmp_path):
    """A params file pointing the log, the model and the reports into tmp_path; the model folder; the log."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["paths"].update({"predlog": str(tmp_path / "predictions.db"), "model": str(tmp_path / "model"),
                            "monitor": str(tmp_path / "reports")})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    model = model_folder(tmp_path / "model")
    plog = PredictionLog(f"sqlite:///{tmp_path / 'predictions.db'}", KEY, 30.0)
    yield {"params": tmp_path / "params.yaml", "model": model, "version": ModelCard.folder_version(model), "log": plog,
           "out": tmp_path / "reports"}
    plog.close()


def _drift(project, *extra) -> int:
    return cli.main(["monitor", "drift", "--params", str(project["params"]), "--no-mlflow", *extra])


def test_parse_time_and_window():
    assert parse_time("2024-05-01T08:00:00Z") == dt.datetime(2024, 5, 1, 8, tzinfo=dt.timezone.utc)
    assert parse_time("2024-05-01T10:00:00+02:00") == dt.datetime(2024, 5, 1, 8, tzinfo=dt.timezone.utc)
    assert parse_time("2024-05-01") == dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)  # naive: UTC
    with pytest.raises(ValueError, match=r"--since: 'yesterday' is not an ISO 8601"):
        time_window("yesterday", None, 24)
    start, end = time_window(None, "2024-05-02T00:00:00Z", 6)
    assert end - start == dt.timedelta(hours=6)
    with pytest.raises(ValueError, match="must be before"):
        time_window("2024-05-02", "2024-05-01", 24)


def test_drift_ok_then_alarm_with_reports_and_exit_status(project, capsys):
    v = project["version"]
    project["log"].append(rows(v, 60, T0, seed=1))
    assert _drift(project, "--since", "2024-05-01", "--until", "2024-05-02") == 0
    report = json.loads((project["out"] / "drift.json").read_text())
    assert report["status"] == "ok" and report["n"] == 60 and report["synthetic"] is True
    (m,) = report["models"]
    assert m["model_version"] == v and m["n_reference_scans"] == 300 and m["drifted"] == []
    assert set(m["series"]) == {"hu_p05", "hu_p50", "hu_p95", "lung_fraction", "noise_hu", "slice_spacing_mm", "score"}
    assert m["score_distribution"]["reference"]["n"] == 300
    assert "Status: OK" in (project["out"] / "drift.html").read_text()
    assert "SYNTHETIC" in capsys.readouterr().out

    # The next day a scanner with much more noise: noise_hu drifts, the alarm is raised (exit 3).
    day2 = T0 + dt.timedelta(days=1)
    project["log"].append(rows(v, 60, day2, seed=2, noise=35.0, hospital="h2"))
    assert _drift(project, "--since", "2024-05-02", "--until", "2024-05-03") == ALARM_EXIT
    report = json.loads((project["out"] / "drift.json").read_text())
    (m,) = report["models"]
    assert report["status"] == "alarm" and m["drifted"] == ["noise_hu"]
    noise = m["series"]["noise_hu"]
    assert noise["psi"] > 0.25 and noise["p_value"] < noise["alpha"] and noise["current_median"] > 30
    assert m["hospitals"] == {"h2": {"n": 60, "status": "alarm", "drifted": ["noise_hu"]}}
    # Both days together: still an alarm, and the per-hospital breakdown shows which site drives it.
    assert _drift(project, "--since", "2024-05-01", "--until", "2024-05-03") == ALARM_EXIT
    hospitals = json.loads((project["out"] / "drift.json").read_text())["models"][0]["hospitals"]
    assert hospitals["h1"]["status"] == "ok" and hospitals["h2"]["status"] == "alarm"


def test_small_or_empty_windows_do_not_alarm(project):
    project["log"].append(rows(project["version"], 10, T0, seed=3, noise=60.0))
    assert _drift(project, "--since", "2024-05-01", "--until", "2024-05-02") == 0
    report = json.loads((project["out"] / "drift.json").read_text())
    assert report["status"] == "insufficient" and report["models"][0]["drifted"] == ["noise_hu"]
    assert _drift(project, "--since", "2023-01-01", "--until", "2023-01-02") == 0
    assert json.loads((project["out"] / "drift.json").read_text())["status"] == "no_data"


def test_unknown_version_is_an_error_naming_it(project, capsys):
    project["log"].append(rows("sha256:000000000000", 40, T0, seed=4))
    assert _drift(project, "--since", "2024-05-01", "--until", "2024-05-02") == 2
    err = capsys.readouterr().err
    assert "no reference profile for model version 'sha256:000000000000'" in err and "--model DIR" in err
    assert json.loads((project["out"] / "drift.json").read_text())["status"] == "error"


def test_each_version_against_its_own_reference(tmp_path):
    """Two model versions in one window: each judged against its own reference profile."""
    a, b = model_folder(tmp_path / "a", seed=1), model_folder(tmp_path / "b", seed=2)
    pa, pb = ModelCard.folder_version(a), ModelCard.folder_version(b)
    frame = pd.DataFrame([r.row() for r in rows(pa, 40, T0, 5) + rows(pb, 40, T0, 6, noise=40.0)])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    params = monitor_params(load_params(REPO / "params.yaml")).drift
    report = drift_report(frame, params, T0, T0 + dt.timedelta(days=1), [a, b])
    by_version = {m["model_version"]: m for m in report["models"]}
    assert by_version[pa]["status"] == "ok" and by_version[pb]["status"] == "alarm"
    assert by_version[pa]["reference"] == str(a) and report["alarm"] is True


@pytest.mark.slow
def test_reference_from_the_mlflow_training_run(tmp_path):
    """A version with no local folder: its reference comes from the training run's covidnet/ artifacts
    in a real SQLite MLflow store (the run `train` logs the model folder to)."""
    import mlflow

    from covidnet.tracking import MlflowParams, configure

    tracking = MlflowParams(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t",
                            artifact_root=str(tmp_path / "mlruns"), registered_model="covidnet")
    folder = model_folder(tmp_path / "model", seed=3)
    experiment = configure(tracking)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(folder), artifact_path="covidnet")
    ref = find_reference("3", run.info.run_id, [], tracking)
    assert len(ref.qc) == 300 and len(ref.scores) == 300 and run.info.run_id in ref.source
    with pytest.raises(ReferenceProfileError, match="cannot download"):
        find_reference("3", "0" * 32, [], tracking)
    with pytest.raises(ReferenceProfileError, match="no MLflow run logged"):
        find_reference("3", None, [tmp_path / "nowhere"], tracking)
