"""The evaluate stage: the paper's Table 1 numbers, bad input, undefined figures, outputs, MLflow."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from covidnet.evaluate.params import EvaluateParams
from covidnet.evaluate.predictions import PredictionsError, read_predictions
from covidnet.evaluate.stage import OUTPUT_FILES, evaluate_predictions, fit_calibrator, log_to_mlflow
from covidnet.params import ParamsError, load_params, section
from support import REPO

FIG_KEYS = {"sensitivity", "specificity", "ppv", "npv", "f1"}
FAST = EvaluateParams(bootstrap=500)


def _paper_predictions() -> pd.DataFrame:
    """The paper's Table 1 test set: 372 patients, 154 COVID-19; TP 142, FN 12, TN 215, FP 3."""
    rng = np.random.default_rng(0)
    cells = [(1, 142, (0.5, 1.0)), (1, 12, (0.0, 0.5)), (0, 215, (0.0, 0.5)), (0, 3, (0.5, 1.0))]
    label = np.concatenate([np.full(k, y) for y, k, _ in cells])
    score = np.concatenate([rng.uniform(lo, hi - 1e-6, k) for _, k, (lo, hi) in cells])
    return pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(len(label))], "label": label, "score": score})


def _small(n=60, seed=1, **extra) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    s = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1).round(2)
    return pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "label": y, "score": s, **extra})


def test_paper_table_1(tmp_path):
    """Every point estimate to the paper's rounding; accuracy CI within 0.5 points of 93.8-97.8."""
    params = section(load_params(REPO / "params.yaml"), "evaluate", EvaluateParams)
    assert params.bootstrap == 10000 and params.threshold == 0.5
    m = evaluate_predictions(_paper_predictions(), params, tmp_path, synthetic=True)
    assert m["confusion"] == {"tp": 142, "fp": 3, "tn": 215, "fn": 12}
    assert (m["n"], m["n_positive"]) == (372, 154)
    pct = lambda fig: round(100 * fig["value"], 1)  # noqa: E731
    cov, non = m["covid"], m["non_covid"]
    assert pct(cov["sensitivity"]) == 92.2
    assert pct(cov["specificity"]) == 98.6
    assert pct(m["accuracy"]) == 96.0
    assert pct(cov["ppv"]) == 97.9
    assert pct(cov["npv"]) == 94.7
    assert pct(cov["f1"]) == 95.0
    assert pct(non["f1"]) == 96.6
    # the other class as positive swaps the roles
    assert non["sensitivity"]["value"] == cov["specificity"]["value"] and non["ppv"]["value"] == cov["npv"]["value"]
    lo, hi = m["accuracy"]["ci"]
    assert abs(100 * lo - 93.8) <= 0.5 and abs(100 * hi - 97.8) <= 0.5
    for fig in [m["accuracy"], m["auc"], *cov.values(), *non.values()]:
        assert 0 <= fig["ci"][0] <= fig["value"] <= fig["ci"][1] <= 1


