"""Identifiers (hashes, derived UIDs, redaction), the pacs params and the retry policy."""

import logging
import re
import threading

import pytest
import requests

from covidnet.pacs.ids import RedactingFilter, derived_uid, fingerprint, is_own, orthanc_id, redact
from covidnet.pacs.params import RetryParams, pacs_params
from covidnet.pacs.retry import PacsUnavailable, is_transient, with_retries
from covidnet.params import ParamsError, load_params, section
from support import REPO

KEY = b"k" * 32
ROOT = "1.2.826.0.1.3680043.8.498.1.13."


def test_derived_uids_are_valid_deterministic_and_ours():
    a = derived_uid(KEY, ROOT, "1.2.3", "fp", 0, "sr_sop")
    assert a == derived_uid(KEY, ROOT, "1.2.3", "fp", 0, "sr_sop")
    assert a != derived_uid(KEY, ROOT, "1.2.3", "fp", 1, "sr_sop") != derived_uid(b"j" * 32, ROOT, "1.2.3", "fp", 0, "sr_sop")
    assert len(a) <= 64 and re.fullmatch(r"[1-9][0-9]*(\.(0|[1-9][0-9]*))*", a) and is_own(a, ROOT)
    assert not is_own("1.2.826.0.1.3680043.8.498.13", ROOT)
    with pytest.raises(ValueError, match="no room"):
        derived_uid(KEY, "1." * 20, "x")


def test_fingerprint_ignores_order_and_our_series():
    series = [("1.2.3.4", 10), ("1.2.3.5", 3)]
    fp = fingerprint(KEY, series, ROOT)
    assert fp == fingerprint(KEY, series[::-1] + [(ROOT + "77", 1)], ROOT)
    assert fp != fingerprint(KEY, [("1.2.3.4", 11), ("1.2.3.5", 3)], ROOT)
    assert fp != fingerprint(KEY, series + [("1.2.3.6", 1)], ROOT)


def test_redact_and_log_filter(caplog):
    text = "study 1.2.840.113619.2.55.3 has no usable CT series (series 1.2.3.4.5: contrast-enhanced); 0.5 mm"
    out = redact(text, KEY)
    assert "1.2.840" not in out and "1.2.3.4.5" not in out and out.count("uid:") == 2 and "0.5 mm" in out
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter(KEY))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", ("1.2.840.10008.5.1",), None)
    handler.filter(record)
    assert "1.2.840" not in record.getMessage()


def test_orthanc_id_format():
    assert orthanc_id("PAT-ALPHA", "1.2.826.0.1.3680043.8.498.40156619254654198702373958381912692694") == \
        "0d986b9c-535f67ec-d35fd6ba-c191d4f8-e4da7087"  # what Orthanc 1.10 answered for this study


def test_params_section_loads_and_checks():
    params = load_params(REPO / "params.yaml")
    pp = pacs_params(params, url="http://127.0.0.1:9")
    assert pp.url == "http://127.0.0.1:9" and pp.dicomweb_url == "http://127.0.0.1:9/dicom-web"
    assert pp.listen.port and pp.retry.count >= 1
    bad = {**params, "pacs": {**params["pacs"], "uid_root": "1.2.3"}}
    with pytest.raises(ParamsError, match="uid_root"):
        pacs_params(bad)
    bad = {**params, "pacs": {**params["pacs"], "retry": {**params["pacs"]["retry"], "factor": 0.5}}}
    with pytest.raises(ParamsError, match="pacs.retry"):
        pacs_params(bad)
    with pytest.raises(ParamsError, match="unknown key"):
        section({**params, "pacs": {**params["pacs"], "pol_s": 1}}, "pacs", type(pp))


def test_retry_waits_and_outcomes():
    policy = RetryParams(count=3, backoff_s=0.0, factor=2.0, max_backoff_s=0.0)
    assert RetryParams(count=4, backoff_s=1, factor=2, max_backoff_s=5).waits() == [1, 2, 4, 5]
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.ConnectionError("refused")
        return "ok"

    assert with_retries(flaky, policy, "t", KEY) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(PacsUnavailable, match="after 3 retries"):
        with_retries(lambda: (calls.append(1), (_ for _ in ()).throw(requests.ConnectionError("x")))[1], policy, "t", KEY)
    assert len(calls) == 4
    with pytest.raises(KeyError):  # not transient: raised at once
        with_retries(lambda: {}["x"], policy, "t", KEY)
    stop = threading.Event()
    stop.set()
    with pytest.raises(PacsUnavailable, match="stopped"):
        with_retries(lambda: (_ for _ in ()).throw(requests.Timeout("slow")),
                     RetryParams(count=3, backoff_s=5, factor=1, max_backoff_s=5), "t", KEY, stop)


@pytest.mark.parametrize("status, transient", [(503, True), (500, True), (429, True), (404, False), (400, False)])
def test_http_status_classification(status, transient):
    response = requests.Response()
    response.status_code = status
    assert is_transient(requests.HTTPError(response=response)) is transient
