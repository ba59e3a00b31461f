"""Kubeflow Pipelines helpers: what the components call, and compile / run locally / submit.

The components (``components/``) are thin: each turns its artifacts into a
:class:`covidnet.paths.Paths` and calls its stage's ``run_*`` function. The little
they share lives here (the core never imports kfp; this module imports it only inside the
functions that need it): :func:`stage_params` reads the params file content a component
received, :func:`stage_failure` removes a failed stage's outputs and names the stage,
:func:`log_metrics` copies a metrics JSON into a KFP ``Metrics`` artifact.

The pipelines are listed by name in :data:`PIPELINES`; each is built from the ``pipeline``
section of params (resources, retries, secrets, volumes) when it is compiled, run or
submitted. ``covidnet pipeline ...`` (:mod:`covidnet.cli.pipeline`) calls
:func:`compile_pipeline`, :func:`run_local` and :func:`submit`; every argument is checked
first (:func:`check_arguments`), so a bad profile, threshold or cohort revision fails here,
not in a cluster.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.errors import CovidnetError
from covidnet.kfp.params import PipelineParams, pipeline_params
from covidnet.params import DEFAULT_PARAMS, ParamsError, load_params, override, params_file, section
from covidnet.train.launch import check_checkpoint_dir, parse_nproc

log = logging.getLogger(__name__)

#: Where ``covidnet pipeline compile`` writes by default: ``pipelines/`` of the working folder
#: (a source checkout commits the compiled YAML there); ``--output DIR`` elsewhere.
PIPELINES_DIR = Path("pipelines")


@dataclass(frozen=True)
class PipelineEntry:
    """One pipeline: where its builder lives and where its compiled YAML is committed.

    ``builder`` names, in ``module``, either a function of :class:`PipelineParams` that
    returns a ``@dsl.pipeline`` (built when needed, from the params), or a ``@dsl.pipeline``
    itself.
    """

    module: str
    builder: str
    yaml: str
    summary: str

    @property
    def path(self) -> Path:
        return PIPELINES_DIR / self.yaml


#: The pipelines ``covidnet pipeline compile|run|submit --pipeline NAME`` knows (add one per line).
PIPELINES: dict[str, PipelineEntry] = {
    "covidnet": PipelineEntry("covidnet.kfp.pipelines.covidnet", "covidnet", "covidnet_pipeline.yaml",
                              "the cohort from a DVC repo at a git revision; train in one pod, torchrun over its GPUs"),
    "covidnet-synthetic": PipelineEntry("covidnet.kfp.pipelines.covidnet", "covidnet_synthetic",
                                        "covidnet_synthetic_pipeline.yaml", "a SYNTHETIC cohort, the demo"),
    "covidnet-pytorchjob": PipelineEntry("covidnet.kfp.pipelines.covidnet", "covidnet_pytorchjob",
                                         "covidnet_pytorchjob_pipeline.yaml",
                                         "as covidnet, training across nodes as a Kubeflow PyTorchJob"),
    "covidnet-monitor": PipelineEntry("covidnet.kfp.pipelines.monitor", "covidnet_monitor", "monitor_pipeline.yaml",
                                      "the prediction log's drift against the served references (schedule it)"),
}


# --- inside the components ---------------------------------------------------------------------

def stage_params(params_yaml: str, profile: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Merged params from the content of a params file, a profile and section overrides.

    Args:
        params_yaml: the whole params file as text (components get it as a string parameter,
            so each is self-contained).
        profile: the profile to apply (must be defined in the file, or ``default``).
        overrides: ``{section: {key: value}}`` applied after the profile; ``None`` values
            are skipped (a pipeline parameter left unset keeps the file's value).

    Raises:
        ParamsError: unknown profile, or a value the stage's section rejects (e.g. a
            promotion threshold outside [0, 1]).
    """
    if not params_yaml.strip():
        raise ParamsError("params_yaml: empty; pass the content of params.yaml")
    with tempfile.TemporaryDirectory(prefix="covidnet-params-") as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(params_yaml)
        source = f"params_yaml (profile {profile})" if profile else "params_yaml"
        params = load_params(path, profile=profile or None, source=source)
    params = override(params, overrides or {})
    # The sections the pipeline overrides are checked here, where the arguments enter.
    from covidnet.promote.gate import PromoteParams

    section(params, "promote", PromoteParams)
    return params


