"""The five data stages through the CLI and through a real DVC repository (tiny profile)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidnet.params import load_params
from covidnet.paths import Paths
from support import REPO

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
STAGES = ("synth", "validate", "exclude", "split", "preprocess", "train", "evaluate", "promote")


def run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _project(tmp_path: Path, profile: str = "tiny") -> Path:
    """A copy of the project's pipeline files in a fresh git + DVC repository."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "dvc.yaml", proj)
    text = (REPO / "params.yaml").read_text().replace("\nprofile: default", f"\nprofile: {profile}", 1)
    (proj / "params.yaml").write_text(text)
    shutil.copytree(REPO / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run(["git", "init", "-q"], proj)
    run(["dvc", "init", "-q"], proj)
    run(["dvc", "config", "core.analytics", "false"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-qm", "init"], proj)
    return proj


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    proj = _project(tmp_path_factory.mktemp("dvc"))
    first = run(["dvc", "repro"], proj)
    return proj, first


@pytest.mark.slow
def test_dvc_repro_runs_all_stages(repro):
    proj, first = repro
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    idx = pd.read_csv(proj / "data/preprocessed/index.csv")
    split = pd.read_csv(proj / "data/interim/split.csv")
    assert len(idx) == len(split) > 0
    tensor = np.load(proj / "data/preprocessed" / idx.path[0])
    assert tensor.shape == (1, 8, 24, 24) and tensor.dtype == np.float16  # tiny profile's D, C
    assert (proj / "reports/validation/index.html").is_file()
    assert "Synthetic cohort" in (proj / "reports/flow/flow.md").read_text()
    card = json.loads((proj / "models/covidnet/model.json").read_text())
    assert card["config"]["preprocess"]["crop"] == 24 and card["synthetic"] == "true"
    test = json.loads((proj / "reports/evaluate/test/metrics.json").read_text())
    assert test["synthetic"] is True and test["n"] == len(split[split.split == "test"])
    assert "synthetic" in (proj / "reports/evaluate/test/report.md").read_text().lower()
    assert (proj / "mlflow.db").is_file()


@pytest.mark.slow
def test_second_repro_does_nothing(repro):
    proj, _ = repro
    again = run(["dvc", "repro"], proj)
    assert "Running stage" not in again.stdout
    status = run(["dvc", "status", "--json"], proj)
    assert json.loads(status.stdout or "{}") == {}


def _lock_outs(proj: Path) -> dict[str, str]:
    import yaml

    stages = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for st in stages.values() for o in st.get("outs", [])}


# Which outputs record when and as which run they were made, so differ between two identical runs.
PATHS = Paths.from_params(load_params(REPO / "params.yaml"))


@pytest.mark.slow
def test_forced_train_gives_the_same_weights_and_figures(repro):
    """`dvc repro -f train` again (it reruns synth to train): the same weights.pt to the bit, and every
    output but the run records has the hash dvc.lock had, so evaluate does not even rerun."""
    import hashlib

    proj, _ = repro
    before = _lock_outs(proj)
    weights = hashlib.md5((proj / "models/covidnet/weights.pt").read_bytes()).hexdigest()
    forced = run(["dvc", "repro", "-f", "train"], proj)
    assert "Running stage 'train'" in forced.stdout and "Running stage 'synth'" in forced.stdout
    assert hashlib.md5((proj / "models/covidnet/weights.pt").read_bytes()).hexdigest() == weights
    after = _lock_outs(proj)
    assert set(after) == set(before) and {"models/covidnet", "reports/headline"} <= set(after)
    assert not [p for p in after if after[p] != before[p] and not PATHS.varies_every_run(p)]
    assert "Running stage 'evaluate'" not in run(["dvc", "repro"], proj).stdout


@pytest.mark.slow
def test_explanations_are_checked_against_the_planted_lesions(repro):
    proj, _ = repro
    split = pd.read_csv(proj / "data/interim/split.csv", dtype=str)
    lesions = proj / "data/raw/manifest/lesions"
    masks = sorted(lesions.glob("*.npy"))
    assert masks and np.load(masks[0]).shape == (8, 24, 24)  # the tensor grid of the tiny profile
    m = json.loads((proj / "reports/evaluate/test/metrics.json").read_text())
    sal = m["saliency"]
    assert sal["method"] == "gradient_x_input" and sal["n_maps"] == m["n"]
    with np.load(proj / "reports/evaluate/test/saliency.npz") as maps:
        assert len(maps.files) == m["n"] and maps[maps.files[0]].shape == (8, 24, 24)
    assert "phantom_ceiling" in m and 0.5 <= m["phantom_ceiling"]["auc"]["value"] <= 1.0
    assert len(split) > 0


@pytest.mark.slow
def test_metrics_show_the_headline_and_the_cohort_counts_are_beside_it(repro):
    proj, _ = repro
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], proj).stdout)
    data = next(iter(shown.values()))["data"]
    # a short file per test set; the detail lives in reports/evaluate/
    assert set(data) == {"reports/headline/test.json", "reports/headline/external.json"}
    test = data["reports/headline/test.json"]["data"]
    assert set(test) <= {"auc", "auc_lo", "sens", "spec", "n"} and {"auc", "n"} <= set(test)
    assert test["n"] == len(pd.read_csv(proj / "reports/evaluate/test/predictions.csv"))
    table = run(["dvc", "metrics", "show"], proj).stdout
    assert max(len(line) for line in table.splitlines()) <= 80  # a row per set, in any terminal
    metrics = json.loads((proj / "reports/metrics/cohort.json").read_text())
    assert metrics["synthetic"] is True
    rec, inc = metrics["recruited"], metrics["included"]
    assert rec["covid"]["patients"] + rec["non_covid"]["patients"] == 16  # tiny: synth.n_patients
    assert set(metrics["excluded"]) >= {"pcr_gap", "motion_artifact", "contrast_only", "no_usable_series"}
    assert sum(c["covid"]["patients"] + c["non_covid"]["patients"] for c in metrics["split"].values()) == \
        inc["covid"]["patients"] + inc["non_covid"]["patients"]


