"""One decoder for every encoding: the same inputs as JSON, binary extension, gRPC raw and typed contents, in process.

Each request is built as a client sends it (tests/support/oip.py), then taken apart the way the
server does: the REST bodies by :func:`covidnet.serve.oip.parse_rest`, the gRPC message by
KServe's own ``InferRequest.from_grpc`` and :func:`covidnet.serve.oip.from_infer_request`. The studies are real DICOM
files; S3 is a stand-in client holding one zip object (the real S3 path, moto over HTTP, is
tests/serve/test_oip_http.py's).
"""

import numpy as np
import pytest

from covidnet.serve.client import zip_folder
from covidnet.serve.oip import input_specs, model_metadata, parse_rest
from covidnet.serve.request import request_studies
from covidnet.serve.study import ServeInputError
from support.oip import In, grpc_request, rest_binary, rest_json, serve_bundle
from support.server import write_study
from support.train import SHAPE


def _decoded(encoding: str, inputs: list[In]):
    """What the server's model gets for ``inputs`` sent in ``encoding``."""
    if encoding in ("json", "binary"):
        body, headers = (rest_json if encoding == "json" else rest_binary)(inputs)
        return parse_rest(body, headers.get("Inference-Header-Content-Length"))
    from kserve.protocol.infer_type import InferRequest

    from covidnet.serve.oip import from_infer_request

    return from_infer_request(InferRequest.from_grpc(grpc_request(inputs, "covidnet", raw=encoding == "grpc")))


def _outcome(encoding: str, inputs: list[In], bundle) -> tuple:
    try:
        studies = request_studies(_decoded(encoding, inputs), bundle)
    except ServeInputError as exc:
        return ("refused", exc.rule)
    return ("ok", tuple(s.info.get("series_uid") for s in studies),
            tuple(float(s.tensor.astype(np.float64).sum()) for s in studies))


