"""The ``pipeline`` section of params.yaml: how the Kubeflow tasks run on a cluster.

Read when a pipeline is compiled (resources, accelerator, retries, secrets and volumes are
written into the IR YAML) and, for the PyTorchJob, when the launcher builds the job. Every
value is checked here, with the params key and the offending value in the message.
Quantities are Kubernetes quantities (``"2"``, ``"500m"`` CPUs; ``64G``, ``16Gi`` bytes).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from covidnet.params import ParamsError, section
from covidnet.train.launch import check_checkpoint_dir, parse_nproc

_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(E|P|T|G|M|K|Ei|Pi|Ti|Gi|Mi|Ki)?$")
_RESOURCE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An image reference as Docker and Kubernetes read it: [registry[:port]/]name[/name...][:tag][@sha256:digest].
_REGISTRY = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"^{_REGISTRY}{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
                    r"(?P<tag>:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?P<digest>@sha256:[0-9a-f]{64})?$")


def check_cpu(value: str, key: str) -> None:
    """Raise unless ``value`` is a CPU quantity (``"2"``, ``"0.5"``, ``"500m"``)."""
    if not _CPU.match(value) or float(value.rstrip("m") or 0) <= 0:
        raise ParamsError(f"{key}: {value!r} is not a CPU quantity such as '2' or '500m'")


def check_memory(value: str, key: str) -> None:
    """Raise unless ``value`` is a memory quantity (``8G``, ``16Gi``)."""
    if not _MEMORY.match(value) or float(re.sub(r"[A-Za-z]+$", "", value)) <= 0:
        raise ParamsError(f"{key}: {value!r} is not a memory quantity such as '8G' or '16Gi'")


_MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def cpu_cores(value: str) -> float:
    """A checked CPU quantity in cores (``"500m"`` -> 0.5)."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def memory_bytes(value: str) -> float:
    """A checked memory quantity in bytes (``"16Gi"`` -> 17179869184)."""
    number, unit = re.match(r"^([0-9.]+)([A-Za-z]*)$", value).groups()
    return float(number) * _MEMORY_UNITS[unit]


def _check_request(request: float, limit: float, request_key: str, limit_key: str, request_value: str,
                   limit_value: str) -> None:
    if request > limit:
        raise ParamsError(f"pipeline.resources.{request_key}: {request_value!r} is above the limit "
                          f"pipeline.resources.{limit_key} ({limit_value!r}); a request must not exceed its limit")


def check_name(value: str, key: str) -> None:
    """Raise unless ``value`` is a Kubernetes object name (a DNS label: a-z, 0-9, '-', at most 63)."""
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ParamsError(f"{key}: {value!r} is not a Kubernetes name (lower-case letters, digits and '-', "
                          "at most 63 characters)")


def check_image(value: str, key: str) -> None:
    """Raise unless ``value`` is an image reference with a tag or a digest (``covidnet:0.1.0``,
    ``registry.example.org/ml/covidnet@sha256:...``); an untagged name would mean ``:latest``, which moves."""
    m = _IMAGE.match(value)
    if not m:
        raise ParamsError(f"{key}: {value!r} is not an image reference such as 'covidnet:0.1.0' or "
                          "'REGISTRY/covidnet@sha256:<64 hex digits>'")
    if not (m.group("tag") or m.group("digest")):
        raise ParamsError(f"{key}: {value!r} has neither a tag nor a digest (':0.1.0', '@sha256:...'); "
                          "an untagged image is ':latest', which moves")


def check_resource(value: str, key: str) -> None:
    """Raise unless ``value`` is an extended resource name such as ``nvidia.com/gpu``."""
    if not _RESOURCE.match(value):
        raise ParamsError(f"{key}: {value!r} is not a resource name such as 'nvidia.com/gpu'")


