"""The SR and the Secondary Capture: built, written, read back with pydicom and highdicom; the overlay masks."""

import dataclasses
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest

from covidnet.pacs.capture import DISCLAIMER, MaskSource, lesion_masks, make_source, render, secondary_capture
from covidnet.pacs.dicomweb import current_reports
from covidnet.pacs.ids import derived_uid
from covidnet.pacs.params import pacs_params
from covidnet.pacs.sr import build_report, reference_header, report_values
from covidnet.params import ParamsError, load_params, section
from covidnet.serve.lesions import lesion_sample, lung_abnormality
from covidnet.serve.params import ServeParams
from support import REPO
from support.orthanc import ct_study

KEY, ROOT = b"k" * 32, "1.2.826.0.1.3680043.8.498.1.13."
PARAMS = load_params(REPO / "params.yaml", profile="tiny")
SERVE = section(PARAMS, "serve", ServeParams)
PP = pacs_params(PARAMS)


def _answer(series_uid: str, p: float = 0.7123456789) -> dict:
    return {"covid19_probability": p, "score": p, "threshold": 0.5, "decision": "covid19" if p >= 0.5 else "other_pneumonia",
            "model": {"name": "covidnet", "version": "3", "synthetic": "true"}, "series_uid": series_uid,
            "selection": "most slices (12) of 1 eligible of 1 series in the study",
            "qc_check": {"all_in_range": False, "out_of_range": ["noise_hu"]},
            "lesions": {"abnormal_fraction": 0.25, "ggo_fraction": 0.1, "consolidation_fraction": 0.15}}


def _uids(n: int = 0) -> dict:
    return {k: derived_uid(KEY, ROOT, "study", "fp", n, k) for k in ("sr_series", "sr_sop", "sc_series", "sc_sop")}


def _files(folder):
    from covidnet.data.series import SeriesParams, index_tree

    index = index_tree(folder, dataclasses.replace(section(PARAMS, "series", SeriesParams), workers=1))
    return index.files, (32, 32)


def _roundtrip(ds):
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return ct_study(tmp_path_factory.mktemp("sr"), "st", "PAT-SR-1", seed=3)


def test_masks_count_what_lung_abnormality_reports(study):
    files, shape = _files(study)
    hu = lesion_sample(files, study, shape, SERVE)
    lung, ggo, cons = lesion_masks(hu, -500.0, SERVE)
    ref = lung_abnormality(hu, -500.0, SERVE)
    assert ref["lung_voxels"] == lung.sum() > 0
    assert ref["ggo_fraction"] == pytest.approx(ggo.sum() / lung.sum())
    assert ref["consolidation_fraction"] == pytest.approx(cons.sum() / lung.sum())
    empty = lesion_masks(np.full((2, 8, 8), -1000.0), -500.0, SERVE)
    assert not any(m.any() for m in empty)


def test_overlay_capture_is_labelled_and_parses(study):
    files, shape = _files(study)
    overlay = MaskSource(SERVE, -500.0).overlay(files, study, shape, PP.capture.tiles)
    pixels = render(overlay, PP.capture, "P(COVID-19) 0.712 (covid19)")
    n = min(PP.capture.tiles, len(files))
    assert len(overlay.hu) == n
    cols = int(np.ceil(np.sqrt(n)))
    assert pixels.shape == (int(np.ceil(n / cols)) * PP.capture.tile_px + 44, cols * PP.capture.tile_px, 3)
    assert (pixels[..., 0] > pixels[..., 2] + 100).any()  # yellow / red overlay drawn
    ref = reference_header(files["path"].map(lambda p: study / p).iloc[0])
    sc = _roundtrip(secondary_capture(ref, pixels, _uids()["sc_series"], _uids()["sc_sop"], 9902, "COVIDNet", "x"))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and sc.BurnedInAnnotation == "YES"
    assert DISCLAIMER in sc.ImageComments and DISCLAIMER in sc.SeriesDescription
    assert sc.StudyInstanceUID == ref.StudyInstanceUID and sc.PatientID == "PAT-SR-1"
    assert np.array_equal(sc.pixel_array, pixels)
    with pytest.raises(ParamsError, match="capture.source"):
        make_source("saliency", SERVE, -500.0)


def test_report_round_trip_and_supersession(study):
    files, _ = _files(study)
    ref = reference_header(study / files["path"].iloc[0])
    first = _roundtrip(build_report(ref, _answer(ref.SeriesInstanceUID), None, _uids(0), 9901, "COVIDNet"))
    assert first.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and first.StudyInstanceUID == ref.StudyInstanceUID
    assert first.Modality == "SR" and first.VerificationFlag == "UNVERIFIED"
    parsed = hd.sr.ComprehensiveSR.from_dataset(first)
    assert parsed.SOPInstanceUID == _uids(0)["sr_sop"]
    v = report_values(first)
    assert v["status"] == "Analysed" and v["probability"] == pytest.approx(0.7123456789, abs=1e-12)
    assert v["decision"] == "COVID-19" and v["series"] == ref.SeriesInstanceUID and v["version"] == "3"
    assert v["abnormal"] == pytest.approx(25.0) and v["qc"] == "noise_hu" and "SYNTHETIC" in v["disclaimer"]
    second = _roundtrip(build_report(ref, _answer(ref.SeriesInstanceUID, 0.2), None, _uids(1), 9901, "COVIDNet",
                                     previous=[first]))
    assert [r.SOPInstanceUID for r in current_reports([first, second])] == [second.SOPInstanceUID]


def test_report_of_a_study_that_cannot_be_analysed(study):
    ref = reference_header(next(study.iterdir()))
    sr = _roundtrip(build_report(ref, None, "study 1.2.3 has no usable CT series (contrast-enhanced)", _uids(), 9901, "X"))
    v = report_values(sr)
    assert v["status"] == "Not analysed" and "contrast-enhanced" in v["reason"] and "probability" not in v
    hd.sr.ComprehensiveSR.from_dataset(sr)
