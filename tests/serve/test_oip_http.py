"""Any Open Inference Protocol client: the real server over HTTP and gRPC, a third-party client, every encoding.

`covidnet serve` (gRPC on) serves a tiny trained model; the requests are built from the
model's metadata by tritonclient (HTTP and gRPC, default options, in its own process:
tests/support/tritonclient_flow.py), or by hand in each of the protocol's three encodings
(tests/support/oip.py) to put the same good and broken inputs through JSON, the binary tensor
extension and gRPC raw contents. Studies are real DICOM files
naming a patient; the module's last test greps the server's whole log for every identifier
they hold. S3 references are fetched from moto's S3 server on loopback.
"""

import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pydicom
import pytest

from covidnet.serve.client import zip_folder
from support import REPO
from support.oip import (
    ENCODINGS,
    In,
    grpc_outcome,
    grpc_request,
    grpc_stub,
    identifiers,
    post,
    rest_json,
    rest_outcome,
    send,
)
from support.server import NAME, free_port, moto_s3, running_server, serve_params, tiny_model, write_study, zip_bytes
from support.train import SHAPE

pytestmark = pytest.mark.slow

SENT = []  # every folder this module's tests wrote (and so may have sent): the last test greps the log for them
MAX_STUDIES = 4


@pytest.fixture(autouse=True)
def _record(request):
    if "tmp_path" in request.fixturenames:
        SENT.append(request.getfixturevalue("tmp_path"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import grpc

    tmp = tmp_path_factory.mktemp("oip")
    SENT.append(tmp)
    model = tiny_model(tmp)
    params = serve_params(tmp, max_uncompressed_mb=1, max_body_mb=2, max_studies=MAX_STUDIES)
    study = write_study(tmp / "dicom", uid="oip-good", seed=4, patient_id="PAT-OIP-0417", accession_number="ACC-0417")
    mr = write_study(tmp / "dicom", uid="oip-mr", seed=5, patient_id="PAT-OIP-0533", accession_number="ACC-0533")
    for f in mr.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    grpc_port = free_port()
    with moto_s3() as s3:
        s3["client"].put_object(Bucket="studies", Key="oip/study.zip", Body=zip_folder(study))
        (tmp / "study.zip").write_bytes(zip_folder(study))
        with running_server(["--model-dir", str(model), "--params", str(params), "--grpc-port", str(grpc_port)], tmp,
                            {**os.environ, **s3["env"]}, tmp / "server.log") as base:
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            grpc.channel_ready_future(channel).result(timeout=60)
            try:
                yield {"base": base, "infer": f"{base}/v2/models/{NAME}/infer", "name": NAME, "log": tmp / "server.log",
                       "grpc": f"127.0.0.1:{grpc_port}", "grpc_stub": grpc_stub(channel), "zip": zip_folder(study),
                       "mr_zip": zip_folder(mr), "zip_path": tmp / "study.zip"}
            finally:
                channel.close()


def _volume(seed: int = 0) -> np.ndarray:
    """(1, 1, D, C, C) values that FP16 holds exactly, so FP32 and FP16 requests are the same tensor."""
    return np.random.default_rng(seed).uniform(0, 1, (1, *SHAPE)).astype(np.float16).astype(np.float32)


# --- what the model says about itself ---------------------------------------------------------------------------

def test_metadata_declares_every_input_and_output(server):
    status, _, body = post(f"{server['base']}/v2/models/{NAME}", b"", {})  # POST: not a route
    assert status in (404, 405)
    with urllib.request.urlopen(f"{server['base']}/v2/models/{NAME}", timeout=10) as r:
        meta = json.loads(r.read())
    shape = [-1, *SHAPE]
    assert meta["name"] == NAME and len(meta["versions"]) == 1
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "study_zip": ("BYTES", [-1]), "study_ref": ("BYTES", [-1]), "tensor": ("FP32", shape),
        "tensor_fp16": ("FP16", shape)}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "covid19_probability": ("FP32", [-1]), "decision": ("BYTES", [-1]), "result": ("BYTES", [-1])}
    version = meta["versions"][0]
    with urllib.request.urlopen(f"{server['base']}/v2/models/{NAME}/versions/{version}", timeout=10) as r:
        assert json.loads(r.read()) == meta
    with urllib.request.urlopen(f"{server['base']}/v2/models/{NAME}/versions/{version}/ready", timeout=10) as r:
        assert json.loads(r.read())["ready"] is True
    for path in (f"versions/not-{version}", f"versions/not-{version}/ready"):
        try:
            urllib.request.urlopen(f"{server['base']}/v2/models/{NAME}/{path}", timeout=10)
            raise AssertionError(path)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and "serves version" in json.loads(exc.read())["error"]
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    g = server["grpc_stub"].ModelMetadata(pb.ModelMetadataRequest(name=NAME), timeout=30)
    assert [(i.name, i.datatype, list(i.shape)) for i in g.inputs] == [
        (i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]]
    assert [(o.name, o.datatype, list(o.shape)) for o in g.outputs] == [
        (o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]]