@dataclass(frozen=True)
class ImageParams:
    """``pipeline.image``: the project images, named in one place.

    ``cpu`` (``Dockerfile``) runs every task but train; ``cuda`` (``Dockerfile.cuda``) runs the
    train task and the PyTorchJob's pods. The pipeline builders set each task's image from here
    (so the compiled YAML names them), the PyTorchJob takes ``cuda``, and ``scripts/images.sh``
    tags what it builds with these names. A tag, or a digest once pushed
    (``REGISTRY/covidnet@sha256:...``).
    """

    cpu: str
    cuda: str

    def __post_init__(self) -> None:
        check_image(self.cpu, "pipeline.image.cpu")
        check_image(self.cuda, "pipeline.image.cuda")


@dataclass(frozen=True)
class ResourceParams:
    """``pipeline.resources``: requests and limits of every task, and of the train task with its accelerators.

    A request (what the scheduler reserves) must not exceed its limit.
    """

    cpu: str
    memory: str
    cpu_request: str
    memory_request: str
    train_cpu: str
    train_memory: str
    train_cpu_request: str
    train_memory_request: str
    train_shm: str | None
    accelerator: str
    gpus: int

    def __post_init__(self) -> None:
        for request, limit in (("cpu_request", "cpu"), ("train_cpu_request", "train_cpu")):
            check_cpu(getattr(self, limit), f"pipeline.resources.{limit}")
            check_cpu(getattr(self, request), f"pipeline.resources.{request}")
            _check_request(cpu_cores(getattr(self, request)), cpu_cores(getattr(self, limit)), request, limit,
                           getattr(self, request), getattr(self, limit))
        for request, limit in (("memory_request", "memory"), ("train_memory_request", "train_memory")):
            check_memory(getattr(self, limit), f"pipeline.resources.{limit}")
            check_memory(getattr(self, request), f"pipeline.resources.{request}")
            _check_request(memory_bytes(getattr(self, request)), memory_bytes(getattr(self, limit)), request, limit,
                           getattr(self, request), getattr(self, limit))
        if self.train_shm is not None:
            check_memory(self.train_shm, "pipeline.resources.train_shm")
        check_resource(self.accelerator, "pipeline.resources.accelerator")
        if self.gpus < 0:
            raise ParamsError(f"pipeline.resources.gpus: must be >= 0, got {self.gpus}")


@dataclass(frozen=True)
class RetryParams:
    """``pipeline.retry``: retries with exponential back-off of the tasks that talk to a remote."""

    count: int
    backoff_s: int
    factor: float
    max_backoff_s: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ParamsError(f"pipeline.retry.count: must be >= 0, got {self.count}")
        if self.backoff_s < 1:
            raise ParamsError(f"pipeline.retry.backoff_s: must be >= 1, got {self.backoff_s}")
        if self.factor < 1.0:
            raise ParamsError(f"pipeline.retry.factor: must be >= 1, got {self.factor}")
        if self.max_backoff_s < self.backoff_s:
            raise ParamsError(f"pipeline.retry.max_backoff_s: {self.max_backoff_s} is below backoff_s "
                              f"({self.backoff_s})")


@dataclass(frozen=True)
class TrainTaskParams:
    """``pipeline.train``: processes of the train pod and where a retried task finds its checkpoints."""

    nproc_per_node: int | str
    checkpoint_dir: str
    checkpoint_pvc: str | None
    checkpoint_mount: str
    checkpoint_sync_s: int
    retries: int

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ParamsError(f"pipeline.train.retries: must be >= 0, got {self.retries}")
        parse_nproc(self.nproc_per_node)
        check_checkpoint_dir(self.checkpoint_dir, "pipeline.train.checkpoint_dir")
        if self.checkpoint_sync_s < 1:
            raise ParamsError(f"pipeline.train.checkpoint_sync_s: must be >= 1, got {self.checkpoint_sync_s}")
        if self.checkpoint_pvc is not None:
            check_name(self.checkpoint_pvc, "pipeline.train.checkpoint_pvc")
        if not self.checkpoint_mount.startswith("/"):
            raise ParamsError(f"pipeline.train.checkpoint_mount: {self.checkpoint_mount!r} is not an absolute path")


