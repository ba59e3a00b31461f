"""The PyTorchJob across nodes: the manifest (checked with the kubeflow-training SDK), its launcher, the CLI.

No Kubernetes cluster with the Training Operator can run here. The manifest is deserialised
into ``kubeflow.training.KubeflowOrgV1PyTorchJob`` the way the SDK reads an API server's
answer, then serialised back: a field the SDK does not know is lost in that round trip, so
the round trip must give the manifest back. :func:`run_pytorchjob` is driven by
:class:`FakeCluster`, a stand-in for the Kubernetes API (it says so), and in the slow test
that stand-in runs the Master pod's command for real, with torchrun, on this machine.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from covidnet.cli import main as cli
from covidnet.kfp.params import pipeline_params
from covidnet.kfp.pytorchjob import job_state, pytorchjob_manifest, run_pytorchjob, train_with_pytorchjob
from covidnet.params import ParamsError, load_params
from covidnet.train.launch import LaunchError
from support import REPO

PARAMS = REPO / "params.yaml"
SETTINGS = pipeline_params(load_params(PARAMS))


class _Response:
    """What ``ApiClient.deserialize`` reads: an HTTP response with a JSON body."""

    def __init__(self, body: dict):
        self.data = json.dumps(body)


def _round_trip(manifest: dict):
    from kubeflow.training import ApiClient, KubeflowOrgV1PyTorchJob

    client = ApiClient()
    job = client.deserialize(_Response(manifest), "KubeflowOrgV1PyTorchJob")
    assert isinstance(job, KubeflowOrgV1PyTorchJob)
    return job, client.sanitize_for_serialization(job)


def _manifest(**changes):
    job = dataclasses.replace(SETTINGS.pytorchjob, **changes)
    return pytorchjob_manifest(job, SETTINGS.secrets, name="covidnet-train", profile="paper",
                               workdir=f"{job.mount_path}/covidnet-train", namespace="ml")


def test_manifest_is_a_pytorchjob_of_the_sdk():
    job = SETTINGS.pytorchjob
    manifest = _manifest()
    obj, back = _round_trip(manifest)
    assert back == manifest, "a field the kubeflow-training SDK does not know was dropped (misspelt?)"
    assert obj.api_version == "kubeflow.org/v1" and obj.kind == "PyTorchJob"
    assert obj.metadata.name == "covidnet-train" and obj.metadata.namespace == "ml"
    spec = obj.spec
    assert spec.nproc_per_node == str(job.gpus_per_node)
    master, worker = spec.pytorch_replica_specs["Master"], spec.pytorch_replica_specs["Worker"]
    assert master.replicas == 1 and worker.replicas == job.nodes - 1
    assert master.restart_policy == worker.restart_policy == "OnFailure"
    assert spec.run_policy.backoff_limit == job.backoff_limit and spec.run_policy.ttl_seconds_after_finished == job.ttl_s
    assert spec.run_policy.active_deadline_seconds == job.timeout_s
    for replica in (master, worker):
        (c,) = replica.template.spec.containers
        assert c.name == "pytorch" and c.image == job.image
        assert c.resources.limits == {"cpu": job.cpu, "memory": job.memory, job.accelerator: str(job.gpus_per_node)}
        assert c.resources.requests == c.resources.limits
        secret_env = {e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
                      for e in c.env if e.value_from}
        assert secret_env == {var: (SETTINGS.secrets.mlflow.name, key) for key, var in SETTINGS.secrets.mlflow.env.items()}
        mounts = {m.name: m.mount_path for m in c.volume_mounts}
        assert mounts == {"workspace": job.mount_path, "dshm": "/dev/shm"}
        volumes = {v.name: v for v in replica.template.spec.volumes}
        assert volumes["workspace"].persistent_volume_claim.claim_name == job.pvc
        assert volumes["dshm"].empty_dir.medium == "Memory" and volumes["dshm"].empty_dir.size_limit == job.shm


def test_manifest_command_is_torchrun_of_the_train_stage():
    """The container's command parses with torchrun's own parser and, after `-m covidnet.cli.main`, with ours."""
    from torch.distributed.run import get_args_parser

    job = SETTINGS.pytorchjob
    (c,) = _manifest()["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    command = c["command"]
    assert command[0] == "torchrun"
    run_args = get_args_parser().parse_args(command[1:])
    assert run_args.nnodes == str(job.nodes) and run_args.nproc_per_node == str(job.gpus_per_node)
    assert run_args.module and run_args.training_script == "covidnet.cli.main" and not run_args.standalone
    train = cli.build_parser().parse_args(run_args.training_script_args)
    work = Path(job.mount_path) / "covidnet-train"
    assert train.command == "train" and train.profile == "paper" and train.resume == "auto" and train.quiet
    assert (train.params, train.preprocessed, train.model, train.checkpoints, train.train_report) == (
        work / "params.yaml", work / "preprocessed", work / "model", work / "checkpoints", work / "report")


def test_one_node_and_cpu_only_variants():
    manifest = _manifest(nodes=1, gpus_per_node=0, shm=None)
    _, back = _round_trip(manifest)
    assert back == manifest
    assert set(manifest["spec"]["pytorchReplicaSpecs"]) == {"Master"} and manifest["spec"]["nprocPerNode"] == "1"
    (c,) = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and "--standalone" in c["command"]
    assert [m["name"] for m in c["volumeMounts"]] == ["workspace"]


def test_manifest_refuses_a_workdir_off_the_pvc_and_bad_names():
    with pytest.raises(ParamsError, match=r"workdir: '/tmp/job' is not a folder under pipeline.pytorchjob.mount_path"):
        pytorchjob_manifest(SETTINGS.pytorchjob, SETTINGS.secrets, name="j", profile="default", workdir="/tmp/job")
    with pytest.raises(ParamsError, match="name: 'Train_1' is not a Kubernetes name"):
        pytorchjob_manifest(SETTINGS.pytorchjob, SETTINGS.secrets, name="Train_1", profile="default",
                            workdir="/workspace/j")


def test_cli_writes_the_manifest(tmp_path, capsys):
    out = tmp_path / "job.yaml"
    assert cli.main(["pipeline", "pytorchjob", "--params", str(PARAMS), "--profile", "paper", "--name",
                     "covidnet-train", "--namespace", "ml", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == _manifest()
    assert f"{SETTINGS.pytorchjob.nodes} node(s)" in capsys.readouterr().out
    assert cli.main(["pipeline", "pytorchjob", "--params", str(PARAMS), "--name", "j2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["metadata"] == {"name": "j2", "labels": {"app.kubernetes.io/name": "covidnet"}}  # kubectl's namespace
    assert cli.main(["pipeline", "pytorchjob", "--params", str(PARAMS), "--name", "j", "--workdir", "/data/j"]) == 2
    assert "is not a folder under pipeline.pytorchjob.mount_path" in capsys.readouterr().err


class ApiError(Exception):
    """What ``kubernetes.client.ApiException`` carries that the launcher reads: an HTTP status."""

    def __init__(self, status):
        super().__init__(f"({status})")
        self.status = status


class FakeCluster:
    """Stands in for the Kubernetes API with the Training Operator (no cluster can run here).

    ``CustomObjectsApi``'s three calls the launcher makes. Each read of a job returns the next
    of its scripted states (the last one repeats); with ``run_master`` the created job's
    Master command is run for real on this machine (torchrun on the CPU), its environment
    taken from ``secrets`` as Kubernetes would, and the job succeeds or fails with it.
    """

    def __init__(self, states=(), existing=None, run_master=False, secrets=None):
        self.states = list(states)
        self.jobs = dict(existing or {})
        self.calls = []
        self.run_master = run_master
        self.secrets = secrets or {}

    @staticmethod
    def condition(kind, reason="", message=""):
        return {"status": {"conditions": [{"type": "Created", "status": "True"},
                                          {"type": kind, "status": "True", "reason": reason, "message": message}]}}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", body["metadata"]["name"]))
        assert (group, version, plural, namespace) == ("kubeflow.org", "v1", "pytorchjobs", body["metadata"]["namespace"])
        if body["metadata"]["name"] in self.jobs:
            raise ApiError(409)
        self.jobs[body["metadata"]["name"]] = body
        if self.run_master:
            self.states = [self._run(body)]

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", name))
        if name not in self.jobs:
            raise ApiError(404)
        return {**self.jobs[name], **(self.states.pop(0) if len(self.states) > 1 else self.states[0])}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", name))
        self.jobs.pop(name, None)

    def _run(self, body):
        (c,) = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for e in c["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            env[e["name"]] = self.secrets[ref["name"]][ref["key"]] if ref else e["value"]
        command = [sys.executable, "-m", "torch.distributed.run", *c["command"][1:]]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return self.condition("Failed", "PyTorchJobFailed", proc.stderr[-2000:])
        return self.condition("Succeeded", "PyTorchJobSucceeded", "done")


def _launch(cluster, timeout_s=100, poll_s=10):
    clock = {"t": 0.0}
    manifest = _manifest()
    result = run_pytorchjob(manifest, timeout_s=timeout_s, poll_s=poll_s, api=cluster,
                            sleep=lambda s: clock.__setitem__("t", clock["t"] + s), clock=lambda: clock["t"])
    return result, clock["t"]


def test_launcher_waits_for_success():
    cluster = FakeCluster([{"status": {}}, FakeCluster.condition("Running"), FakeCluster.condition("Succeeded")])
    obj, waited = _launch(cluster)
    assert job_state(obj)[0] == "Succeeded" and waited == 20  # two polls of 10 s (a stand-in clock)
    assert cluster.calls[0] == ("create", "covidnet-train") and cluster.calls.count(("get", "covidnet-train")) == 3


def test_launcher_reports_the_operators_reason_on_failure():
    cluster = FakeCluster([FakeCluster.condition("Running"),
                           FakeCluster.condition("Failed", "PyTorchJobFailed", "Master exited with code 1")])
    with pytest.raises(LaunchError, match=r"PyTorchJob ml/covidnet-train failed: PyTorchJobFailed: Master exited with "
                                          r"code 1 \(kubectl logs -n ml -l training.kubeflow.org/job-name="
                                          r"covidnet-train\)"):
        _launch(cluster)


def test_launcher_times_out_and_deletes_the_job():
    cluster = FakeCluster([FakeCluster.condition("Running")])
    with pytest.raises(LaunchError, match=r"not finished after 100 s \(pipeline.pytorchjob.timeout_s\); deleted it"):
        _launch(cluster)
    assert cluster.calls[-1] == ("delete", "covidnet-train")


def test_a_retried_launcher_watches_a_running_job_and_replaces_a_failed_one():
    running = FakeCluster([FakeCluster.condition("Running"), FakeCluster.condition("Succeeded")],
                          existing={"covidnet-train": {}})
    _launch(running)
    assert [k for k, _ in running.calls].count("create") == 1 and "delete" not in [k for k, _ in running.calls]

    failed = FakeCluster([FakeCluster.condition("Failed", "x", "y"), FakeCluster.condition("Succeeded")],
                         existing={"covidnet-train": {}})
    _launch(failed)
    kinds = [k for k, _ in failed.calls]
    assert kinds[:4] == ["create", "get", "delete", "get"] and kinds.count("create") == 2


def test_launcher_names_a_refused_creation():
    class Forbidden(FakeCluster):
        def create_namespaced_custom_object(self, **kwargs):
            raise ApiError(403)

    with pytest.raises(LaunchError, match=r"PyTorchJob ml/covidnet-train: cannot create it: \(403\)"):
        _launch(Forbidden())


@pytest.mark.slow
def test_train_with_pytorchjob_end_to_end_on_a_stand_in_cluster(tmp_path, monkeypatch, toy_tensors):
    """The pipeline's launcher: tensors to the 'PVC', the job's Master command run for real, the model copied back."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = yaml.safe_load(PARAMS.read_text())
    raw["pipeline"]["pytorchjob"].update(nodes=1, gpus_per_node=0, mount_path=str(tmp_path / "workspace"),
                                         namespace="ml", poll_s=1)
    text = yaml.safe_dump(raw, sort_keys=False)
    from covidnet.kfp.runner import stage_params

    params = stage_params(text, "tiny")
    (tmp_path / "workspace").mkdir()
    toy_tensors(tmp_path / "pre", n_train=8)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cluster = FakeCluster(run_master=True, secrets={"covidnet-mlflow": {
        "MLFLOW_TRACKING_URI": uri, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}})
    result = train_with_pytorchjob(params, text, tmp_path / "pre", tmp_path / "model", tmp_path / "report",
                                   api=cluster, sleep=lambda s: None)
    assert result.namespace == "ml" and result.name.startswith("covidnet-train-")
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    record = json.loads((tmp_path / "report" / "run.json").read_text())
    assert card["config"]["world_size"] == 1 and result.run_id == record["mlflow_run_id"] is not None
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["epochs_run"] == 2
    assert (result.workdir / "checkpoints" / "last.pt").is_file()  # on the PVC: a restarted pod resumes
    import mlflow

    assert mlflow.MlflowClient(tracking_uri=uri).get_run(result.run_id).info.status == "FINISHED"

    # A second launch with the same inputs finds the job's folder and name again; its finished run is
    # not resumed (only an interrupted one is): the job trains afresh, into a new run.
    again = FakeCluster(run_master=True, secrets=cluster.secrets)
    second = train_with_pytorchjob(params, text, tmp_path / "pre", tmp_path / "model2", tmp_path / "report2",
                                   api=again, sleep=lambda s: None)
    assert second.name == result.name and second.workdir == result.workdir and second.run_id != result.run_id


