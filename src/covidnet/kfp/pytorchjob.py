"""Training across nodes: a Kubeflow Training Operator ``PyTorchJob`` built from params.

The job runs the project's CUDA image in ``pipeline.pytorchjob.nodes`` pods (one ``Master``,
the rest ``Worker``), each with ``gpus_per_node`` GPUs, and in each the command of one pod
(:func:`covidnet.train.launch.torchrun_command`): ``torchrun --nnodes=N --nproc-per-node=G
-m covidnet.cli.main train ...``. The operator sets the rendezvous environment (``PET_MASTER_ADDR``,
``PET_MASTER_PORT``, ``PET_NODE_RANK``) that torchrun reads. All pods mount one
ReadWriteMany PVC; a job's folder on it (``workdir``) holds::

    params.yaml         the params the job trains with
    preprocessed/       the tensors (index.csv, tensors/)
    checkpoints/        last.pt, best.pt: a restarted pod resumes after the last epoch
    model/  report/     written by rank 0 (the Master's first process)

MLflow's credentials come from the ``pipeline.secrets.mlflow`` secret, as in the pipeline.

* :func:`pytorchjob_manifest`: the manifest (a dict; ``covidnet pipeline pytorchjob`` writes
  it as YAML for ``kubectl apply``).
* :func:`run_pytorchjob`: create it through the Kubernetes API and wait for ``Succeeded``
  (or raise with the operator's reason on ``Failed``, or on the timeout).
* :func:`train_with_pytorchjob`: what the pipeline's ``train_pytorchjob`` component calls:
  stage the tensors on the PVC, run the job, copy the model and report back.

A Kubernetes cluster with the Training Operator cannot run here; the tests check the
manifest against the ``kubeflow-training`` SDK's models and drive :func:`run_pytorchjob`
with a stand-in for the API.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.kfp.params import PyTorchJobParams, SecretsParams, check_name
from covidnet.params import ParamsError
from covidnet.train.launch import LaunchError, checkpoint_key, torchrun_command, train_command

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER = "pytorch"  # the container name the Training Operator looks for
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def job_paths(workdir: str | Path) -> dict[str, Path]:
    """The files and folders of one job under ``workdir`` on the shared PVC."""
    w = Path(workdir)
    return {"params": w / "params.yaml", "preprocessed": w / "preprocessed", "checkpoints": w / "checkpoints",
            "model": w / "model", "report": w / "report"}


def _secret_env(secret: Any) -> list[dict[str, Any]]:
    return [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}}
            for key, var in secret.env.items()]


def pytorchjob_manifest(job: PyTorchJobParams, secrets: SecretsParams, *, name: str, profile: str,
                        workdir: str, namespace: str | None = None) -> dict[str, Any]:
    """A ``kubeflow.org/v1`` PyTorchJob that trains on the tensors in ``workdir``.

    Args:
        job: ``pipeline.pytorchjob`` (image, nodes, GPUs and resources per pod, PVC, policies).
        secrets: ``pipeline.secrets`` (the ``mlflow`` one becomes the pods' environment).
        name: the job's name (a Kubernetes name).
        profile: the params profile the job trains with.
        workdir: the job's folder under ``job.mount_path`` (see :func:`job_paths`).
        namespace: overrides ``job.namespace``; ``None`` in both leaves it out (kubectl's).

    Raises:
        ParamsError: a bad name, or a ``workdir`` outside the PVC's mount path.
    """
    check_name(name, "name")
    mount = Path(job.mount_path)
    if not Path(workdir).is_relative_to(mount) or Path(workdir) == mount:
        raise ParamsError(f"workdir: {workdir!r} is not a folder under pipeline.pytorchjob.mount_path "
                          f"({job.mount_path})")
    p = job_paths(workdir)
    command = torchrun_command(job.nodes, job.nproc_per_node, train_command(
        p["params"], profile, p["preprocessed"], p["model"], p["checkpoints"], p["report"], resume="auto"))
    limits: dict[str, str] = {"cpu": job.cpu, "memory": job.memory}
    if job.gpus_per_node:
        limits[job.accelerator] = str(job.gpus_per_node)
    mounts = [{"name": "workspace", "mountPath": job.mount_path}]
    volumes: list[dict[str, Any]] = [{"name": "workspace", "persistentVolumeClaim": {"claimName": job.pvc}}]
    if job.shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": job.shm}})
    container = {"name": CONTAINER, "image": job.image, "imagePullPolicy": "IfNotPresent", "command": command,
                 "env": _secret_env(secrets.mlflow) + [{"name": "DVC_NO_ANALYTICS", "value": "1"}],
                 "resources": {"requests": dict(limits), "limits": dict(limits)}, "volumeMounts": mounts}
    template = {"metadata": {"labels": {"app.kubernetes.io/name": "covidnet", "app.kubernetes.io/component": "train"}},
                "spec": {"containers": [container], "volumes": volumes}}
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if job.nodes > 1:
        replicas["Worker"] = {"replicas": job.nodes - 1, "restartPolicy": "OnFailure", "template": template}
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/name": "covidnet"}}
    if namespace or job.namespace:
        metadata["namespace"] = namespace or job.namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata,
            "spec": {"nprocPerNode": str(job.nproc_per_node), "pytorchReplicaSpecs": replicas,
                     "runPolicy": {"backoffLimit": job.backoff_limit, "cleanPodPolicy": "Running",
                                   "ttlSecondsAfterFinished": job.ttl_s, "activeDeadlineSeconds": job.timeout_s}}}


# --- the Kubernetes API ------------------------------------------------------------------------------

def default_namespace() -> str:
    """The namespace of the pod this runs in, else the kube config's current context, else ``default``."""
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config

        _, context = config.list_kube_config_contexts()
        return context["context"].get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no kube config: the API default
        return "default"


def custom_objects_api() -> Any:
    """``kubernetes.client.CustomObjectsApi`` with the pod's service account, else the kube config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def job_state(obj: dict[str, Any]) -> tuple[str, str]:
    """``(condition type, "reason: message")`` of a PyTorchJob's latest true condition, or ``("Pending", "")``."""
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    for terminal in ("Succeeded", "Failed"):
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    if conditions:
        c = conditions[-1]
        return str(c.get("type")), f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return "Pending", ""


def _status_code(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def run_pytorchjob(manifest: dict[str, Any], *, timeout_s: int, poll_s: int, api: Any = None,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Create the PyTorchJob and wait until it succeeds.

    A job of that name already there (a retried launcher) is watched instead of created
    again, unless it has failed: then it is deleted and created anew (its pods resume from
    the checkpoints on the PVC).

    Args:
        manifest: from :func:`pytorchjob_manifest` (``metadata.namespace`` set).
        timeout_s: give up after this long: the job is deleted and :class:`LaunchError` raised.
        poll_s: seconds between status reads.
        api: a ``kubernetes.client.CustomObjectsApi`` (default: :func:`custom_objects_api`).
        sleep, clock: injectable for tests.

    Returns:
        The job object as last read (``status.conditions`` ends with ``Succeeded``).

    Raises:
        LaunchError: the job failed (with the operator's reason and message) or timed out.
    """
    api = api if api is not None else custom_objects_api()
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    where = f"PyTorchJob {namespace}/{name}"
    ref = {"group": GROUP, "version": VERSION, "namespace": namespace, "plural": PLURAL}
    deadline = clock() + timeout_s
    try:
        api.create_namespaced_custom_object(body=manifest, **ref)
        log.info("%s created", where)
    except Exception as exc:  # noqa: BLE001 - kubernetes.client.ApiException; only 409 is expected
        if _status_code(exc) != 409:
            raise LaunchError(f"{where}: cannot create it: {exc}") from exc
        state, why = job_state(api.get_namespaced_custom_object(name=name, **ref))
        if state == "Failed":
            log.warning("%s exists and failed (%s): deleting and creating it again", where, why)
            api.delete_namespaced_custom_object(name=name, **ref)
            while True:
                try:
                    api.get_namespaced_custom_object(name=name, **ref)
                except Exception as gone:  # noqa: BLE001
                    if _status_code(gone) == 404:
                        break
                    raise
                if clock() > deadline:
                    raise LaunchError(f"{where}: the failed job was not deleted within {timeout_s} s") from exc
                sleep(poll_s)
            api.create_namespaced_custom_object(body=manifest, **ref)
        else:
            log.info("%s already exists (%s): waiting for it", where, state)
    last = None
    while True:
        obj = api.get_namespaced_custom_object(name=name, **ref)
        state, why = job_state(obj)
        if state != last:
            log.info("%s: %s %s", where, state, why)
            last = state
        if state == "Succeeded":
            return obj
        if state == "Failed":
            raise LaunchError(f"{where} failed: {why or 'no reason given'} (kubectl logs -n {namespace} "
                              f"-l training.kubeflow.org/job-name={name})")
        if clock() > deadline:
            api.delete_namespaced_custom_object(name=name, **ref)
            raise LaunchError(f"{where}: not finished after {timeout_s} s (pipeline.pytorchjob.timeout_s); "
                              f"deleted it (last state {state})")
        sleep(poll_s)


# --- the pipeline's launcher ---------------------------------------------------------------------------

@dataclass(frozen=True)
class JobTrainResult:
    """What :func:`train_with_pytorchjob` ran and produced."""

    name: str
    namespace: str
    workdir: Path
    run_id: str | None


def _copytree_atomic(src: Path, dst: Path) -> None:
    from covidnet.atomic import atomic_path

    with atomic_path(dst, directory=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def train_with_pytorchjob(params: dict[str, Any], params_text: str, preprocessed: Path, model: Path, report: Path,
                          *, api: Any = None, sleep: Callable[[float], None] = time.sleep) -> JobTrainResult:
    """Train on ``preprocessed`` with a PyTorchJob; copy its model and report to ``model``, ``report``.

    The job's folder on the PVC (mounted here at ``pipeline.pytorchjob.mount_path``) and its
    name are keyed by the inputs (:func:`covidnet.train.launch.checkpoint_key`), so a retried
    task finds the job, or its checkpoints, again.
    """
    from covidnet.atomic import write_text
    from covidnet.kfp.params import pipeline_params
    from covidnet.model.card import ModelCard
    from covidnet.params import profile_name
    from covidnet.tracking import data_version, run_of

    settings = pipeline_params(params)
    job = settings.pytorchjob
    profile = profile_name(params)
    key = checkpoint_key(params_text, profile, data_version(preprocessed))
    name = f"covidnet-{key}"
    workdir = Path(job.mount_path) / name
    p = job_paths(workdir)
    if not Path(job.mount_path).is_dir():
        raise LaunchError(f"{job.mount_path}: the PVC {job.pvc!r} is not mounted here (pipeline.pytorchjob.mount_path)")
    workdir.mkdir(parents=True, exist_ok=True)
    if not (p["preprocessed"] / "index.csv").is_file():
        _copytree_atomic(preprocessed, p["preprocessed"])
    write_text(p["params"], params_text)
    namespace = job.namespace or default_namespace()
    manifest = pytorchjob_manifest(job, settings.secrets, name=name, profile=profile, workdir=str(workdir),
                                   namespace=namespace)
    run_pytorchjob(manifest, timeout_s=job.timeout_s, poll_s=job.poll_s, api=api, sleep=sleep)
    for src, dst in ((p["model"], model), (p["report"], report)):
        if not src.is_dir():
            raise LaunchError(f"PyTorchJob {namespace}/{name} succeeded but wrote no {src}")
        _copytree_atomic(src, dst)
    return JobTrainResult(name=name, namespace=namespace, workdir=workdir,
                          run_id=run_of(report, ModelCard.digest(model)))