# --- a third-party client, default options, the request built from the metadata alone ---------------------------

def test_tritonclient_builds_requests_from_metadata_and_gets_answers(server):
    """tritonclient, HTTP (binary default, and JSON mode) and gRPC (raw contents default), in its own process:
    the metadata read, the requests built from it alone, every declared output read back."""
    r = subprocess.run([sys.executable, str(REPO / "tests" / "support" / "tritonclient_flow.py"), "--http",
                        server["base"].removeprefix("http://"), "--grpc", server["grpc"], "--zip",
                        str(server["zip_path"]), "--model", NAME], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads(r.stdout)
    assert set(runs) == {"http", "http-json", "grpc"}
    for protocol, run in runs.items():
        assert run["ready"] is True
        assert [o["name"] for o in run["metadata"]["outputs"]] == ["covid19_probability", "decision", "result"]
        for kind in ("tensor", "study"):
            got = run[kind]
            assert all(v["shape"] == [1] for v in got.values()), (protocol, kind, got)
            doc = json.loads(got["result"]["values"][0])
            assert got["covid19_probability"]["values"][0] == pytest.approx(doc["covid19_probability"], abs=1e-6)
            assert got["decision"]["values"][0] == doc["decision"]
            if kind == "study":
                assert doc["series_uid"] and doc["selection"].startswith("most slices (12)"), (protocol, doc)
            else:
                assert doc["series_uid"] is None
    assert runs["http"]["metadata"]["by_version_equal"] is True
    probs = {p: (run["tensor"]["covid19_probability"]["values"][0], run["study"]["covid19_probability"]["values"][0])
             for p, run in runs.items()}
    assert len({tuple(round(x, 6) for x in v) for v in probs.values()}) == 1, probs


# --- the same inputs through every encoding -----------------------------------------------------------------------

GOOD = {
    "tensor FP32": lambda s: [In("tensor", "FP32", [1, *SHAPE], _volume())],
    "tensor FP16": lambda s: [In("tensor_fp16", "FP16", [1, *SHAPE], _volume().astype(np.float16))],
    "study zip": lambda s: [In("study_zip", "BYTES", [1], [s["zip"]])],
    "s3 reference": lambda s: [In("study_ref", "BYTES", [1], [b"s3://studies/oip/study.zip"])],
}


@pytest.mark.parametrize("kind", list(GOOD))
def test_every_encoding_gives_the_same_answer(server, kind):
    encodings = (*ENCODINGS, *(("grpc_typed",) if "FP16" not in kind else ()))
    outcomes = {e: send(e, GOOD[kind](server), server) for e in encodings}
    assert all(o.ok for o in outcomes.values()), {e: (o.status, o.error) for e, o in outcomes.items()}
    probs = {e: o.outputs["covid19_probability"][0] for e, o in outcomes.items()}
    assert max(probs.values()) - min(probs.values()) < 1e-6, probs
    docs = {e: json.loads(o.outputs["result"][0]) for e, o in outcomes.items()}
    assert len({(d["series_uid"], d["decision"]) for d in docs.values()}) == 1
    if kind.startswith("tensor"):
        fp32 = send("json", GOOD["tensor FP32"](server), server).outputs["covid19_probability"][0]
        assert probs["json"] == pytest.approx(fp32, abs=1e-6)  # FP16 and FP32 of the same values


# case -> (the inputs, what the refusal says), each sent in every encoding
BAD = {
    "shape does not fit the data": (lambda s: [In("tensor", "FP32", [1, *SHAPE], _volume().ravel()[:10])], "takes"),
    "batch of a billion": (lambda s: [In("tensor", "FP32", [1_000_000_000, *SHAPE], _volume())], "serve.max_studies"),
    "a billion studies": (lambda s: [In("study_zip", "BYTES", [1_000_000_000], [s["zip"]])], "serve.max_studies"),
    "flat shape": (lambda s: [In("tensor", "FP32", [int(np.prod(SHAPE))], _volume())], "does not match the model's"),
    "no batch": (lambda s: [In("study_zip", "BYTES", [0], [])], "B >= 1"),
    "negative batch": (lambda s: [In("study_zip", "BYTES", [-1], [s["zip"]])], "B >= 1"),
    "datatype": (lambda s: [In("tensor", "INT32", [1, *SHAPE], np.ones((1, *SHAPE), np.int32))], "expected FP32"),
    "unknown input": (lambda s: [In("image", "FP32", [1, *SHAPE], _volume())], "not an input of this model"),
    "twice": (lambda s: [In("tensor", "FP32", [1, *SHAPE], _volume())] * 2, "given twice"),
    "NaN": (lambda s: [In("tensor", "FP32", [1, *SHAPE], np.full((1, *SHAPE), np.nan, np.float32))], "NaN"),
    "more studies than allowed": (lambda s: [In("study_zip", "BYTES", [3], [s["zip"]] * 3),
                                             In("tensor", "FP32", [2, *SHAPE], np.concatenate([_volume()] * 2))],
                                  "serve.max_studies"),
    "not a zip": (lambda s: [In("study_zip", "BYTES", [1], [b"\x00\xffPatientName garbage"])], "not a zip"),
    "zip slip": (lambda s: [In("study_zip", "BYTES", [1], [zip_bytes({"../../evil.dcm": b"x"})])], "zip slip"),
    "zip bomb": (lambda s: [In("study_zip", "BYTES", [1], [zip_bytes({"zeros.bin": b"\0" * (2 << 20)})])], "zip bomb"),
    "no DICOM": (lambda s: [In("study_zip", "BYTES", [1], [zip_bytes({"a.txt": b"hello"})])], "no DICOM files"),
    "MR study": (lambda s: [In("study_zip", "BYTES", [1], [s["mr_zip"]])], "modality MR is not CT"),
    "not a reference": (lambda s: [In("study_ref", "BYTES", [1], [b"s3:/nope"])], "s3://bucket/key reference"),
    "zip as reference": (lambda s: [In("study_ref", "BYTES", [1], [s["zip"]])], "s3://bucket/key reference"),
    "missing object": (lambda s: [In("study_ref", "BYTES", [1], [b"s3://studies/missing.zip"])], "not found"),
    "missing bucket": (lambda s: [In("study_ref", "BYTES", [1], [b"s3://nosuchbucket/a.zip"])], "not found"),
}
BINARY_ONLY = {  # raw bytes that JSON cannot say
    "FP16 bytes not whole values": (lambda s: [In("tensor_fp16", "FP16", [1, *SHAPE], b"\0" * 9215)], "bytes"),
    "BYTES length past the end": (lambda s: [In("study_zip", "BYTES", [1], struct_prefix(100) + b"PK\x03\x04")],
                                  "declares 100 bytes"),
    "BYTES more elements than the shape": (lambda s: [In("study_ref", "BYTES", [1], [b"s3://a/b", b"s3://a/c"])],
                                           "takes 1"),
}


def struct_prefix(n: int) -> bytes:
    return n.to_bytes(4, "little")


def _assert_refused(outcome, message: str, inputs: list[In]) -> None:
    assert not outcome.ok and message in outcome.error, (outcome.status, outcome.error)
    assert outcome.status in ("400", "413", "INVALID_ARGUMENT"), (outcome.status, outcome.error)
    assert len(outcome.error) < 2000
    for inp in inputs:  # no request bytes come back (a reference's URI is named on purpose)
        if inp.datatype == "BYTES" and inp.name != "study_ref" and isinstance(inp.data, list):
            for e in inp.data:
                assert base64.b64encode(e[:24]).decode() not in outcome.error and "garbage" not in outcome.error


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("case", list(BAD))
def test_malformed_requests_are_4xx_in_every_encoding(server, case, encoding):
    build, message = BAD[case]
    inputs = build(server)
    _assert_refused(send(encoding, inputs, server), message, inputs)


@pytest.mark.parametrize("encoding", ["binary", "grpc"])
@pytest.mark.parametrize("case", list(BINARY_ONLY))
def test_malformed_binary_data_is_4xx(server, case, encoding):
    build, message = BINARY_ONLY[case]
    inputs = build(server)
    _assert_refused(send(encoding, inputs, server), message, inputs)


@pytest.mark.parametrize("body,headers,message", [
    (b"\x89PNG not json", {}, "not JSON"),
    (b'["inputs"]', {"Content-Type": "application/json"}, "non-empty list 'inputs'"),
    (b'{"inputs": []}', {}, "non-empty list 'inputs'"),
    (b'{"inputs": [{"name": "tensor"}]}', {}, "'datatype' (a string) and 'shape' are required"),
    (b'{"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1]}]}', {}, "neither 'data'"),
    (b'{"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1, 1, 8, 24, 24], "data": ["x"]}]}', {},
     "numbers only"),
    (b'{"inputs": [{"name": "tensor", "datatype": "FP32", "shape": ["a"], "data": [1]}]}', {}, "whole numbers"),
    (b'{"inputs": [{"name": "study_zip", "datatype": "BYTES", "shape": [1], "data": [[1, 2]]}]}', {}, "list of strings"),
    (b'{"inputs": [{"name": "study_ref", "datatype": "BYTES", "shape": [1], "data": ["s3://a/b"]}], '
     b'"outputs": [{"name": "saliency"}]}', {}, "not an output of this model"),
    (b'{"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}',
     {"Inference-Header-Content-Length": "999"}, "must be in 1.."),
    (b'{"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}',
     {}, "without the Inference-Header-Content-Length"),
    (b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}, "not a whole number"),
])
def test_malformed_rest_bodies_are_400(server, body, headers, message):
    outcome = rest_outcome(*post(server["infer"], body, headers))
    assert outcome.status == "400" and message in outcome.error, (outcome.status, outcome.error)
    assert "PNG" not in outcome.error


