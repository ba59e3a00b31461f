"""PCR feedback and live performance (src/covidnet/monitor/feedback.py) on a real SQLite log.

The performance figures are checked against a confusion matrix counted by hand."""

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from covidnet.cli import main as cli
from covidnet.evaluate.params import EvaluateParams
from covidnet.monitor.feedback import FeedbackError, ingest_feedback, join_feedback, performance_report
from covidnet.monitor.predlog import Prediction, PredictionLog, hash_id
from covidnet.params import load_params, section
from covidnet.promote.gate import PromoteParams
from support import REPO

KEY = b"0123456789abcdef0123456789abcdef"
T0 = dt.datetime(2024, 5, 10, 9, 0, tzinfo=dt.timezone.utc)


def _pred(patient: str, decision: str, hospital: str, t: dt.datetime = T0, score: float | None = None,
          version: str = "7") -> Prediction:
    s = score if score is not None else (0.8 if decision == "covid19" else 0.2)
    return Prediction(request_id=f"r-{patient}-{t.isoformat()}", time=t, model_name="covidnet", model_version=version,
                      score=s, probability=s, threshold=0.5, decision=decision, hospital=hospital,
                      patient_hash=hash_id(KEY, "patient", patient))


@pytest.fixture()
def plog(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'predictions.db'}", KEY, 30.0)
    yield log
    log.close()


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_feedback_rows_checked_reported_and_the_rest_ingested(plog, tmp_path):
    plog.append([_pred(p, "covid19", "h1") for p in ("P1", "P2", "P3", "P4", "P5", "P6")])
    h = {p: hash_id(KEY, "patient", p) for p in ("P1", "P2", "P3", "P4", "P5", "P6", "P9")}
    f = _csv(tmp_path / "pcr.csv", "\n".join([
        "patient_hash,pcr_result,pcr_date",
        f"{h['P1']},positive,2024-05-09",     # line 2: ok
        f"{h['P2']},NEGATIVE,2024-05-11",     # line 3: ok (any case)
        f"{h['P9']},positive,2024-05-09",     # line 4: unknown id
        f"{h['P3']},positive,2024-05-09",     # line 5: duplicate
        f"{h['P3']},negative,2024-05-12",     # line 6: duplicate
        f"{h['P4']},maybe,2024-05-09",        # line 7: bad result
        f"{h['P5']},positive,09/05/2024",     # line 8: bad date
        "not-a-hash,positive,2024-05-09",     # line 9: bad hash
        "",                                    # blank line: skipped, still counted in line numbers
        f"{h['P6']},1,2024-05-10",            # line 11: ok
    ]) + "\n")
    r = ingest_feedback(f, plog)
    assert (r.rows, r.ingested, r.n_rejected) == (9, 3, 6)
    assert r.rejected == {"patient_hash is not 64 hex digits": [9], "unparseable pcr_result": [7],
                          "unparseable pcr_date (expected YYYY-MM-DD)": [8], "duplicate id in the file": [5, 6],
                          "unknown id (no logged prediction)": [4]}
    assert "3 of 9 row(s) ingested" in r.summary() and "duplicate id in the file: 2 (lines 5, 6)" in r.summary()
    fb = plog.feedback().set_index("patient_hash")
    assert fb.loc[h["P1"], "pcr_positive"] and not fb.loc[h["P2"], "pcr_positive"] and fb.loc[h["P6"], "pcr_positive"]
    assert fb.loc[h["P2"], "pcr_date"] == pd.Timestamp("2024-05-11") and set(fb["source"]) == {"pcr.csv"}
    # The same file again: nothing new, the ingested ids are reported as already present.
    again = ingest_feedback(f, plog)
    assert again.ingested == 0 and again.rejected["already has a PCR result in the log"] == [2, 3, 11]
    # Raw patient ids are hashed with the log's key (and never stored).
    g = _csv(tmp_path / "ids.csv", "patient_id,pcr_result,pcr_date\nP4,detected,2024-05-09\n,negative,2024-05-09\n")
    r = ingest_feedback(g, plog)
    assert r.ingested == 1 and r.rejected == {"empty patient_id": [3]}
    assert "P4" not in plog.feedback().to_string()


@pytest.mark.parametrize("text,message", [
    ("patient_hash,result,date\n", r"expected columns patient_hash \(or patient_id\), pcr_result, pcr_date"),
    ("patient_hash,patient_id,pcr_result,pcr_date\n", "not both"),
    ("", "not a readable CSV"),
])
def test_unreadable_feedback_files(plog, tmp_path, text, message):
    with pytest.raises(FeedbackError, match=message):
        ingest_feedback(_csv(tmp_path / "f.csv", text), plog)
    with pytest.raises(FeedbackError, match="not found"):
        ingest_feedback(tmp_path / "missing.csv", plog)


