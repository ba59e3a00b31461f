"""Serving: the real KServe ModelServer in a subprocess, called over real HTTP on loopback.

A tiny model is trained in a fixture (as tests/test_train.py does) and served from its folder
(``--model-dir``; serving by MLflow URI is tests/test_serve_source.py); studies are real DICOM
files written by :func:`covidnet.synthetic.dicom_writer.write_series`, zipped and posted as the clients do.
S3 study references are fetched from moto's S3 server on loopback (a real HTTP endpoint).
"""

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from covidnet.params import load_params, section
from covidnet.preprocess.params import PreprocessParams
from covidnet.serve.answer import results
from covidnet.serve.bundle import load_bundle
from covidnet.serve.client import PredictError, send_study, v2_zip_request, zip_folder
from covidnet.serve.lesions import lung_abnormality
from covidnet.serve.params import ServeParams
from covidnet.serve.study import ServeInputError, extract_zip, studies_from_folder, tensor_batch
from covidnet.synthetic.dicom_writer import SeriesHeader, write_series
from support import REPO
from support.oip import identifiers
from support.server import (
    NAME,
    assert_alive,
    moto_s3,
    post_json,
    running_server,
    tiny_model,
    write_study,
    zip_bytes,
)
from support.train import PRE, SHAPE

pytestmark = pytest.mark.slow

SENT = []  # the folders this module's tests wrote DICOM into: the last test greps the server's log for them


@pytest.fixture(autouse=True)
def _record(request):
    if "tmp_path" in request.fixturenames:
        SENT.append(request.getfixturevalue("tmp_path"))