@pytest.mark.parametrize("body,content_type,message", [
    (b'{"instances": "x"}', "application/json", "must be a list"),
    (b'{"instances": [null]}', "application/json", "does not match"),
    (b'{"instances": [[["a"]]]}', "application/json", "not a numeric array"),
    (b'{"instances": [{"b64": 5}]}', "application/json", "'b64' must be a string"),
    (b'{"instances": [{"other": 1}]}', "application/json", "needs 'b64'"),
    (b'{"instances": ["PK\\u0003\\u0004 not base64"]}', "application/json", "not base64"),
    (b'[1, 2]', "application/json", "expected V2 'inputs'"),
    (b'{"instances": [', "application/json", "Unrecognized request format"),
    (b"PK\x03\x04 truncated", "application/zip", "not a zip archive"),
    (b"\x00\x01", "text/plain", "Content-Type 'text/plain'"),
])
def test_malformed_v1_requests_are_400(server, body, content_type, message):
    outcome = rest_outcome(*post(f"{server['base']}/v1/models/{NAME}:predict", body, {"Content-Type": content_type}))
    assert outcome.status == "400" and message in outcome.error, (outcome.status, outcome.error)


def test_malformed_binary_framing_is_400(server):
    head = json.dumps({"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [1, *SHAPE],
                                   "parameters": {"binary_data_size": 4 * int(np.prod(SHAPE))}}]}).encode()
    raw = _volume().tobytes()
    for body, message in ((head + raw[:100], "runs past the body's end"), (head + raw + b"xyz", "3 bytes after")):
        outcome = rest_outcome(*post(server["infer"], body, {"Inference-Header-Content-Length": str(len(head))}))
        assert outcome.status == "400" and message in outcome.error, outcome