def test_launcher_without_the_pvc_mounted_says_so(tmp_path, toy_tensors):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["pipeline"]["pytorchjob"]["mount_path"] = str(tmp_path / "not-mounted")
    text = yaml.safe_dump(raw, sort_keys=False)
    from covidnet.kfp.runner import stage_params

    toy_tensors(tmp_path / "pre")
    with pytest.raises(LaunchError, match=r"not-mounted: the PVC 'covidnet-workspace' is not mounted here"):
        train_with_pytorchjob(stage_params(text, "tiny"), text, tmp_path / "pre", tmp_path / "m", tmp_path / "r",
                              api=FakeCluster())


def test_workspace_manifests_are_kubernetes_objects():
    """pipelines/pytorchjob-workspace.yaml: the PVC params name, and the launcher's right to manage PyTorchJobs."""
    import kubernetes.client as k8s

    docs = list(yaml.safe_load_all((REPO / "pipelines" / "pytorchjob-workspace.yaml").read_text()))
    client = k8s.ApiClient()
    objs = {}
    for doc in docs:
        obj = client.deserialize(_Response(doc), f"V1{doc['kind']}")
        assert client.sanitize_for_serialization(obj) == doc, f"{doc['kind']}: a field the client does not know"
        objs[doc["kind"]] = obj
    pvc = objs["PersistentVolumeClaim"]
    assert pvc.metadata.name == SETTINGS.pytorchjob.pvc and pvc.spec.access_modes == ["ReadWriteMany"]
    (rule,) = objs["Role"].rules
    assert rule.api_groups == ["kubeflow.org"] and "pytorchjobs" in rule.resources
    assert {"create", "get", "delete"} <= set(rule.verbs)
    binding = objs["RoleBinding"]
    assert binding.role_ref.name == objs["Role"].metadata.name and binding.subjects[0].kind == "ServiceAccount"
