"""The worklist's rows, order, text table and page (the browser test is tests/e2e/test_pacs_watch.py)."""

import dataclasses
import datetime as dt

from covidnet.monitor.predlog import PredictionLog
from covidnet.pacs.page import worklist_page
from covidnet.pacs.params import pacs_params
from covidnet.pacs.state import StudyState
from covidnet.pacs.worklist import PacsIndex, format_table, waiting_text, worklist_document, worklist_rows
from covidnet.params import load_params
from support import REPO

KEY = b"k" * 32
T0 = dt.datetime(2024, 5, 1, 8, 0, 0)


def _state(tmp_path) -> StudyState:
    s = StudyState(PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", KEY, 5.0), 60.0)
    for i, (h, p, status) in enumerate([("a" * 64, 0.2, "done"), ("b" * 64, None, "unanalysable"),
                                        ("c" * 64, 0.9, "done"), ("d" * 64, None, "waiting"), ("e" * 64, 0.5, "done")]):
        s.observe(h, "watch", "1/1", f"fp{i}", T0 + dt.timedelta(minutes=i))
        if status != "waiting":
            s.claim(h, f"fp{i}", "w", T0)
            result = {"reason": "no usable CT series"} if p is None else {
                "probability": p, "decision": "covid19" if p >= 0.5 else "other_pneumonia", "abnormal_fraction": p / 2,
                "qc_flags": "none"}
            s.finish(h, f"fp{i}", "w", status, result, now=T0)
    return s


def test_rows_by_probability_then_the_rest_longest_waiting_first(tmp_path):
    state = _state(tmp_path)
    now = dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.timezone.utc)
    index = {"c" * 64: {"description": "CT CHEST", "study_date": "20240501", "link": "http://pacs/c"}}
    rows = worklist_rows(state, index, 100, now)
    assert [r["study"][0] for r in rows] == ["c", "e", "a", "b", "d"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["link"] == "http://pacs/c" and rows[1]["link"] is None and rows[0]["study"] == "c" * 12
    assert rows[3]["reason"] == "no usable CT series" and rows[3]["status"] == "unanalysable"
    assert rows[0]["waiting_s"] == 3600 - 120
    table = format_table(rows)
    assert table.splitlines()[1].split()[:4] == ["1", "c" * 12, "0.900", "covid19"]
    assert "unanalysable: no usable CT series" in table and "45.0%" in table


def test_waiting_text():
    assert [waiting_text(s) for s in (5, 125, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == \
        ["5 s", "2 min", "3 h 05 min", "2 d 04 h"]


def test_document_without_a_pacs_says_so(tmp_path):
    pp = pacs_params(load_params(REPO / "params.yaml"), url="http://127.0.0.1:9")  # nothing listens there
    pp = dataclasses.replace(pp, worklist=dataclasses.replace(pp.worklist, pacs_cache_s=0.0))
    doc = worklist_document(_state(tmp_path), PacsIndex(pp, KEY), pp)
    assert doc["pacs"].startswith("PACS not reachable") and len(doc["rows"]) == 5 and doc["refresh_s"] == pp.worklist.refresh_s


def test_page_is_self_contained():
    page = worklist_page(2.5)
    assert "const REFRESH_MS = 2500;" in page and 'id="worklist"' in page and "NOT FOR DIAGNOSIS" in page
    assert "http" not in page.replace("http-equiv", "")  # no external resources