class StageFailed(CovidnetError, RuntimeError):
    """A pipeline stage failed; the message is ``"<stage> failed: <why>"``."""


@contextlib.contextmanager
def stage_failure(stage: str, *outputs: str | Path) -> Iterator[None]:
    """Run a component's body; on an error remove its ``outputs`` and raise :class:`StageFailed`.

    The core writes each output atomically, but a stage with several outputs can fail after
    writing some: none of them is left behind, so no later task (or person) reads a partial
    result. The error names the stage and carries the original one as its cause.
    """
    try:
        yield
    except BaseException as exc:
        for out in outputs:
            path = Path(out)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        log.error("%s failed: %s", stage, exc)
        raise StageFailed(f"{stage} failed: {type(exc).__name__}: {exc}") from exc


def log_metrics(metrics_artifact: Any, source: Path | str | dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Log every finite number of a (nested) metrics JSON into a KFP ``Metrics`` artifact."""
    from covidnet.tracking import flatten

    data = json.loads(Path(source).read_text()) if not isinstance(source, dict) else source
    logged = {}
    for key, value in flatten(prefix, data).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        metrics_artifact.log_metric(key, float(value))
        logged[key] = float(value)
    return logged


def log_classification(artifact: Any, set_dir: Path | str) -> None:
    """ROC curve (``roc.csv``) and confusion matrix (``metrics.json``) of one evaluated set."""
    import pandas as pd

    set_dir = Path(set_dir)
    roc = pd.read_csv(set_dir / "roc.csv")
    thresholds = [min(max(float(t), -1e308), 1e308) for t in roc["threshold"]]  # JSON has no infinity
    artifact.log_roc_curve([float(x) for x in roc["fpr"]], [float(x) for x in roc["tpr"]], thresholds)
    c = json.loads((set_dir / "metrics.json").read_text())["confusion"]
    artifact.log_confusion_matrix(["non_covid", "covid"], [[int(c["tn"]), int(c["fp"])], [int(c["fn"]), int(c["tp"])]])


# --- arguments -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineArguments:
    """The arguments of one pipeline run (checked by :func:`check_arguments`).

    ``None`` (or ``""`` for the cohort) means "not given": the pipeline's default applies.
    """

    profile: str
    params_yaml: str
    settings: PipelineParams
    min_auc_lower: float | None = None
    min_sensitivity_lower: float | None = None
    cohort_repo: str = ""
    cohort_revision: str | None = None
    nproc_per_node: str | None = None
    checkpoint_dir: str | None = None

    def given(self) -> dict[str, Any]:
        """The pipeline parameters this run sets, by name."""
        args: dict[str, Any] = {"profile": self.profile, "params_yaml": self.params_yaml}
        for name in ("min_auc_lower", "min_sensitivity_lower", "cohort_revision", "nproc_per_node",
                     "checkpoint_dir"):
            if getattr(self, name) is not None:
                args[name] = getattr(self, name)
        if self.cohort_repo:
            args["cohort_repo"] = self.cohort_repo
        return args


def check_arguments(params_path: Path | str = DEFAULT_PARAMS, profile: str | None = None,
                    min_auc_lower: float | None = None, min_sensitivity_lower: float | None = None,
                    cohort_repo: str = "", cohort_revision: str | None = None, nproc_per_node: str | None = None,
                    checkpoint_dir: str | None = None, mlflow: dict[str, Any] | None = None) -> PipelineArguments:
    """Read the params file, apply profile and thresholds as the components will, or raise.

    Args:
        mlflow: overrides of the ``mlflow`` section written into the params text the
            components receive (``run --local`` points it at a temporary store).

    Raises:
        ParamsError: missing file, unknown profile, a threshold outside [0, 1], a bad
            process count or checkpoint folder, a bad ``pipeline`` section.
    """
    import yaml

    params_path = params_file(params_path)
    merged = load_params(params_path, profile=profile)  # file + profile checked with the file's own name in errors
    settings = pipeline_params(merged)
    text = params_path.read_text()
    if mlflow:
        raw = yaml.safe_load(text)
        raw["mlflow"] = {**raw.get("mlflow", {}), **mlflow}
        text = yaml.safe_dump(raw, sort_keys=False)
    for field, value in (("min_auc_lower", min_auc_lower), ("min_sensitivity_lower", min_sensitivity_lower)):
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ParamsError(f"--{field.replace('_', '-')}: {value!r} is not in [0, 1]")
    stage_params(text, merged["profile"], {"promote": {"min_auc_lower": min_auc_lower,
                                                       "min_sensitivity_lower": min_sensitivity_lower}})
    if nproc_per_node is not None:
        nproc_per_node = str(parse_nproc(nproc_per_node, "--nproc-per-node"))
    if checkpoint_dir is not None:
        check_checkpoint_dir(checkpoint_dir, "--checkpoint-dir")
    if cohort_revision is not None and not cohort_revision.strip():
        raise ParamsError("--cohort-revision: empty")
    return PipelineArguments(profile=merged["profile"], params_yaml=text, settings=settings,
                             min_auc_lower=min_auc_lower, min_sensitivity_lower=min_sensitivity_lower,
                             cohort_repo=cohort_repo, cohort_revision=cohort_revision,
                             nproc_per_node=nproc_per_node, checkpoint_dir=checkpoint_dir)


def choose_pipeline(name: str | None, cohort_repo: str = "") -> str:
    """The pipeline to use: ``name``, else ``covidnet`` with a cohort repository, else the synthetic demo."""
    name = name or ("covidnet" if cohort_repo else "covidnet-synthetic")
    if name not in PIPELINES:
        raise ParamsError(f"--pipeline: {name!r} is not one of {', '.join(PIPELINES)}")
    return name


def build_pipeline(name: str, settings: PipelineParams) -> Any:
    """The ``@dsl.pipeline`` called ``name``, built with ``settings``."""
    entry = PIPELINES[choose_pipeline(name)]
    obj = getattr(importlib.import_module(entry.module), entry.builder)
    return obj if hasattr(obj, "component_spec") else obj(settings)


def pipeline_arguments(pipeline: Any, args: PipelineArguments) -> dict[str, Any]:
    """The run's arguments that ``pipeline`` takes; raise for one it does not take or a required one missing."""
    inputs = pipeline.component_spec.inputs or {}
    given = args.given()
    name = pipeline.component_spec.name
    extra = sorted(k for k in given if k not in inputs and k not in ("profile", "params_yaml"))
    if extra:
        raise ParamsError(f"pipeline {name}: takes no {', '.join('--' + k.replace('_', '-') for k in extra)}")
    missing = sorted(k for k, spec in inputs.items() if k not in given and spec.default is None and not spec.optional)
    if missing:
        raise ParamsError(f"pipeline {name}: {', '.join('--' + k.replace('_', '-') for k in missing)} required")
    return {k: v for k, v in given.items() if k in inputs}


# --- compile / run / submit ------------------------------------------------------------------------

def compile_pipeline(name: str, out: Path | str | None = None, params_path: Path | str = DEFAULT_PARAMS,
                     profile: str | None = None) -> Path:
    """Compile pipeline ``name`` with the ``pipeline`` section of ``params_path`` to IR YAML.

    ``out`` defaults to the committed file (``pipelines/<entry.yaml>``).
    """
    from kfp import compiler

    settings = pipeline_params(load_params(params_path, profile=profile))
    out = Path(out) if out is not None else PIPELINES[choose_pipeline(name)].path
    from covidnet.atomic import write_text

    with tempfile.TemporaryDirectory(prefix="covidnet-compile-") as tmp:
        staged = Path(tmp) / f"{out.stem}.yaml"
        compiler.Compiler().compile(pipeline_func=build_pipeline(name, settings), package_path=str(staged))
        write_text(out, staged.read_text())
    return out


def run_local(args: PipelineArguments, pipeline_root: Path | str, name: str = "covidnet-synthetic") -> dict[str, Any]:
    """Run a pipeline in this machine's processes (``kfp.local``).

    Lightweight components only, each in a subprocess of this Python (``use_venv=False``,
    so the installed ``covidnet`` is used). Resources, accelerators, secrets, volumes and
    retries are ignored locally. Returns the pipeline's output artifacts by name.

    Raises:
        RuntimeError: kfp.local's "Pipeline ... finished with status FAILURE. Inner task
            failed: <task>"; the task's log above it ends with "<stage> failed: <why>".
    """
    import kfp.local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
                   raise_on_error=True)
    pipeline = build_pipeline(name, args.settings)
    task = pipeline(**pipeline_arguments(pipeline, args))
    return dict(task.outputs)