class _S3:
    """boto3's calls that :mod:`covidnet.serve.s3` makes, for one bucket of zip objects in memory."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def _get(self, Bucket, Key):
        from botocore.exceptions import ClientError

        if Bucket != "studies" or Key not in self.objects:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
        return self.objects[Key]

    def head_object(self, Bucket, Key):
        return {"ContentLength": len(self._get(Bucket, Key))}

    def get_object(self, Bucket, Key):
        import io

        return {"Body": io.BytesIO(self._get(Bucket, Key))}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    import pydicom

    tmp = tmp_path_factory.mktemp("oip-unit")
    good = zip_folder(write_study(tmp / "good", uid="u-good", seed=1))
    mr = write_study(tmp / "mr", uid="u-mr", seed=2)
    for f in mr.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    return {"zip": good, "mr": zip_folder(mr)}


def _vol(seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (1, *SHAPE)).astype(np.float16).astype(np.float32)


CASES = {  # name -> inputs; every encoding must give the same outcome
    "tensor FP32": lambda z: [In("tensor", "FP32", [1, *SHAPE], _vol())],
    "tensor FP16": lambda z: [In("tensor_fp16", "FP16", [1, *SHAPE], _vol().astype(np.float16))],
    "tensor without batch": lambda z: [In("tensor", "FP32", list(SHAPE), _vol())],
    "two tensors": lambda z: [In("tensor", "FP32", [2, *SHAPE], np.concatenate([_vol(1), _vol(2)]))],
    "study zip": lambda z: [In("study_zip", "BYTES", [1], [z["zip"]])],
    "s3 zip": lambda z: [In("study_ref", "BYTES", [1], [b"s3://studies/a/study.zip"])],
    "zip and tensor": lambda z: [In("study_zip", "BYTES", [1], [z["zip"]]), In("tensor", "FP32", [1, *SHAPE], _vol())],
    "s3 missing": lambda z: [In("study_ref", "BYTES", [1], [b"s3://studies/none.zip"])],
    "s3 malformed": lambda z: [In("study_ref", "BYTES", [1], [b"s3:/x"])],
    "shape and data disagree": lambda z: [In("tensor", "FP32", [1, *SHAPE], _vol().ravel()[:7])],
    "billion": lambda z: [In("study_zip", "BYTES", [10**9], [z["zip"]])],
    "wrong datatype": lambda z: [In("tensor", "INT32", [1, *SHAPE], np.ones((1, *SHAPE), np.int32))],
    "FP32 under the FP16 name": lambda z: [In("tensor_fp16", "FP32", [1, *SHAPE], _vol())],
    "unknown input": lambda z: [In("volume", "FP32", [1, *SHAPE], _vol())],
    "NaN": lambda z: [In("tensor", "FP32", [1, *SHAPE], np.full((1, *SHAPE), np.nan, np.float32))],
    "too many": lambda z: [In("study_zip", "BYTES", [5], [z["zip"]] * 5)],
    "MR": lambda z: [In("study_zip", "BYTES", [1], [z["mr"]])],
    "zip bytes as reference": lambda z: [In("study_ref", "BYTES", [1], [z["zip"]])],
    "two elements for shape [1]": lambda z: [In("study_zip", "BYTES", [1], [z["zip"], z["zip"]])],
}
EXPECTED = {"s3 missing": "ref.not_found", "s3 malformed": "ref.format", "shape and data disagree": "input.size",
            "billion": "request.max_studies", "wrong datatype": "input.datatype",
            "FP32 under the FP16 name": "input.datatype", "unknown input": "input.name", "NaN": "tensor.finite",
            "too many": "request.max_studies", "MR": "study.no_usable_series", "zip bytes as reference": "ref.format",
            "two elements for shape [1]": "input.size"}


@pytest.mark.parametrize("case", list(CASES))
def test_every_encoding_accepts_and_refuses_alike(case, studies, monkeypatch):
    monkeypatch.setattr("covidnet.serve.s3._client", lambda: _S3({"a/study.zip": studies["zip"]}))
    bundle = serve_bundle()
    inputs = CASES[case](studies)
    encodings = ["json", "binary", "grpc"]
    if all(i.datatype != "FP16" for i in inputs):
        encodings.append("grpc_typed")  # gRPC has no typed contents of FP16
    outcomes = {e: _outcome(e, inputs, bundle) for e in encodings}
    assert len(set(outcomes.values())) == 1, outcomes
    got = outcomes["json"]
    if case in EXPECTED:
        assert got == ("refused", EXPECTED[case])
    else:
        assert got[0] == "ok", got


def test_metadata_from_the_card_shape():
    meta = model_metadata("covidnet", "7", SHAPE)
    assert meta["versions"] == ["7"] and [i["name"] for i in meta["inputs"]] == [s.name for s in input_specs(SHAPE)]
    assert {i["name"]: i["shape"] for i in meta["inputs"]}["tensor"] == [-1, *SHAPE]
    assert [o["name"] for o in meta["outputs"]] == ["covid19_probability", "decision", "result"]


@pytest.mark.parametrize("raw,rule", [
    (b"\x00\x00\x00", "input.size"),                       # ends inside the 4-byte length
    ((10).to_bytes(4, "little") + b"PK", "input.size"),     # declares more than follows
    ((0).to_bytes(4, "little"), "zip.not_zip"),             # one empty element: not a zip
])
def test_binary_bytes_framing(raw, rule, studies):
    payload = _decoded("binary", [In("study_zip", "BYTES", [1], raw)])
    with pytest.raises(ServeInputError) as err:
        request_studies(payload, serve_bundle())
    assert err.value.rule == rule, err.value


def test_json_text_is_always_base64(studies):
    """A JSON string that begins like a zip is text, not bytes: refused as base64, not taken as a zip."""
    payload = parse_rest(b'{"inputs": [{"name": "study_zip", "datatype": "BYTES", "shape": [1], '
                         b'"data": ["PK\\u0003\\u0004rest"]}]}')
    with pytest.raises(ServeInputError) as err:
        request_studies(payload, serve_bundle())
    assert err.value.rule == "zip.base64"


def test_reference_in_study_zip_is_named(studies):
    with pytest.raises(ServeInputError, match="send references in input 'study_ref'"):
        request_studies(_decoded("binary", [In("study_zip", "BYTES", [1], [b"s3://studies/a.zip"])]), serve_bundle())


def test_errors_never_echo_request_bytes():
    """A refusal never quotes data; an unknown input's name is told to the client, hashed in the log."""
    secret = b"DOE^JANE PAT-SECRET"
    cases = [(b'{"inputs": [{"name": "tensor", "datatype": "' + secret + b'", "shape": [1], "data": [1]}]}', None),
             (b'{"inputs": [{"name": "study_zip", "datatype": "BYTES", "shape": [1], "data": ["' + secret + b'"]}]}',
              None),
             (secret, None), (b"{}" + secret, "2"),
             (b'{"inputs": [{"name": "' + secret + b'", "datatype": "FP32", "shape": [1], "data": [1]}]}', None)]
    for i, (body, header) in enumerate(cases):
        with pytest.raises(ServeInputError) as err:
            request_studies(parse_rest(body, header), serve_bundle())
        assert "PAT-SECRET" not in err.value.log_text(b"k"), err.value.log_text(b"k")
        assert ("PAT-SECRET" in str(err.value)) == (i == len(cases) - 1), err.value
