"""The stage commands as a data engineer runs them: an output flag confines every write; an empty cohort stops.

A tiny SYNTHETIC cohort in a scratch project folder (its own params.yaml, the `tiny` profile),
the real ``covidnet`` command in subprocesses.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import REPO

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def covidnet(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "covidnet"), *args, "--quiet"], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """synth .. preprocess and an untracked train of the tiny profile, at the params file's paths."""
    proj = tmp_path_factory.mktemp("project")
    text = (REPO / "params.yaml").read_text().replace("\nprofile: default", "\nprofile: tiny", 1)
    (proj / "params.yaml").write_text(text)
    for stage in ("synth", "validate", "exclude", "split", "preprocess"):
        ok(covidnet(proj, stage))
    ok(covidnet(proj, "train", "--no-track"))
    return proj


def test_split_given_out_writes_only_beside_it(project, tmp_path):
    """Was: `split --out Y` also rewrote the project's reports/flow/* and reports/metrics/cohort.json."""
    for tracked in ("reports/flow", "reports/metrics"):
        subprocess.run(["rm", "-rf", str(project / tracked)], check=True)
    before = files_under(project)
    out = tmp_path / "elsewhere" / "split.csv"
    line = ok(covidnet(project, "split", "--out", str(out))).stdout
    assert files_under(project) == before, "split wrote into the project's paths"
    assert files_under(out.parent) == {"split.csv", "flow/flow.json", "flow/flow.md", "metrics.json"}
    assert str(out) in line


def test_evaluate_given_out_writes_only_there(project, tmp_path):
    """Was: `evaluate --out DIR` also rewrote the project's models/calibrator.json."""
    calibrator = project / "models" / "calibrator.json"
    calibrator.unlink(missing_ok=True)
    before = files_under(project)
    out = tmp_path / "eval"
    ok(covidnet(project, "evaluate", "--out", str(out)))
    assert files_under(project) == before, "evaluate wrote into the project's paths"
    assert "calibrator.json" in files_under(out) and "test/metrics.json" in files_under(out)


def test_an_empty_dicom_folder_stops_validate(project, tmp_path):
    """Was: `validate` said "0 series, all expectations met" (rc 0) and exclude and split went on."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = covidnet(project, "validate", "--dicom", str(empty), "--index", str(tmp_path / "index"),
                    "--out", str(tmp_path / "validation"))
    assert proc.returncode == 2
    assert "0 usable studies" in proc.stderr and "validate.min_studies is 5" in proc.stderr
    assert str(empty) in proc.stderr


@pytest.mark.parametrize("stage, key, expected", [
    ("exclude", ("exclude", "min_patients"), "exclude.min_patients is 1000 per class"),
    ("split", ("split", "min_per_class"), "split.min_per_class is 1000"),
])
def test_a_nearly_empty_cohort_stops_the_first_stage_that_sees_it(project, tmp_path, stage, key, expected):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["profiles"]["tiny"][key[0]][key[1]] = 1000
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    flags = {"exclude": ["--manifest", str(project / "data/raw/manifest"), "--index", str(project / "data/interim/index"),
                         "--out", str(out)],
             "split": ["--cohort", str(project / "data/interim/cohort"), "--out", str(out / "split.csv")]}[stage]
    proc = covidnet(project, stage, "--params", str(tmp_path / "params.yaml"), *flags)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "patients" in proc.stderr
    assert not out.exists(), "a refused stage left outputs behind"