def test_join_takes_each_patients_first_prediction_near_its_pcr(plog):
    d = dt.timedelta(days=1)
    plog.append([_pred("A", "covid19", "h1", T0 - 20 * d),          # 20 days before PCR: too far
                 _pred("A", "other_pneumonia", "h1", T0 + 2 * d),    # the first within 14 days: joined
                 _pred("A", "covid19", "h1", T0 + 3 * d),            # later study of A: not counted again
                 _pred("B", "covid19", "h2", T0),                    # no PCR result: not joined
                 _pred("C", "covid19", "h2", T0 + 14 * d)])          # exactly 14 days: joined
    plog.add_feedback([{"patient_hash": hash_id(KEY, "patient", p), "pcr_positive": True, "pcr_date": T0.date(),
                        "source": "t"} for p in ("A", "C")])
    joined = join_feedback(plog.predictions(), plog.feedback(), 14)
    assert list(joined["patient_hash"]) == [hash_id(KEY, "patient", "A"), hash_id(KEY, "patient", "C")]
    assert list(joined["decision"]) == ["other_pneumonia", "covid19"] and list(joined["days_from_pcr"]) == [2, 14]
    assert list(joined["label"]) == [1, 1]
    assert join_feedback(plog.predictions(since=T0 + 5 * d), plog.feedback(), 14)["days_from_pcr"].tolist() == [14]


# Hand-counted: hospital h1 TP 3, FN 1, TN 2, FP 1; hospital h2 TP 1, FN 1, TN 3, FP 0.
# Overall TP 4, FN 2, TN 5, FP 1: sensitivity 4/6, specificity 5/6.
CASES = ([("covid19", True, "h1")] * 3 + [("other_pneumonia", True, "h1")] + [("other_pneumonia", False, "h1")] * 2
         + [("covid19", False, "h1")] + [("covid19", True, "h2")] + [("other_pneumonia", True, "h2")]
         + [("other_pneumonia", False, "h2")] * 3)


def _fill(plog, cases, version="7"):
    preds, fb = [], []
    for i, (decision, positive, hospital) in enumerate(cases):
        pid = f"{version}-{i}"
        preds.append(_pred(pid, decision, hospital, T0 + dt.timedelta(minutes=i), version=version,
                           score=0.55 + i / 100 if decision == "covid19" else 0.45 - i / 100))
        fb.append({"patient_hash": hash_id(KEY, "patient", pid), "pcr_positive": positive, "pcr_date": T0.date(),
                   "source": "t"})
    plog.append(preds)
    plog.add_feedback(fb)


def test_performance_matches_the_hand_counted_confusion_matrix(plog):
    _fill(plog, CASES)
    params = load_params(REPO / "params.yaml")
    ep = dataclasses.replace(section(params, "evaluate", EvaluateParams), bootstrap=2000)
    pp = section(params, "promote", PromoteParams)
    joined = join_feedback(plog.predictions(), plog.feedback(), 14)
    report = performance_report(joined, ep, pp, T0, T0 + dt.timedelta(days=1))
    (m,) = report["models"]
    mt = m["metrics"]
    assert mt["confusion"] == {"tp": 4, "fp": 1, "tn": 5, "fn": 2} and m["n_patients"] == 12
    assert mt["covid"]["sensitivity"]["value"] == pytest.approx(4 / 6)
    assert mt["covid"]["specificity"]["value"] == pytest.approx(5 / 6)
    lo, hi = mt["covid"]["sensitivity"]["ci"]
    assert lo < 4 / 6 < hi
    h1, h2 = mt["per_hospital"]["h1"], mt["per_hospital"]["h2"]
    assert h1["confusion"] == {"tp": 3, "fp": 1, "tn": 2, "fn": 1} and h1["sensitivity"]["value"] == pytest.approx(0.75)
    assert h2["confusion"] == {"tp": 1, "fp": 0, "tn": 3, "fn": 1} and h2["specificity"]["value"] == 1.0
    assert m["threshold"] == 0.5 and report["status"] == "ok" and m["flagged"] == []
    g = m["gate"]["sensitivity"]
    assert g["threshold"] == pp.min_sensitivity_lower and g["flagged"] is False


def test_a_drop_below_the_gate_is_flagged_with_exit_3(plog, tmp_path):
    """Version 8 misses every PCR-positive patient at h3: sensitivity 0 (CI 0-0) is flagged."""
    _fill(plog, [("other_pneumonia", True, "h3")] * 6 + [("other_pneumonia", False, "h3")] * 6, version="8")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["paths"].update({"predlog": str(tmp_path / "predictions.db"), "monitor": str(tmp_path / "reports")})
    params["evaluate"]["bootstrap"] = 500
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = cli.main(["monitor", "performance", "--params", str(tmp_path / "params.yaml"),
                     "--since", "2024-05-10", "--until", "2024-05-11"])
    assert code == 3
    report = json.loads((tmp_path / "reports" / "performance.json").read_text())
    (m,) = report["models"]
    assert report["status"] == "flagged" and "sensitivity" in m["flagged"] and "sensitivity at h3" in m["flagged"]
    assert m["gate"]["sensitivity"]["ci"] == [0.0, 0.0] and m["gate"]["auc"]["meets_gate"] is not None
    html = (tmp_path / "reports" / "performance.html").read_text()
    assert "FLAGGED" in html and "<td>h3</td>" in html