def test_contract_and_outputs(tmp_path):
    preds = _small(80, hospital=np.repeat(["hospital_a", "hospital_b"], 40))
    m = evaluate_predictions(preds, FAST, tmp_path / "out", synthetic=True, title="external",
                             features=np.random.default_rng(0).normal(size=(80, 16)))
    out = tmp_path / "out"
    for name in OUTPUT_FILES:
        assert (out / name).is_file() == (name != "saliency.png"), name  # no maps given: no saliency figure
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert {"n", "n_positive", "threshold", "accuracy", "auc", "covid", "non_covid", "confusion", "per_hospital",
            "kappa", "calibration", "synthetic"} <= set(on_disk)
    assert isinstance(on_disk["n"], int) and isinstance(on_disk["threshold"], float)
    assert set(on_disk["covid"]) == set(on_disk["non_covid"]) == FIG_KEYS
    assert set(on_disk["confusion"]) == {"tp", "fp", "tn", "fn"}
    assert set(on_disk["calibration"]) >= {"ece", "brier"}
    assert on_disk["synthetic"] is True
    assert on_disk["auc"]["value"] == pytest.approx(roc_auc_score(preds["label"], preds["score"]))
    roc = pd.read_csv(out / "roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"] and roc["fpr"].is_monotonic_increasing
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(m["auc"]["value"])
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "Synthetic data" in md and "<strong>Synthetic data</strong>" in page
    h1 = md.splitlines()[0].removeprefix("# ")
    assert f"<title>{h1}</title>" in page  # the page is titled by its heading
    assert "Table 1 form" in md and "![tsne.png](tsne.png)" in md and "data:image/png;base64," in page
    # a later run without features leaves no stale t-SNE behind, and no temporary folders
    evaluate_predictions(preds, FAST, out, synthetic=False, title="external")
    assert not (out / "tsne.png").exists() and "not synthetic" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(set(OUTPUT_FILES) - {"tsne.png", "saliency.png"})


def test_the_report_reads_the_lesion_check_against_its_anchors(tmp_path):
    from matplotlib.figure import Figure

    fig = lambda value, lo, hi: {"value": value, "ci": [lo, hi]}  # noqa: E731
    summary = {"method": "gradient_x_input", "layer": None, "baseline_hu": -850.0, "rim": 1, "n_maps": 80,
               "n_true_positives": 30, "n_checked": 28, "share": fig(0.30, 0.25, 0.35),
               "chance": fig(0.08, 0.07, 0.09), "enrichment": fig(3.75, 3.1, 4.4),
               "anchors": {"density": {"n_checked": 28, "enrichment": fig(4.3, 3.9, 4.7)},
                           "gradient": {"n_checked": 28, "enrichment": fig(1.12, 1.0, 1.2)}}}
    png = tmp_path / "maps.png"
    Figure(figsize=(1, 1)).savefig(png)
    m = evaluate_predictions(_small(), FAST, tmp_path / "out", synthetic=True, title="external", saliency=summary,
                             saliency_figure=png)
    md = (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "saliency.png").is_file() and "saliency.png" in md
    assert "reference -850 HU" in md and "**3.75x chance (95% CI 3.10-4.40)**" in md
    assert "within 1 of the lung's edge left out" in md
    assert "density alone (the volume minus aerated lung, no model) gets 4.30x chance" in md
    assert "gradient alone gets 1.12x chance" in md
    assert m["saliency"] == summary
    from covidnet.evaluate.figures import flat_metrics

    flat = flat_metrics(m)
    assert flat["saliency_enrichment"] == 3.75 and flat["saliency_density_enrichment_ci_lo"] == 3.9