def _serve_params(**changes):
    """The repository's ``serve`` params with some values replaced."""
    import dataclasses

    return dataclasses.replace(section(load_params(REPO / "params.yaml"), "serve",
                                       ServeParams), **changes)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free loopback port; the env a boto3 client (and the server) needs."""
    with moto_s3() as served:
        yield served


def _reference_qc(root: Path) -> pd.DataFrame:
    """A training QC table from normal studies (soft tissue at 40 HU) with noise of 8 to 20 HU."""
    series = load_params(REPO / "params.yaml", profile="tiny")["series"]
    from covidnet.data.series import SeriesParams

    sp = SeriesParams(**{**series, "workers": 1})
    pre = PreprocessParams(**{**PRE, "dtype": "float16", "body_hu": -500.0, "lung_hu": [-950.0, -400.0], "workers": 1})
    rows = []
    for i, noise in enumerate((8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0)):
        folder = write_study(root, uid=f"ref{i}", noise=noise, seed=100 + i, tissue=40.0)
        (study,) = studies_from_folder(folder, sp, pre)
        rows.append({**study.info["qc"], "split": "train", "error": ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def server(tmp_path_factory, s3):
    """A trained tiny model folder (with a training QC table) and `covidnet serve` on a free loopback port."""
    tmp = tmp_path_factory.mktemp("serve")
    SENT.append(tmp)
    tiny_model(tmp)
    _reference_qc(tmp / "ref").to_csv(tmp / "model" / "qc.csv", index=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["serve"]["max_uncompressed_mb"] = 1
    params["serve"]["max_body_mb"] = 1
    params["serve"]["qc_margin"] = 0.1
    params["paths"]["calibrator"] = str(tmp / "calibrator.json")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    with running_server(["--model-dir", str(tmp / "model"), "--params", str(tmp / "params.yaml")], tmp,
                        {**os.environ, **s3["env"]}, tmp / "server.log") as base:
        yield {"base": base, "infer": f"{base}/v2/models/{NAME}/infer", "v1": f"{base}/v1/models/{NAME}:predict",
               "tmp": tmp, "log": tmp / "server.log"}


def test_v2_study_zip(server, tmp_path):
    folder = write_study(tmp_path / "dicom")
    (folder / "README.txt").write_text("not DICOM; skipped")
    status, body = post_json(server["infer"], v2_zip_request([zip_folder(folder)]))
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    assert 0.0 <= out["covid19_probability"]["data"][0] <= 1.0
    result = json.loads(out["result"]["data"][0])
    assert result["decision"] in ("covid19", "other_pneumonia") and out["decision"]["data"][0] == result["decision"]
    assert result["series_uid"].startswith("1.") and result["selection"].startswith("most slices (12)")
    assert result["model"]["version"].startswith("sha256:") and result["model"]["calibrator"] == "none"
    assert result["model"]["alias"] is None and result["model"]["threshold_from"] == "evaluate.threshold"
    assert body["model_version"] == result["model"]["version"]
    assert result["qc"]["n_slices"] == 12 and "lung_fraction" in result["qc"]
    assert result["threshold"] == 0.5


def test_raw_zip_body_answers_like_base64_json(server, tmp_path):
    """The zip as the raw body of a V1 request (no base64, no JSON) gets the same answer as the
    base64 V2 request; a raw body of another content type is a 400 naming it."""
    data = zip_folder(write_study(tmp_path / "dicom", uid="raw", seed=3))
    status, v2 = post_json(server["infer"], v2_zip_request([data]))
    assert status == 200, v2
    status, v1 = post_json(server["v1"], data, "application/zip")
    assert status == 200, v1
    (raw,) = v1["predictions"]
    assert raw["series_uid"] == _result(v2)["series_uid"] and raw["qc"] == _result(v2)["qc"]
    assert raw["covid19_probability"] == pytest.approx(_result(v2)["covid19_probability"], abs=1e-6)
    status, body = post_json(server["v1"], data, "text/plain")
    assert status == 400 and "Content-Type 'text/plain'" in body["error"], body
    status, body = post_json(server["v1"], b"PK\x03\x04 truncated", "application/x-zip-compressed")
    assert status == 400 and "not a zip archive" in body["error"], body
    assert_alive(server)


def test_cli_predict_binary_base64_and_errors(server, tmp_path):
    folder = write_study(tmp_path / "dicom", uid="s2")
    runs = {}
    for encoding in ("binary", "base64"):
        r = subprocess.run([sys.executable, "-m", "covidnet.cli.main", "predict", str(folder), "--url", server["base"],
                            "--model", NAME, "--encoding", encoding], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        runs[encoding] = json.loads(r.stdout)
    assert len(runs["binary"]) == 1 and runs["binary"][0]["series_uid"] == runs["base64"][0]["series_uid"]
    assert runs["binary"][0]["score"] == pytest.approx(runs["base64"][0]["score"], abs=1e-6)
    r = subprocess.run([sys.executable, "-m", "covidnet.cli.main", "predict", str(folder), "--url", server["infer"],
                        "--model", NAME], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "base URL" in r.stderr, r.stderr
    with pytest.raises(PredictError, match=r"HTTP 404: .*nosuchmodel"):
        send_study(folder, server["base"], "nosuchmodel")


def test_v1_base64_zip_and_tensor_together(server, tmp_path):
    folder = write_study(tmp_path / "dicom", uid="s2")
    # V1: a zip (base64, TF-serving style {"b64": ...}) and a tensor answered together
    z = base64.b64encode(zip_folder(folder)).decode()
    status, body = post_json(server["v1"], {"instances": [{"b64": z}, np.full(SHAPE, 0.3).tolist()]})
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 2 and preds[0]["series_uid"] and preds[1]["series_uid"] is None
    assert all(0.0 <= p["covid19_probability"] <= 1.0 for p in preds)


def _raw_exchange(base: str, head: str, body_parts: list[bytes]) -> tuple[int, dict]:
    """Send ``head`` and ``body_parts`` on a raw socket, then read the whole response.

    The parts sent are never more than the server reads before it answers, so no unread data
    is left behind when it closes (which would reset the connection and lose its answer)."""

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, payload = data.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(payload)


def test_body_over_the_limit_is_413(server):
    """serve.max_body_mb (1 MiB in the fixture): a larger body is refused before it is read, with a
    Content-Length and chunked alike; the server keeps answering."""
    path = f"/v1/models/{NAME}:predict"
    # Content-Length over the limit: the answer comes before any byte of the body is sent.
    status, body = _raw_exchange(server["base"], f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip"
                                 f"\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n", [])
    assert status == 413 and "serve.max_body_mb" in body["error"] and "2097152 bytes" in body["error"], body
    # Chunked: refused once the chunks received pass the limit: 16 x 64 KiB = 1 MiB, then the one
    # byte over it, the last thing sent (so the server has read all of it when it answers).
    chunk = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
    status, body = _raw_exchange(server["base"], f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip"
                                 "\r\nTransfer-Encoding: chunked\r\n\r\n", [chunk] * 16 + [b"1\r\n\0\r\n"])
    assert status == 413 and "chunked" in body["error"], body
    assert_alive(server)


def test_v2_tensor(server):
    x = np.random.default_rng(1).uniform(0, 1, size=(2, *SHAPE)).astype(np.float32)
    req = {"inputs": [{"name": "tensor", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, body = post_json(server["infer"], req)
    assert status == 200, body
    probs = body["outputs"][0]["data"]
    assert len(probs) == 2 and all(0.0 <= p <= 1.0 for p in probs)


def _bad_zip_cases(tmp: Path) -> dict:
    good = write_study(tmp / "good", uid="g")
    first = sorted(good.iterdir())[0].read_bytes()
    mr = write_study(tmp / "mr", uid="mr")
    for f in mr.iterdir():  # rewrite Modality
        import pydicom

        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    return {
        "zip slip": (zip_bytes({"../../evil.dcm": first}), "zip slip"),
        "zip bomb": (zip_bytes({"a.dcm": first, "zeros.bin": b"\0" * (2 * 1024 * 1024)}), "zip bomb"),
        "non-DICOM": (zip_bytes({"a.txt": b"hello", "b.png": b"\x89PNG...."}), "no DICOM files"),
        "not a zip": (b"this is not a zip", "not a zip archive"),
        "MR": (zip_folder(mr), "modality MR is not CT"),
        "gap": (zip_folder(write_study(tmp / "gap", uid="gap", skip=(5, 6))), "gap in slice positions"),
    }


@pytest.mark.parametrize("case", ["zip slip", "zip bomb", "non-DICOM", "not a zip", "MR", "gap"])
def test_bad_study_zip_is_400(server, tmp_path, case):
    data, message = _bad_zip_cases(tmp_path)[case]
    status, body = post_json(server["infer"], v2_zip_request([data]))
    assert status == 400 and message in body["error"], body
    assert_alive(server)


@pytest.mark.parametrize("request_body,message", [
    ({"inputs": [{"name": "tensor", "shape": [1, 1, 4, 4, 4], "datatype": "FP32", "data": [0.0] * 64}]},
     "does not match"),
    ({"inputs": [{"name": "tensor", "shape": [1], "datatype": "INT32", "data": [1]}]}, "datatype INT32"),
    ({"inputs": [{"name": "study_zip", "shape": [1], "datatype": "BYTES", "data": ["@@not base64@@"]}]}, "not base64"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, "not an input of this model"),
    ({"instances": [[[1.0, 2.0]]]}, "does not match"),
])
def test_bad_request_is_400(server, request_body, message):
    status, body = post_json(server["infer"] if "inputs" in request_body else f"{server['base']}/v1/models/{NAME}:predict",
                         request_body)
    assert status == 400 and message in body["error"], body
    assert_alive(server)


def test_malformed_json_and_unknown_model(server):
    status, body = post_json(server["infer"], b'{"inputs": [ this is not json')
    assert status == 400 and "not JSON" in body["error"] and "this is" not in body["error"], body
    status, body = post_json(f"{server['base']}/v1/models/{NAME}:predict", b'{"instances": [')
    assert status == 400 and "Unrecognized request format" in body["error"], body
    status, body = post_json(f"{server['base']}/v2/models/nosuchmodel/infer", v2_zip_request([b"x"]))
    assert status == 404 and "nosuchmodel" in body["error"], body
    assert_alive(server)


def test_extract_zip_and_tensor_batch_unit(tmp_path):
    """The guards without a server: member count, absolute paths, shapes, NaN."""
    p = _serve_params(max_members=2, max_uncompressed_mb=1)
    with pytest.raises(ServeInputError, match="max_members"):
        extract_zip(zip_bytes({"a": b"1", "b": b"2", "c": b"3"}), tmp_path, p)
    with pytest.raises(ServeInputError, match="zip slip"):
        extract_zip(zip_bytes({"/etc/passwd": b"1"}), tmp_path, p)
    assert extract_zip(zip_bytes({"d/a": b"1", "e/a": b"2"}), tmp_path, p) == 2
    assert tensor_batch(np.zeros(SHAPE), SHAPE).shape == (1, *SHAPE)
    with pytest.raises(ServeInputError, match="NaN"):
        tensor_batch(np.full(SHAPE, np.nan), SHAPE)


def test_bundle_calibrator_and_threshold(server, tmp_path):
    """A calibrator beside the model changes the probability, not the decision (made on the score)."""
    params = load_params(server["tmp"] / "params.yaml")
    params["serve"]["threshold"] = 0.4
    import shutil

    model = shutil.copytree(server["tmp"] / "model", tmp_path / "model")
    (model / "calibrator.json").write_text(json.dumps({"kind": "temperature", "temperature": 2.0}))
    bundle = load_bundle(model, params)
    assert bundle.threshold == 0.4 and bundle.calibrator.kind == "temperature" and bundle.shape == SHAPE
    out = results(np.array([2.0, -1.0]), bundle, [{}, {}])
    assert out[0]["covid19_probability"] < out[0]["score"] and out[0]["decision"] == "covid19"
    assert out[1]["covid19_probability"] > out[1]["score"] and out[1]["decision"] == "other_pneumonia"


def _result(body: dict) -> dict:
    return json.loads({o["name"]: o for o in body["outputs"]}["result"]["data"][0])


def test_qc_flags_against_training_reference(server, tmp_path):
    """A normal study (noise 14 HU) is in range on every QC field; a very noisy one (150 HU) is flagged."""
    status, body = post_json(server["infer"], v2_zip_request([zip_folder(write_study(tmp_path / "a", uid="n", seed=7, noise=14.0, tissue=40.0))]))
    assert status == 200, body
    check = _result(body)["qc_check"]
    assert check["reference"].endswith("(7 scans, p1..p99, margin 0.1)") and "qc.csv" in check["reference"]
    assert check["all_in_range"] is True and check["out_of_range"] == [], check
    f = check["fields"]["noise_hu"]
    assert f["in_range"] is True and f["range"][0] <= f["value"] <= f["range"][1]
    status, body = post_json(server["infer"],
                         v2_zip_request([zip_folder(write_study(tmp_path / "b", uid="noisy", noise=150.0, seed=8, tissue=40.0))]))
    assert status == 200, body
    check = _result(body)["qc_check"]
    assert check["all_in_range"] is False and "noise_hu" in check["out_of_range"], check
    assert check["fields"]["noise_hu"]["in_range"] is False
    assert check["fields"]["noise_hu"]["value"] > check["fields"]["noise_hu"]["range"][1]


def _lung_phantom(lesions: bool = True, noise: float = 15.0, seed: int = 0):
    """Body (40 HU) with two ellipsoid lungs (-850 HU); a GGO sphere (-550 HU, r 8 px) inside the
    left lung and a consolidation sphere (30 HU, r 6 px) inside the right one. Returns the HU
    volume and the true GGO and consolidation fractions of the lung volume."""
    rng = np.random.default_rng(seed)
    d, n = 40, 128
    z, y, x = np.mgrid[:d, :n, :n].astype(float)
    vol = np.full((d, n, n), -1000.0)
    vol[((y - 64) / 50) ** 2 + ((x - 64) / 60) ** 2 <= 1] = 40.0
    lungs = np.zeros(vol.shape, bool)
    for cx in (38, 90):
        lungs |= ((z - 20) / 17) ** 2 + ((y - 62) / 32) ** 2 + ((x - cx) / 18) ** 2 <= 1
    vol[lungs] = -850.0
    ggo = (z - 20) ** 2 + (y - 55) ** 2 + (x - 38) ** 2 <= 8 ** 2
    cons = (z - 24) ** 2 + (y - 70) ** 2 + (x - 90) ** 2 <= 6 ** 2
    if lesions:
        vol[ggo], vol[cons] = -550.0, 30.0
    vol += rng.normal(0, noise, vol.shape)
    return vol, (ggo.sum() / lungs.sum() if lesions else 0.0), (cons.sum() / lungs.sum() if lesions else 0.0)


@pytest.mark.parametrize("lesions", [True, False])
def test_lesion_fractions_on_phantom(tmp_path, lesions):
    """Known lesion volumes, written as DICOM and read back through the serving path: the GGO and
    consolidation fractions agree with the truth within 0.002 absolute (truth ~0.026 and ~0.011)."""
    from covidnet.data.series import SeriesParams

    vol, ggo, cons = _lung_phantom(lesions)
    write_series(tmp_path / "ph", vol, (2.5, 2.5, 2.5), header=SeriesHeader(uid_entropy=f"ph{lesions}"))
    series = SeriesParams(**{**load_params(REPO / "params.yaml", profile="tiny")["series"], "workers": 1})
    pre = PreprocessParams(**{**PRE, "dtype": "float16", "body_hu": -500.0, "lung_hu": [-950.0, -400.0], "workers": 1})
    (study,) = studies_from_folder(tmp_path / "ph", series, pre, serve=_serve_params())
    got = study.info["lesions"]
    assert got["ggo_fraction"] == pytest.approx(ggo, abs=0.002)
    assert got["consolidation_fraction"] == pytest.approx(cons, abs=0.002)
    assert got["abnormal_fraction"] == pytest.approx(ggo + cons, abs=0.003)
    if lesions:
        assert 0.02 < ggo < 0.03 and 0.008 < cons < 0.015  # the phantom is what the docstring says


def test_lesion_fractions_params_and_empty():
    """HU ranges come from params; a volume without air in the body has no lung."""
    vol, ggo, _ = _lung_phantom(noise=0.0)
    wide = lung_abnormality(vol, -500.0, _serve_params(ggo_hu=(-900.0, -300.0)))
    assert wide["ggo_fraction"] > 0.9  # normal lung (-850) now counts as GGO
    assert lung_abnormality(np.full((4, 16, 16), 40.0), -500.0, _serve_params())["ggo_fraction"] is None


def test_s3_study_references(server, s3, tmp_path):
    """A zip object (V2 BYTES) and a prefix of DICOM files (V1 {"s3": ...}) from moto's S3 over HTTP;
    a missing object is a 400 naming the URI."""
    folder = write_study(tmp_path / "dicom", uid="s3study")
    s3["client"].put_object(Bucket="studies", Key="zips/study.zip", Body=zip_folder(folder))
    for f in sorted(folder.iterdir()):
        s3["client"].put_object(Bucket="studies", Key=f"dicom/s3study/{f.name}", Body=f.read_bytes())
    req = {"inputs": [{"name": "study_ref", "shape": [1], "datatype": "BYTES", "data": ["s3://studies/zips/study.zip"]}]}
    status, body = post_json(server["infer"], req)
    assert status == 200, body
    uid = _result(body)["series_uid"]
    assert uid.startswith("1.")
    status, body = post_json(f"{server['base']}/v1/models/{NAME}:predict", {"instances": [{"s3": "s3://studies/dicom/s3study"}]})
    assert status == 200, body
    assert body["predictions"][0]["series_uid"] == uid and body["predictions"][0]["lesions"] is not None
    (answer,) = send_study("s3://studies/dicom/s3study", server["base"], NAME)  # covidnet predict s3://...
    assert answer["series_uid"] == uid
    for uri in ("s3://studies/zips/missing.zip", "s3://studies/nothing/here", "s3://nosuchbucket/a.zip"):
        status, body = post_json(server["infer"], {"inputs": [{"name": "study_ref", "shape": [1], "datatype": "BYTES",
                                                           "data": [uri]}]})
        assert status == 400 and uri in body["error"], (uri, body)
    assert_alive(server)


def test_zz_server_log_holds_no_identifier(server):
    """The module's last test: no PatientID, PatientName, AccessionNumber or UID of any study its
    tests wrote (sent as zips, base64, S3 objects, good or refused) is in the server's log."""
    text = server["log"].read_text(errors="replace")
    ids = identifiers(SENT)
    assert "SYNTH-0000" in ids and any(i.count(".") > 5 for i in ids)
    leaked = sorted(i for i in ids if i in text)
    assert not leaked, leaked
    assert "refused [study.no_usable_series]" in text and "refused [zip.slip]" in text