def kfp_cron(schedule: str) -> str:
    """A 5-field cron (``m h dom mon dow``) gets the seconds field KFP expects; 6 fields pass through."""
    fields = schedule.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise ParamsError(f"--schedule: {schedule!r} is not a cron expression (5 fields 'm h dom mon dow', or 6 with "
                      "seconds first)")


def check_cohort_revision(args: PipelineArguments) -> str | None:
    """Before submitting: is the cohort revision in the cohort repository? (``pipeline.submit``).

    Returns:
        A note for the user when the repository could not be asked (the run's
        ``fetch_cohort`` task will tell), else None.

    Raises:
        RevisionError: the repository answered and has no such revision.
    """
    if not args.cohort_repo or not args.settings.submit.check_revision:
        return None
    from covidnet.data.fetch import check_revision

    revision = args.cohort_revision or "main"
    found = check_revision(args.cohort_repo, revision, timeout_s=args.settings.submit.git_timeout_s)
    if found.checked:
        log.info("%s", found.detail)
        return None
    return f"cohort revision {revision!r} not checked: {found.detail}"


def submit(host: str, args: PipelineArguments, name: str, experiment: str = "covidnet", schedule: str | None = None,
           package: Path | str | None = None, run_name: str | None = None) -> Any:
    """Compile pipeline ``name`` and submit it to a Kubeflow Pipelines endpoint: one run, or a recurring run.

    The arguments are checked against the pipeline's parameters first (none it does not
    take, none it needs missing).
    """
    import kfp
    from kfp import compiler

    pipeline = build_pipeline(name, args.settings)
    arguments = pipeline_arguments(pipeline, args)
    with contextlib.ExitStack() as stack:
        if package is None:  # a temporary package, for the upload only
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="covidnet-kfp-"))
            package = Path(tmp) / PIPELINES[name].yaml
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(package))
        client = kfp.Client(host=host)
        run_name = run_name or f"{name}-{args.profile}"
        if schedule:
            try:
                exp = client.get_experiment(experiment_name=experiment)
            except Exception:  # noqa: BLE001 - kfp raises a plain ValueError / ApiException when absent
                exp = client.create_experiment(name=experiment)
            return client.create_recurring_run(experiment_id=exp.experiment_id, job_name=run_name,
                                               cron_expression=kfp_cron(schedule),
                                               pipeline_package_path=str(package), params=arguments,
                                               enable_caching=True)
        return client.create_run_from_pipeline_package(str(package), arguments=arguments, run_name=run_name,
                                                       experiment_name=experiment, enable_caching=True)
