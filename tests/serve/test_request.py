"""A request's limits come before the work they guard (covidnet.serve.request's stages), on real DICOM zips.

Each test replaces the next stage's function with one that fails the test if it is called, so a
refusal is shown to come before that work: the study count before any base64 is decoded, the
request's file and byte totals before any zip is extracted, the studies found in the zips
before any is preprocessed.
"""

import dataclasses

import numpy as np
import pytest

from covidnet.serve.client import zip_folder
from covidnet.serve.oip import OipRequest, Tensor
from covidnet.serve.request import request_items, request_studies
from covidnet.serve.study import ServeInputError, extract_zip, studies_from_folder
from support.oip import serve_bundle
from support.server import write_study
from support.train import SHAPE


def _never(*_args, **_kwargs):
    raise AssertionError("this stage must not run for a request that is refused")


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    for i in range(3):
        write_study(tmp / "three", uid=f"three-{i}", seed=i)
    return {"one": zip_folder(write_study(tmp / "one", uid="one")), "three": zip_folder(tmp / "three")}


def test_study_count_before_any_base64_is_decoded(monkeypatch):
    monkeypatch.setattr("covidnet.serve.study.decode_base64", _never)
    payload = OipRequest([Tensor("study_zip", "BYTES", [5], data=["AAAA"] * 5)])
    with pytest.raises(ServeInputError, match=r"5 studies or tensors > serve.max_studies 4") as err:
        request_items(payload, serve_bundle())
    assert err.value.rule == "request.max_studies"
    with pytest.raises(ServeInputError, match="5 instances > serve.max_studies 4"):
        request_items({"instances": ["AAAA"] * 5}, serve_bundle())


def test_studies_in_a_zip_counted_before_any_is_preprocessed(zips, monkeypatch):
    monkeypatch.setattr("covidnet.serve.request.read_study", _never)
    payload = OipRequest([Tensor("study_zip", "BYTES", [1], data=[zips["three"]])])
    with pytest.raises(ServeInputError, match="3 studies found in its zips and references > serve.max_studies 2"):
        request_studies(payload, serve_bundle(max_studies=2))


def test_request_totals_before_any_zip_is_extracted(zips, monkeypatch):
    monkeypatch.setattr("covidnet.serve.request.extract_members", _never)
    two = OipRequest([Tensor("study_zip", "BYTES", [2], data=[zips["three"], zips["one"]])])
    with pytest.raises(ServeInputError, match=r"48 files .* > serve.max_request_members 40") as err:
        request_studies(two, serve_bundle(max_request_members=40))
    assert err.value.rule == "request.max_members"
    size = 0.9 * sum(len(z) for z in zips.values()) / 2**20  # the zips are stored deflated: larger unzipped
    with pytest.raises(ServeInputError, match="serve.max_request_uncompressed_mb") as err:
        request_studies(two, serve_bundle(max_request_uncompressed_mb=size))
    assert err.value.rule == "request.max_uncompressed"


def test_studies_keep_the_request_order(zips):
    x = np.random.default_rng(0).uniform(0, 1, (1, *SHAPE)).astype(np.float32)
    payload = OipRequest([Tensor("tensor", "FP32", [1, *SHAPE], data=x.ravel().tolist()),
                          Tensor("study_zip", "BYTES", [1], raw=len(zips["three"]).to_bytes(4, "little") + zips["three"])])
    studies = request_studies(payload, serve_bundle())
    assert len(studies) == 4 and studies[0].info == {} and np.allclose(studies[0].tensor, x[0])
    assert [s.info["selection"].startswith("most slices") for s in studies[1:]] == [True] * 3


def test_extracted_files_are_numbered_and_the_folder_api_is_unchanged(zips, tmp_path):
    """Members' names (which may name a patient) never reach the disk; studies_from_folder as the PACS calls it."""
    b = serve_bundle()
    assert extract_zip(zips["three"], tmp_path, b.serve) == 36
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["000000.dcm", "000001.dcm"]
    studies = studies_from_folder(tmp_path, b.series, b.preprocess, "folder", b.serve)
    assert len(studies) == 3 and all(s.tensor.shape == SHAPE for s in studies)
    assert all(s.info["lesions"] is not None and s.info["patient_id"] for s in studies)
    assert len(studies_from_folder(tmp_path, b.series, b.preprocess)) == 3  # the positional, serve-less form


def test_a_zip_bomb_per_zip_and_slip_still_refused(tmp_path):
    import io
    import zipfile

    def z(members):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as f:
            for name, data in members.items():
                f.writestr(name, data)
        return buf.getvalue()

    sp = dataclasses.replace(serve_bundle().serve, max_members=2)
    with pytest.raises(ServeInputError, match="max_members") as err:
        extract_zip(z({"a": b"1", "b": b"2", "c": b"3"}), tmp_path, sp)
    assert err.value.rule == "zip.max_members"
    with pytest.raises(ServeInputError, match="zip slip") as err:
        extract_zip(z({"DOE^JOHN/../../x.dcm": b"1"}), tmp_path, sp)
    assert err.value.private == {"member": ["DOE^JOHN/../../x.dcm"]} and "DOE" not in err.value.log_text(b"k")
    with pytest.raises(ServeInputError, match="zip bomb"):
        extract_zip(z({"zeros": b"\0" * (2 << 20)}), tmp_path, sp)
