"""The InferenceService manifests, checked against KServe's own Python SDK models.

No cluster here (mocked: nothing is applied): each YAML is deserialised into
``kserve.V1beta1InferenceService`` the way the SDK deserialises an API server response, then
serialised back; a key the SDK does not know (a misspelt field) is lost in that round trip, so
the round trip must give the YAML back. KServe's ``ApiClient`` looks model names up in
``kserve.models`` only; the Kubernetes ones it refers to (``V1ObjectMeta``, ``V1Container``)
come from ``kubernetes.client.models``, as in the SDK's own ``KServeClient``.
"""

import json

import pytest
import yaml

from support import REPO

MANIFESTS = {"cpu": REPO / "serving" / "inferenceservice-cpu.yaml", "gpu": REPO / "serving" / "inferenceservice-gpu.yaml"}


class _Response:
    """What ``ApiClient.deserialize`` reads: an HTTP response with a JSON body."""

    def __init__(self, body: dict):
        self.data = json.dumps(body)


def _client():
    import kserve
    import kubernetes.client

    class Client(kserve.ApiClient):
        def _ApiClient__deserialize(self, data, klass):  # the SDK's private recursive deserialiser
            if (isinstance(klass, str) and not klass.startswith(("list[", "dict(")) and klass not in
                    self.NATIVE_TYPES_MAPPING and not hasattr(kserve.models, klass)):
                klass = getattr(kubernetes.client.models, klass)
            return super()._ApiClient__deserialize(data, klass)

    return Client()


def _load(kind: str):
    raw = yaml.safe_load(MANIFESTS[kind].read_text())
    client = _client()
    isvc = client.deserialize(_Response(raw), "V1beta1InferenceService")
    return raw, isvc, client.sanitize_for_serialization(isvc)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_manifest_is_a_kserve_inferenceservice(kind):
    import kserve

    raw, isvc, back = _load(kind)
    assert isinstance(isvc, kserve.V1beta1InferenceService)
    assert isvc.api_version == "serving.kserve.io/v1beta1" and isvc.kind == "InferenceService"
    assert back == raw, "a field the KServe SDK does not know was dropped (misspelt?)"
    p = isvc.spec.predictor
    assert isinstance(p, kserve.V1beta1PredictorSpec)
    assert p.service_account_name and 1 <= p.min_replicas <= p.max_replicas
    assert p.timeout >= 300  # a 600-slice upload, preprocessing and the forward pass
    (c,) = p.containers
    assert c.name == "kserve-container" and c.image == "covidnet:0.1.0"
    assert c.command + c.args[:2] == ["python", "-m", "covidnet.serve.kserve_model", "--model_dir", "/mnt/models"]
    env = {e.name: e.value for e in c.env}
    assert env["STORAGE_URI"].startswith("s3://")
    assert c.readiness_probe.http_get.path == "/v2/models/covidnet/ready"
    assert isvc.metadata.annotations["nginx.ingress.kubernetes.io/proxy-body-size"].endswith("m")


def test_cpu_and_gpu_variants():
    _, cpu, _ = _load("cpu")
    _, gpu, _ = _load("gpu")
    assert cpu.spec.predictor.container_concurrency == 1 and gpu.spec.predictor.container_concurrency == 2
    cpu_c, gpu_c = cpu.spec.predictor.containers[0], gpu.spec.predictor.containers[0]
    assert "nvidia.com/gpu" not in cpu_c.resources.limits and "nvidia.com/gpu" not in cpu_c.resources.requests
    assert str(gpu_c.resources.limits["nvidia.com/gpu"]) == "1"
    assert any(t.key == "nvidia.com/gpu" for t in gpu.spec.predictor.tolerations)
    assert cpu.metadata.name != gpu.metadata.name


def test_manifest_args_parse_with_the_server_parser():
    """The container's args are accepted by covidnet.serve.kserve_model's parser (KServe's, extended)."""
    import subprocess
    import sys

    for kind in MANIFESTS:
        raw = yaml.safe_load(MANIFESTS[kind].read_text())
        args = raw["spec"]["predictor"]["containers"][0]["args"]
        code = ("import sys; sys.argv = ['x'];"
                "import covidnet.serve.kserve_model as m;"
                f"a, rest = m.build_parser().parse_known_args({args!r}); assert not rest, rest; print(a.model_dir, a.profile)")
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split()[0] == "/mnt/models"