def test_malformed_grpc_requests_are_invalid_argument(server):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    req = grpc_request([In("tensor", "FP32", [1, *SHAPE], _volume())], NAME)
    req.raw_input_contents.append(b"extra")  # two raw contents for one input: KServe's own check
    assert grpc_outcome(server["grpc_stub"], req).status == "INVALID_ARGUMENT"
    odd = pb.ModelInferRequest(model_name=NAME)
    odd.inputs.add(name="tensor", datatype="COMPLEX", shape=[1])  # no typed contents of that datatype
    assert grpc_outcome(server["grpc_stub"], odd).status == "INVALID_ARGUMENT"
    other = grpc_request([In("tensor", "FP32", [1, *SHAPE], _volume())], "nosuchmodel")
    assert grpc_outcome(server["grpc_stub"], other).status == "NOT_FOUND"


def test_binary_outputs_on_request(server):
    """binary_data_output (tritonclient's default without requested outputs) and per-output binary_data."""
    inputs = GOOD["tensor FP32"](server)
    body, headers = rest_json(inputs, parameters={"binary_data_output": True})
    status, h, raw = post(server["infer"], body, headers)
    assert status == 200 and "inference-header-content-length" in {k.lower() for k in h}
    out = rest_outcome(status, h, raw).outputs
    body, headers = rest_json(inputs, outputs=[{"name": "result", "parameters": {"binary_data": False}}])
    got = rest_outcome(*post(server["infer"], body, headers)).outputs
    assert list(got) == ["result"] and json.loads(got["result"][0])["covid19_probability"] == pytest.approx(
        out["covid19_probability"][0], abs=1e-6)


