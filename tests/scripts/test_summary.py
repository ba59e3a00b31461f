"""scripts/summary.py's reproduction line against a committed dvc.lock, in a real git repository."""

import importlib.util
import subprocess

import yaml

from covidnet.params import load_params
from covidnet.paths import Paths
from support import REPO


def _summary():
    spec = importlib.util.spec_from_file_location("summary", REPO / "scripts" / "summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock(outs: dict[str, str]) -> str:
    stage = {"outs": [{"path": p, "md5": m} for p, m in outs.items()]}
    return yaml.safe_dump({"schema": "2.0", "stages": {"s": stage}})


def test_only_results_count_run_records_and_report_provenance_do_not(tmp_path, monkeypatch):
    paths = Paths.from_params(load_params(REPO / "params.yaml"))
    committed = {"models/covidnet": "a", "reports/evaluate/metrics.json": "b", "reports/evaluate/test": "c",
                 "reports/train/run.json": "d", "reports/promote/decision.json": "e"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text(_lock(committed))
    subprocess.run(["git", "add", "dvc.lock"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], cwd=tmp_path,
                   check=True)
    monkeypatch.chdir(tmp_path)
    summary = _summary()

    records_only = {**committed, "reports/evaluate/test": "x", "reports/train/run.json": "x",
                    "reports/promote/decision.json": "x"}
    (tmp_path / "dvc.lock").write_text(_lock(records_only))
    assert summary._reproduced(paths).startswith("every output has the committed dvc.lock's hash")

    (tmp_path / "dvc.lock").write_text(_lock({**records_only, "models/covidnet": "other"}))
    assert summary._reproduced(paths) == "1 output(s) differ from the committed dvc.lock: models/covidnet"
    (tmp_path / "dvc.lock").write_text(_lock({**committed, "reports/evaluate/metrics.json": "other"}))
    assert "reports/evaluate/metrics.json" in summary._reproduced(paths)