@dataclass(frozen=True)
class SecretParams:
    """One Kubernetes secret whose keys become environment variables (``env``: secret key -> variable)."""

    name: str
    env: dict[str, str]

    def check(self, key: str) -> None:
        check_name(self.name, f"{key}.name")
        if not self.env:
            raise ParamsError(f"{key}.env: empty; map at least one secret key to an environment variable")
        for secret_key, var in self.env.items():
            if not _ENV.match(var):
                raise ParamsError(f"{key}.env.{secret_key}: {var!r} is not an environment variable name")


@dataclass(frozen=True)
class SecretsParams:
    """``pipeline.secrets``: the DVC remote's, MLflow's and the prediction log's credentials on the cluster."""

    dvc_remote: SecretParams
    mlflow: SecretParams
    predlog: SecretParams

    def __post_init__(self) -> None:
        for name in ("dvc_remote", "mlflow", "predlog"):
            getattr(self, name).check(f"pipeline.secrets.{name}")


@dataclass(frozen=True)
class PyTorchJobParams:
    """``pipeline.pytorchjob``: a Kubeflow Training Operator PyTorchJob training across nodes.

    ``image`` is not a key of this section: :class:`PipelineParams` fills it with
    ``pipeline.image.cuda``, so the image is named in one place.
    """

    namespace: str | None
    nodes: int
    gpus_per_node: int
    accelerator: str
    cpu: str
    memory: str
    shm: str | None
    pvc: str
    mount_path: str
    backoff_limit: int
    timeout_s: int
    poll_s: int
    ttl_s: int
    image: str = ""

    def __post_init__(self) -> None:
        key = "pipeline.pytorchjob"
        if self.namespace is not None:
            check_name(self.namespace, f"{key}.namespace")
        if self.nodes < 1:
            raise ParamsError(f"{key}.nodes: must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ParamsError(f"{key}.gpus_per_node: must be >= 0, got {self.gpus_per_node}")
        check_resource(self.accelerator, f"{key}.accelerator")
        check_cpu(self.cpu, f"{key}.cpu")
        check_memory(self.memory, f"{key}.memory")
        if self.shm is not None:
            check_memory(self.shm, f"{key}.shm")
        check_name(self.pvc, f"{key}.pvc")
        if not self.mount_path.startswith("/"):
            raise ParamsError(f"{key}.mount_path: {self.mount_path!r} is not an absolute path")
        for name in ("backoff_limit", "timeout_s", "poll_s", "ttl_s"):
            low = 0 if name == "backoff_limit" else 1
            if getattr(self, name) < low:
                raise ParamsError(f"{key}.{name}: must be >= {low}, got {getattr(self, name)}")

    @property
    def nproc_per_node(self) -> int:
        """torchrun processes per pod: one per GPU, or one on a CPU-only pod."""
        return max(self.gpus_per_node, 1)


@dataclass(frozen=True)
class SubmitParams:
    """``pipeline.submit``: checks before a run is sent."""

    check_revision: bool
    git_timeout_s: int

    def __post_init__(self) -> None:
        if self.git_timeout_s < 1:
            raise ParamsError(f"pipeline.submit.git_timeout_s: must be >= 1, got {self.git_timeout_s}")


@dataclass(frozen=True)
class PipelineParams:
    """The ``pipeline`` section of params.yaml."""

    image: ImageParams
    resources: ResourceParams
    retry: RetryParams
    train: TrainTaskParams
    secrets: SecretsParams
    pytorchjob: PyTorchJobParams
    submit: SubmitParams

    def __post_init__(self) -> None:
        # The PyTorchJob's pods run the CUDA image: derived, never a second setting.
        object.__setattr__(self, "pytorchjob", dataclasses.replace(self.pytorchjob, image=self.image.cuda))


def pipeline_params(params: dict[str, Any]) -> PipelineParams:
    """The checked ``pipeline`` section of merged params (raises :class:`ParamsError` naming the key)."""
    job = (params.get("pipeline") or {}).get("pytorchjob")
    if isinstance(job, dict) and "image" in job:
        raise ParamsError(f"{params.get('_source', 'params.yaml')}: pipeline.pytorchjob.image: the PyTorchJob's pods "
                          "run pipeline.image.cuda (the images are named in one place); remove this key")
    return section(params, "pipeline", PipelineParams)
