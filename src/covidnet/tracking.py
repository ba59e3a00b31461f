"""MLflow set-up and provenance shared by the stages that track runs.

The default store is SQLite in the repository (``mlflow.tracking_uri`` in params, e.g.
``sqlite:///mlflow.db``) with artifacts in a local folder (``mlflow.artifact_root``);
``MLFLOW_TRACKING_URI`` in the environment overrides it (:func:`mlflow_params`) (a tracking server with PostgreSQL
and S3 artifacts in a cluster). SQLite locks under concurrent writers: one writer at a time,
or a server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MlflowParams:
    """The ``mlflow`` section of params.yaml."""

    tracking_uri: str
    experiment: str
    artifact_root: str
    registered_model: str


def mlflow_params(params: dict[str, Any]) -> MlflowParams:
    """The ``mlflow`` section of merged params, with ``MLFLOW_TRACKING_URI`` overriding the store.

    Read where a command starts: ``mlflow.set_tracking_uri`` itself writes that variable,
    so later in the same process it no longer tells what the user asked for.
    """
    import dataclasses

    from covidnet.params import section

    base = section(params, "mlflow", MlflowParams)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return dataclasses.replace(base, tracking_uri=uri) if uri else base


#: The experiment tag MLflow's UI reads to open an experiment on its model-training view (not the GenAI one).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def configure(params: MlflowParams) -> str:
    """Point MLflow at ``params.tracking_uri`` and the experiment; return the experiment id.

    A new experiment gets ``params.artifact_root`` (made absolute: MLflow stores local artifact
    locations as absolute paths) as its artifact location when the store is local, and the tag
    that makes MLflow's UI show it as model training (:data:`EXPERIMENT_KIND`).
    """
    import mlflow

    uri = params.tracking_uri
    mlflow.set_tracking_uri(uri)
    existing = mlflow.get_experiment_by_name(params.experiment)
    if existing is not None:
        for key, value in EXPERIMENT_KIND.items():
            if existing.tags.get(key) != value:
                mlflow.MlflowClient().set_experiment_tag(existing.experiment_id, key, value)
        return existing.experiment_id
    location = None
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        location = Path(params.artifact_root).resolve().as_uri()
    return mlflow.create_experiment(params.experiment, artifact_location=location, tags=EXPERIMENT_KIND)


def flatten(prefix: str, obj: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``; lists and tuples become strings."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
    else:
        out[prefix] = str(list(obj)) if isinstance(obj, (list, tuple)) else obj
    return out


#: What decides a run's result besides the data: a change here makes the commit ``-dirty``. The
#: stages' own outputs (``reports/``, ``dvc.lock``), which ``dvc repro`` rewrites before training
#: starts, do not.
CODE_PATHS = ("src", "params.yaml", "dvc.yaml", "pyproject.toml", "requirements.lock", "scripts")


def git_commit(cwd: Path | str = ".") -> str:
    """The checked-out commit (with ``-dirty`` when :data:`CODE_PATHS` have changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def data_version(out_path: Path | str, lock: Path | str = "dvc.lock") -> str:
    """The DVC hash of ``out_path`` from ``dvc.lock``, or a hash of its ``index.csv``.

    The second form identifies the tensors too: their file names carry the series UID and
    the preprocessing parameter key.
    """
    import yaml

    out_path = Path(out_path)
    lock = Path(lock)
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                if Path(out.get("path", "")) == out_path and out.get("md5"):
                    return f"dvc:{out['md5']}"
    index = out_path / "index.csv"
    if index.is_file():
        return "sha256:" + hashlib.sha256(index.read_bytes()).hexdigest()[:16]
    return "unknown"


#: The training run's record beside the stage's report (not in the model folder, whose hash
#: must not change when identical training runs again).
RUN_RECORD = "run.json"


def write_run_record(folder: Path | str, *, run_id: str | None, git_commit: str, model_digest: str) -> Path:
    """Write ``folder/run.json``: the MLflow run that trained the model of ``model_digest``, and the commit."""
    from covidnet.atomic import write_json

    path = Path(folder) / RUN_RECORD
    write_json(path, {"mlflow_run_id": run_id, "git_commit": git_commit, "model": model_digest})
    return path


def run_of(folder: Path | str, model_digest: str) -> str | None:
    """The MLflow run id of ``folder/run.json`` when it records the model of ``model_digest``, else None.

    A record of another model (a folder trained elsewhere, or retrained since) names no run of
    this one: nothing is logged into, or registered from, the wrong run.
    """
    import json

    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record.get("mlflow_run_id") if record.get("model") == model_digest else None