# --- explanations on request -------------------------------------------------------------------------------------

def test_explain_returns_the_map_and_a_png_on_request(server):
    """parameters.explain: true adds the (D, H, W) map as a compact array; "png" also a montage; absent, neither."""
    from covidnet.serve.explain import decode_map

    inputs = [In("study_zip", "BYTES", [1], [server["zip"]])]
    plain = rest_outcome(*post(server["infer"], *rest_json(inputs)))
    assert plain.ok and "saliency" not in json.loads(plain.outputs["result"][0])
    body, headers = rest_json(inputs, parameters={"explain": True})
    got = rest_outcome(*post(server["infer"], body, headers))
    assert got.ok, got.error
    result = json.loads(got.outputs["result"][0])
    encoded = result["saliency"]
    assert encoded["shape"] == list(SHAPE[1:]) and encoded["dtype"] == "uint8" and encoded["encoding"] == "zlib+base64"
    saliency = decode_map(encoded)
    assert saliency.shape == SHAPE[1:] and (saliency >= 0).all() and saliency.max() == pytest.approx(encoded["max"])
    assert len(encoded["data"]) < 4 * saliency.size  # compact: not a JSON list of floats
    assert result["covid19_probability"] == pytest.approx(json.loads(plain.outputs["result"][0])["covid19_probability"])
    assert "saliency_png" not in result
    body, headers = rest_json(inputs, parameters={"explain": "png"})
    result = json.loads(rest_outcome(*post(server["infer"], body, headers)).outputs["result"][0])
    assert base64.b64decode(result["saliency_png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.allclose(decode_map(result["saliency"]), saliency)  # the same map, deterministic
    body, headers = rest_json(inputs, parameters={"explain": "heatmap"})
    refused = rest_outcome(*post(server["infer"], body, headers))
    assert refused.status == "400" and "parameters.explain: 'heatmap'" in refused.error


# --- the last test of the module: the server's whole log ----------------------------------------------------------

def test_zz_server_log_holds_no_identifier(server):
    """Every PatientID, PatientName, AccessionNumber and UID of every study this module wrote (and
    sent, in every encoding, good and refused) is absent from the server's log; no request bytes
    either. The refusals are there, with their rule and hashed study ids."""
    text = server["log"].read_text(errors="replace")
    ids = identifiers(SENT)
    assert any(i.startswith("PAT-OIP-") for i in ids) and any(i.count(".") > 5 for i in ids)
    leaked = sorted(i for i in ids if i in text)
    assert not leaked, leaked
    assert "garbage" not in text and "PNG" not in text
    assert not re.search(r"[A-Za-z0-9+/]{120,}", text), "a long base64 run in the log"
    assert re.search(r"refused \[zip\.slip\]: input 'study_zip'\[0\]: unsafe member path '<member:[0-9a-f]{16}>'",
                     text), text[-3000:]
    assert re.search(r"refused \[study\.no_usable_series\]: .*study <study:[0-9a-f]{16}>", text)
    assert re.search(r"answered: <study:[0-9a-f]{16}> (covid19|other_pneumonia)", text)