def test_per_hospital_matrices(tmp_path):
    preds = pd.DataFrame({"patient_id": list("abcdefgh"), "label": [1, 1, 0, 0, 1, 0, 0, 0],
                          "score": [0.9, 0.2, 0.1, 0.7, 0.8, 0.3, 0.2, 0.1],
                          "hospital": ["h1"] * 4 + ["h2"] * 4})
    m = evaluate_predictions(preds, FAST, tmp_path, synthetic=True)
    h1, h2 = m["per_hospital"]["h1"], m["per_hospital"]["h2"]
    assert h1["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1} and h1["n"] == 4
    assert h1["sensitivity"]["value"] == 0.5 and h1["specificity"]["value"] == 0.5
    assert h2["confusion"] == {"tp": 1, "fp": 0, "tn": 3, "fn": 0}
    assert h2["sensitivity"]["value"] == 1.0 and h2["specificity"]["value"] == 1.0
    assert "Fig. 4 form" in (tmp_path / "report.md").read_text()


def test_single_class_gives_nulls_with_reasons(tmp_path):
    preds = pd.DataFrame({"patient_id": ["a", "b", "c"], "label": [0, 0, 0], "score": [0.1, 0.2, 0.3]})
    m = evaluate_predictions(preds, FAST, tmp_path, synthetic=True)
    for fig in (m["auc"], m["covid"]["sensitivity"], m["covid"]["ppv"], m["covid"]["f1"], m["non_covid"]["npv"]):
        assert fig["value"] is None and fig["ci"] is None and fig["reason"]
    assert "both classes" in m["auc"]["reason"]
    assert "no COVID-19 patients" in m["covid"]["sensitivity"]["reason"]
    assert "no patient called COVID-19" in m["covid"]["ppv"]["reason"]
    assert m["covid"]["specificity"]["value"] == 1.0 and m["accuracy"]["value"] == 1.0
    assert len(pd.read_csv(tmp_path / "roc.csv")) == 0
    assert "Undefined figures" in (tmp_path / "report.md").read_text()
    json.loads((tmp_path / "metrics.json").read_text())  # nulls, no NaN


def test_readers_kappa_and_groups(tmp_path):
    preds = _small(70, seed=4)
    rng = np.random.default_rng(2)
    y = preds["label"].to_numpy()
    for i, name in enumerate(["ann", "bob", "cat"]):
        preds[f"reader_{name}"] = np.where(rng.random(70) < 0.8 - 0.1 * i, y, 1 - y)
    params = dataclasses.replace(FAST, reader_groups={"ann": "senior", "bob": "senior", "cat": "junior"})
    m = evaluate_predictions(preds, params, tmp_path, synthetic=True)
    model = (preds["score"] >= 0.5).astype(int)
    k = m["kappa"]
    assert k["model_vs_reader"]["bob"]["value"] == pytest.approx(cohen_kappa_score(model, preds["reader_bob"]))
    assert k["reader_vs_reader"]["ann vs cat"]["value"] == pytest.approx(
        cohen_kappa_score(preds["reader_ann"], preds["reader_cat"]))
    senior = k["groups"]["senior"]
    assert senior["readers"] == ["ann", "bob"] and senior["reader_vs_reader"]["n"] == 1
    vals = [k["model_vs_reader"][r]["value"] for r in ("ann", "bob")]
    assert senior["model_vs_reader"]["median"] == pytest.approx(np.median(vals))
    assert k["groups"]["junior"]["reader_vs_reader"]["median"] is None
    ann = m["readers"]["ann"]
    assert ann["group"] == "senior" and "auc" not in ann
    assert ann["accuracy"]["value"] == pytest.approx((preds["reader_ann"] == y).mean())
    assert "Table 2 form" in (tmp_path / "report.md").read_text()


def test_no_readers_says_so(tmp_path):
    m = evaluate_predictions(_small(20), FAST, tmp_path, synthetic=True)
    assert m["kappa"]["model_vs_reader"] == {} and "no reader columns" in m["kappa"]["reason"]


def test_calibrator_reported_beside_raw(tmp_path):
    preds = _small(200, seed=5)
    cal = fit_calibrator(preds["score"], preds["label"], "isotonic")
    m = evaluate_predictions(preds, FAST, tmp_path, synthetic=True, calibrator=cal)
    assert m["calibration"]["calibrated"]["kind"] == "isotonic"
    assert m["calibration"]["calibrated"]["ece"] < m["calibration"]["ece"]
    assert set(pd.read_csv(tmp_path / "reliability.csv")["scores"]) == {"raw", "calibrated (isotonic)"}


GOOD = "patient_id,label,score,hospital,reader_ann\nP1,1,0.9,h1,1\nP2,0,0.2,h1,0\nP3,1,0.6,h2,1\n"


@pytest.mark.parametrize("text, match", [
    ("", "the file is empty"),
    ("patient_id,label,score\n", "no rows after the header"),
    ("patient_id,label\nP1,1\n", r"missing column\(s\) \['score'\]"),
    (GOOD.replace("0.2,h1", "nan,h1"), r"column 'score' must be a number in \[0, 1\].*line 3: 'nan'"),
    (GOOD.replace("0.2,h1", ",h1"), r"column 'score'.*line 3: ''"),
    (GOOD.replace("0.6,h2", "1.5,h2"), r"column 'score'.*line 4: '1.5'"),
    (GOOD.replace("0.6,h2", "-0.1,h2"), r"column 'score'.*line 4: '-0.1'"),
    (GOOD.replace("P2,0", "P2,2"), r"column 'label' must be 0 or 1; line 3: '2'"),
    (GOOD.replace("P3,1", "P3,yes"), r"column 'label' must be 0 or 1; line 4: 'yes'"),
    (GOOD.replace("P3,", "P1,"), r"'patient_id' must be unique.*'P1' appears at line 2, line 4"),
    (GOOD.replace("P2,", ","), r"column 'patient_id' must not be empty; line 3"),
    (GOOD.replace("h2,1", "h2,0.5"), r"column 'reader_ann' must be 0 or 1; line 4: '0.5'"),
    (GOOD.replace("h1,0", "h1,"), r"column 'reader_ann' must be 0 or 1; line 3: ''"),
    (GOOD.replace("reader_ann", "reader_"), r"column 'reader_' needs a reader name"),
])
def test_bad_predictions_name_line_and_column(tmp_path, text, match):
    path = tmp_path / "preds.csv"
    path.write_text(text)
    with pytest.raises(PredictionsError, match=match) as info:
        read_predictions(path)
    assert str(path) in str(info.value)


def test_read_predictions_types_and_missing_file(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text(GOOD + "\n")  # a trailing blank line is not a row
    df = read_predictions(path)
    assert list(df.columns) == ["patient_id", "label", "score", "hospital", "reader_ann"]
    assert df["label"].tolist() == [1, 0, 1] and df["score"].dtype == np.float64
    with pytest.raises(PredictionsError, match="not found"):
        read_predictions(tmp_path / "nope.csv")
    with pytest.raises(PredictionsError, match=r"'score'.*row 1"):
        evaluate_predictions(pd.DataFrame({"patient_id": ["a", "b"], "label": [0, 1], "score": [0.2, np.nan]}),
                             FAST, tmp_path / "out", synthetic=True)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_params_validation(tmp_path):
    with pytest.raises(ParamsError, match=r"evaluate.calibrator must be one of .*got 'platt'"):
        EvaluateParams(calibrator="platt")
    with pytest.raises(ParamsError, match=r"evaluate.threshold must be in \[0, 1\], got 1.5"):
        EvaluateParams(threshold=1.5)
    params = load_params(REPO / "params.yaml")
    params["evaluate"] = {**params["evaluate"], "ci": 95}
    with pytest.raises(ParamsError, match=r"params.yaml: evaluate.ci must be in \(0, 1\)"):
        section(params, "evaluate", EvaluateParams)


def test_log_to_mlflow_sqlite(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    m = evaluate_predictions(_small(40), FAST, tmp_path / "out", synthetic=True)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp = mlflow.create_experiment("evaluate", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        log_to_mlflow(m, tmp_path / "out")
    got = mlflow.get_run(run.info.run_id).data
    assert got.metrics["test.auc"] == pytest.approx(m["auc"]["value"], abs=5e-4)
    assert got.metrics["test.auc_lo"] == pytest.approx(m["auc"]["ci"][0], abs=5e-4)
    assert got.metrics["test.sens"] == pytest.approx(m["covid"]["sensitivity"]["value"], abs=5e-4)
    assert got.metrics["test.n"] == m["n"]
    assert set(got.metrics) == {"test.auc", "test.auc_lo", "test.sens", "test.spec", "test.n"}  # the rest: artifact
    assert got.tags["test_synthetic"] == "true"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluate/test")}
    assert "evaluate/test/metrics.json" in names and "evaluate/test/report.html" in names
