"""Serving: the real KServe ModelServer in a subprocess, called over real HTTP on loopback.

A tiny model is trained in a fixture (as tests/test_train.py does); studies are real DICOM
files written by :func:`covidnet.synth.write_series`, zipped and posted as the clients do.
"""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from covidnet.params import load_params
from covidnet.serve import (ServeInputError, ServeParams, extract_zip, load_bundle, results, tensor_batch,
                            v2_zip_request, zip_folder)
from covidnet.synth import SeriesHeader, write_series

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import PRE, SHAPE, TINY, _cohort, _params, _paths  # noqa: E402

pytestmark = pytest.mark.slow
NAME = "covidnet"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _study(root: Path, uid: str = "s1", skip=(), **header) -> Path:
    rng = np.random.default_rng(0)
    vol = rng.normal(-700, 80, size=(12, 32, 32))
    vol[:, 4:28, 4:28] += 600
    write_series(root / uid, vol, (8.0, 10.0, 10.0), header=SeriesHeader(uid_entropy=uid, **header),
                 skip_slices=skip)
    return root / uid


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _post(url: str, body, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A trained tiny model folder and `covidnet serve` on a free loopback port."""
    from covidnet.train import train_model

    tmp = tmp_path_factory.mktemp("serve")
    index = _cohort(tmp / "pre", n_train=4, n_val=2)
    train_model(index, _paths(tmp), TINY, _params(epochs=1, batch_size=2),
                {**PRE, "dtype": "float16", "body_hu": -500.0, "lung_hu": [-950.0, -400.0], "workers": 1},
                progress=False)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["serve"]["max_uncompressed_mb"] = 1
    params["paths"]["calibrator"] = str(tmp / "calibrator.json")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    port = _free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "covidnet.cli", "serve", "--port", str(port), "--model-dir",
                             str(tmp / "model"), "--params", str(tmp / "params.yaml")],
                            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/models/{NAME}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not become ready:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"base": base, "infer": f"{base}/v2/models/{NAME}/infer", "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _alive(server) -> None:
    with urllib.request.urlopen(f"{server['base']}/v2/health/ready", timeout=5) as r:
        assert r.status == 200


def test_v2_study_zip(server, tmp_path):
    folder = _study(tmp_path / "dicom")
    (folder / "README.txt").write_text("not DICOM; skipped")
    status, body = _post(server["infer"], v2_zip_request([zip_folder(folder)]))
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    assert 0.0 <= out["covid19_probability"]["data"][0] <= 1.0
    result = json.loads(out["result"]["data"][0])
    assert result["decision"] in ("covid19", "other_pneumonia") and out["decision"]["data"][0] == result["decision"]
    assert result["series_uid"].startswith("1.") and result["selection"].startswith("most slices (12)")
    assert result["model"]["version"].startswith("sha256:") and result["model"]["calibrator"] == "none"
    assert result["qc"]["n_slices"] == 12 and "lung_fraction" in result["qc"]
    assert result["threshold"] == 0.5


def test_cli_predict_and_v1(server, tmp_path):
    folder = _study(tmp_path / "dicom", uid="s2")
    r = subprocess.run([sys.executable, "-m", "covidnet.cli", "predict", str(folder), "--url", server["infer"]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"][0]["name"] == "covid19_probability"
    # V1: a zip (base64, TF-serving style {"b64": ...}) and a tensor answered together
    z = base64.b64encode(zip_folder(folder)).decode()
    status, body = _post(f"{server['base']}/v1/models/{NAME}:predict",
                         {"instances": [{"b64": z}, np.full(SHAPE, 0.3).tolist()]})
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 2 and preds[0]["series_uid"] and preds[1]["series_uid"] is None
    assert all(0.0 <= p["covid19_probability"] <= 1.0 for p in preds)


def test_v2_tensor(server):
    x = np.random.default_rng(1).uniform(0, 1, size=(2, *SHAPE)).astype(np.float32)
    req = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, body = _post(server["infer"], req)
    assert status == 200, body
    probs = body["outputs"][0]["data"]
    assert len(probs) == 2 and all(0.0 <= p <= 1.0 for p in probs)


def _bad_zip_cases(tmp: Path) -> dict:
    good = _study(tmp / "good", uid="g")
    first = sorted(good.iterdir())[0].read_bytes()
    mr = _study(tmp / "mr", uid="mr")
    for f in mr.iterdir():  # rewrite Modality
        import pydicom

        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    return {
        "zip slip": (_zip({"../../evil.dcm": first}), "zip slip"),
        "zip bomb": (_zip({"a.dcm": first, "zeros.bin": b"\0" * (2 * 1024 * 1024)}), "zip bomb"),
        "non-DICOM": (_zip({"a.txt": b"hello", "b.png": b"\x89PNG...."}), "no DICOM files"),
        "not a zip": (b"this is not a zip", "not a zip archive"),
        "MR": (zip_folder(mr), "modality MR is not CT"),
        "gap": (zip_folder(_study(tmp / "gap", uid="gap", skip=(5, 6))), "gap in slice positions"),
    }


@pytest.mark.parametrize("case", ["zip slip", "zip bomb", "non-DICOM", "not a zip", "MR", "gap"])
def test_bad_study_zip_is_400(server, tmp_path, case):
    data, message = _bad_zip_cases(tmp_path)[case]
    status, body = _post(server["infer"], v2_zip_request([data]))
    assert status == 400 and message in body["error"], body
    _alive(server)


@pytest.mark.parametrize("request_body,message", [
    ({"inputs": [{"name": "x", "shape": [1, 1, 4, 4, 4], "datatype": "FP32", "data": [0.0] * 64}]}, "does not match"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]}, "datatype INT32"),
    ({"inputs": [{"name": "z", "shape": [1], "datatype": "BYTES", "data": ["@@not base64@@"]}]}, "not base64"),
    ({"instances": [[[1.0, 2.0]]]}, "does not match"),
])
def test_bad_request_is_400(server, request_body, message):
    status, body = _post(server["infer"] if "inputs" in request_body else f"{server['base']}/v1/models/{NAME}:predict",
                         request_body)
    assert status == 400 and message in body["error"], body
    _alive(server)


def test_malformed_json_and_unknown_model(server):
    status, body = _post(server["infer"], b'{"inputs": [ this is not json')
    assert status == 422 and "JSON decode error" in json.dumps(body), body
    status, body = _post(f"{server['base']}/v1/models/{NAME}:predict", b'{"instances": [')
    assert status == 400 and "Unrecognized request format" in body["error"], body
    status, body = _post(f"{server['base']}/v2/models/nosuchmodel/infer", v2_zip_request([b"x"]))
    assert status == 404 and "nosuchmodel" in body["error"], body
    _alive(server)


def test_extract_zip_and_tensor_batch_unit(tmp_path):
    """The guards without a server: member count, absolute paths, shapes, NaN."""
    p = ServeParams(max_members=2, max_uncompressed_mb=1)
    with pytest.raises(ServeInputError, match="max_members"):
        extract_zip(_zip({"a": b"1", "b": b"2", "c": b"3"}), tmp_path, p)
    with pytest.raises(ServeInputError, match="zip slip"):
        extract_zip(_zip({"/etc/passwd": b"1"}), tmp_path, p)
    assert extract_zip(_zip({"d/a": b"1", "e/a": b"2"}), tmp_path, p) == 2
    assert tensor_batch(np.zeros(SHAPE), SHAPE).shape == (1, *SHAPE)
    with pytest.raises(ServeInputError, match="NaN"):
        tensor_batch(np.full(SHAPE, np.nan), SHAPE)


def test_bundle_calibrator_and_threshold(server, tmp_path):
    """A calibrator beside the model changes the probability, not the decision (made on the score)."""
    params = load_params(server["tmp"] / "params.yaml")
    params["serve"]["threshold"] = 0.4
    model = tmp_path / "model"
    model.mkdir()
    for f in (server["tmp"] / "model").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    (model / "calibrator.json").write_text(json.dumps({"kind": "temperature", "temperature": 2.0}))
    bundle = load_bundle(model, params)
    assert bundle.threshold == 0.4 and bundle.calibrator.kind == "temperature" and bundle.shape == SHAPE
    out = results(np.array([2.0, -1.0]), bundle, [{}, {}])
    assert out[0]["covid19_probability"] < out[0]["score"] and out[0]["decision"] == "covid19"
    assert out[1]["covid19_probability"] > out[1]["score"] and out[1]["decision"] == "other_pneumonia"