@pytest.mark.slow
def test_planted_cases_are_caught(repro):
    proj, _ = repro
    planted = pd.read_csv(proj / "data/raw/manifest/planted.csv")
    excl = pd.read_csv(proj / "data/interim/cohort/exclusions.csv", keep_default_na=False)
    expected_rule = {"pcr_gap": "pcr_gap", "motion": "motion_artifact", "contrast_only": "contrast_only",
                     "broken_series": "no_usable_series"}
    for row in planted.itertuples():
        rules = set(excl.loc[excl.patient_id == row.patient_id, "rule"])
        assert expected_rule[row.case] in rules, (row, rules)


def test_cli_stages_and_bad_manifest(tmp_path):
    """The CLI alone (no DVC): a duplicate patient stops validate with a message naming it."""
    proj = tmp_path
    shutil.copy(REPO / "params.yaml", proj)
    for stage in ("synth", "validate"):
        run(["covidnet", stage, "--profile", "tiny", "-q"], proj)
    patients = proj / "data/raw/manifest/patients.csv"
    lines = patients.read_text().splitlines()
    patients.write_text("\n".join(lines + [lines[1]]) + "\n")  # the first patient again
    before = (proj / "reports/validation/results.json").read_text()
    bad = run(["covidnet", "validate", "--profile", "tiny", "-q"], proj, check=False)
    assert bad.returncode == 1
    dup_id = lines[1].split(",")[0]
    assert "patients.csv" in bad.stderr and dup_id in bad.stderr and f"lines 2, {len(lines) + 1}" in bad.stderr
    assert json.loads((proj / "reports/validation/results.json").read_text())["success"] is False
    assert before != (proj / "reports/validation/results.json").read_text()


def test_cli_errors_name_the_problem(tmp_path):
    missing = run(["covidnet", "exclude", "--params", str(tmp_path / "nope.yaml")], tmp_path, check=False)
    assert missing.returncode == 2 and "nope.yaml: params file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    shutil.copy(REPO / "params.yaml", tmp_path)
    no_manifest = run(["covidnet", "validate", "--manifest", str(tmp_path / "none")], tmp_path, check=False)
    assert no_manifest.returncode == 2 and "patients.csv: manifest file not found" in no_manifest.stderr


def test_help_explains_each_stage():
    out = run(["covidnet", "--help"], REPO).stdout
    for stage in STAGES:
        assert stage in out
    assert "clip HU" in run(["covidnet", "preprocess", "--help"], REPO).stdout


@pytest.mark.slow
def test_s3_remote_push_and_pull(repro, s3_server):
    """The README's S3 remote recipe against moto's S3 server on loopback (a real HTTP S3 endpoint)."""
    proj, _ = repro
    ENV.update(s3_server.env)
    try:
        run(["dvc", "remote", "add", "-f", "storage", f"s3://{s3_server.bucket}/cache"], proj)
        run(["dvc", "remote", "modify", "storage", "endpointurl", s3_server.endpoint], proj)
        run(["dvc", "push", "-r", "storage"], proj)
        manifest = proj / "data/raw/manifest/patients.csv"
        original = manifest.read_bytes()
        shutil.rmtree(proj / ".dvc/cache")
        shutil.rmtree(proj / "data/raw/manifest")
        run(["dvc", "pull", "-r", "storage", "synth"], proj)
        assert manifest.read_bytes() == original
    finally:
        for key in s3_server.env:
            ENV.pop(key, None)


def test_model_summary_cli():
    out = run(["covidnet", "model", "summary", "--builders", "paper", "cpu"], REPO).stdout
    paper = next(line for line in out.splitlines() if line.startswith("paper"))
    assert "1x64x384x384" in paper and abs(float(paper.split()[3]) - 463) < 10  # ~0.46 TFLOP (DESIGN.md)
    configured = next(line for line in out.splitlines() if line.startswith("params.yaml (default)"))
    import yaml

    shape = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["input_shape"]
    assert "x".join(map(str, shape)) in configured  # the model params.yaml trains, with its overrides


def test_evaluate_predictions_file_cli(tmp_path):
    """`covidnet evaluate --predictions`: the paper's Table 1 matrix (TP 142, FN 12, TN 215, FP 3)."""
    rows = ([(1, 0.9)] * 142 + [(1, 0.1)] * 12 + [(0, 0.1)] * 215 + [(0, 0.9)] * 3)
    csv = tmp_path / "preds.csv"
    csv.write_text("patient_id,label,score\n" + "".join(f"p{i},{y},{s}\n" for i, (y, s) in enumerate(rows)))
    shutil.copy(REPO / "params.yaml", tmp_path)
    out = run(["covidnet", "evaluate", "--predictions", str(csv), "--out", str(tmp_path / "ev"), "-q"], tmp_path)
    assert "372 patients" in out.stdout
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert round(m["covid"]["sensitivity"]["value"] * 100, 1) == 92.2
    assert round(m["accuracy"]["value"] * 100, 1) == 96.0
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,label,score\np1,1,0.5\np2,2,0.5\n")
    err = run(["covidnet", "evaluate", "--predictions", str(bad), "--out", str(tmp_path / "ev2")], tmp_path, check=False)
    assert err.returncode == 2 and "label" in err.stderr and "line 3" in err.stderr
