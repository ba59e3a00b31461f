"""The pages people open render with no network: `dvc plots show`, the validation page, the evaluation report.

Hospital networks are often air-gapped. Each page is opened in headless Chromium whose every
request goes to a closed port; the test checks what it shows (the DOM after its scripts ran and
a screenshot that is not blank). A page that loaded its scripts or styles from a CDN (DVC's
default plots page, Great Expectations' Data Docs) fails here.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support import REPO
from support.browser import CHROMIUM, inked, rendered_dom, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                                                              "(apt-get install chromium)")]
BIN = Path(sys.executable).parent
TEMPLATE = REPO / ".dvc" / "plots" / "offline.html"


def _plots_project(tmp: Path) -> Path:
    """A DVC project holding the repository's `plots` definitions and the files they draw.

    A fresh clone has the training curve (tracked in git) but not the ROC (an output of
    `dvc repro`), and DVC writes no page when a plot's file is missing; so the curve is
    copied and the ROC is written by the evaluate code itself from made-up scores.
    """
    import yaml

    from covidnet.evaluate.params import EvaluateParams
    from covidnet.evaluate.stage import evaluate_predictions

    project = tmp / "project"
    (project / "reports/train").mkdir(parents=True)
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    curve = REPO / "reports/train/curve.csv"
    (project / "reports/train/curve.csv").write_text(curve.read_text())
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 40)
    preds = pd.DataFrame({"patient_id": [f"p{i}" for i in range(40)], "label": label,
                          "score": np.clip(0.3 * label + rng.uniform(0, 0.7, 40), 0, 1)})
    evaluate_predictions(preds, EvaluateParams(bootstrap=50), project / "reports/evaluate/test", synthetic=True,
                         title="test")
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=project, check=True, capture_output=True)
    return project


def test_dvc_plots_page_renders_every_plot_offline(tmp_path):
    if not TEMPLATE.is_file():
        pytest.skip(f"{TEMPLATE} not built: scripts/setup-env.sh builds it when npm is installed")
    project = _plots_project(tmp_path)
    out = tmp_path / "plots"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(BIN / "dvc"), "plots", "show", "--html-template", str(TEMPLATE), "-o", str(out)],
                   cwd=project, env=env, check=True, capture_output=True, timeout=300)
    page = (out / "index.html").as_uri()
    dom = rendered_dom(page, tmp_path / "profile")
    assert "cdn.jsdelivr" not in (out / "index.html").read_text()
    assert dom.count('class="marks"') == 3, "loss and AUC per epoch and the ROC are drawn"
    assert "SYNTHETIC" in dom
    assert inked(screenshot(page, tmp_path / "profile2", tmp_path / "plots.png")) > 0.01


def test_validation_page_renders_offline(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for stage in ("synth", "validate"):
        subprocess.run([str(BIN / "covidnet"), stage, "--profile", "tiny", "--quiet"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=600)
    page = tmp_path / "reports" / "validation" / "index.html"
    dom = rendered_dom(page.as_uri(), tmp_path / "profile")
    assert "all expectations met" in dom and "Synthetic data" in dom
    assert dom.count("<tr>") > 30, "every expectation of the three suites is listed"
    assert inked(screenshot(page.as_uri(), tmp_path / "profile2", tmp_path / "validation.png")) > 0.01


def test_evaluation_report_renders_offline(tmp_path):
    from covidnet.evaluate.params import EvaluateParams
    from covidnet.evaluate.stage import evaluate_predictions

    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 60)
    preds = pd.DataFrame({"patient_id": [f"p{i}" for i in range(60)], "label": label,
                          "score": np.clip(0.3 * label + rng.uniform(0, 0.7, 60), 0, 1)})
    evaluate_predictions(preds, EvaluateParams(bootstrap=200), tmp_path / "test", synthetic=True, title="test")
    page = (tmp_path / "test" / "report.html").as_uri()
    dom = rendered_dom(page, tmp_path / "profile")
    assert "Synthetic data" in dom and dom.count("<img") >= 3 and "data:image/png;base64," in dom
    assert inked(screenshot(page, tmp_path / "profile2", tmp_path / "report.png")) > 0.02
