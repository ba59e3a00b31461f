"""Kubeflow Pipelines helpers: what the components call, and compile / run locally / submit.

The components (``components/stages.py``) are thin: each turns its artifacts into a
:class:`covidnet.stages.Paths` and calls one ``covidnet.stages.run_*`` function. The little
they share lives here (the core never imports kfp; this module imports it only inside the
functions that need it): :func:`stage_params` reads the params file content a component
received, :func:`log_metrics` copies a metrics JSON into a KFP ``Metrics`` artifact.

``covidnet pipeline compile|run --local|submit`` (``covidnet.cli``) calls
:func:`compile_pipeline`, :func:`run_local` and :func:`submit`. Every argument is checked by
loading the params with the chosen profile and overrides before anything is compiled or
sent (:func:`check_arguments`), so a bad profile or threshold fails here, not in a cluster.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.params import DEFAULT_PARAMS, ParamsError, load_params, section

REPO = Path(__file__).resolve().parents[2]
PIPELINE_YAML = REPO / "pipelines" / "covidnet_pipeline.yaml"
SYNTHETIC_PIPELINE_YAML = REPO / "pipelines" / "covidnet_synthetic_pipeline.yaml"


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
        params = load_params(path, profile=profile or None)
    params["_source"] = f"params_yaml (profile {params['profile']})"
    for name, values in (overrides or {}).items():
        kept = {k: v for k, v in values.items() if v is not None}
        if kept:
            params[name] = {**params.get(name, {}), **kept}
    # The sections the pipeline overrides are checked here, where the arguments enter.
    from covidnet.promote import PromoteParams

    section(params, "promote", PromoteParams)
    return params


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


# --- compile / run / submit ------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineArguments:
    """The arguments of one pipeline run (checked by :func:`check_arguments`)."""

    profile: str
    params_yaml: str
    min_auc_lower: float | None = None
    min_sensitivity_lower: float | None = None
    cohort_repo: str = ""
    cohort_revision: str = "main"

    def as_dict(self) -> dict[str, Any]:
        args: dict[str, Any] = {"profile": self.profile, "params_yaml": self.params_yaml}
        if self.min_auc_lower is not None:
            args["min_auc_lower"] = self.min_auc_lower
        if self.min_sensitivity_lower is not None:
            args["min_sensitivity_lower"] = self.min_sensitivity_lower
        if self.cohort_repo:
            args["cohort_repo"] = self.cohort_repo
            args["cohort_revision"] = self.cohort_revision
        return args


def check_arguments(params_path: Path | str = DEFAULT_PARAMS, profile: str | None = None,
                    min_auc_lower: float | None = None, min_sensitivity_lower: float | None = None,
                    cohort_repo: str = "", cohort_revision: str = "main",
                    mlflow: dict[str, Any] | None = None) -> PipelineArguments:
    """Read the params file, apply profile and thresholds as the components will, or raise.

    Args:
        mlflow: overrides of the ``mlflow`` section written into the params text the
            components receive (``run --local`` points it at a temporary store).

    Raises:
        ParamsError: missing file, unknown profile, a threshold outside [0, 1].
    """
    import yaml

    params_path = Path(params_path)
    load_params(params_path, profile=profile)  # file + profile checked with the file's own name in errors
    text = params_path.read_text()
    if mlflow:
        raw = yaml.safe_load(text)
        raw["mlflow"] = {**raw.get("mlflow", {}), **mlflow}
        text = yaml.safe_dump(raw, sort_keys=False)
    name = profile or load_params(params_path)["profile"]
    for field, value in (("min_auc_lower", min_auc_lower), ("min_sensitivity_lower", min_sensitivity_lower)):
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ParamsError(f"--{field.replace('_', '-')}: {value!r} is not in [0, 1]")
    stage_params(text, name, {"promote": {"min_auc_lower": min_auc_lower,
                                          "min_sensitivity_lower": min_sensitivity_lower}})
    return PipelineArguments(profile=name, params_yaml=text, min_auc_lower=min_auc_lower,
                             min_sensitivity_lower=min_sensitivity_lower, cohort_repo=cohort_repo,
                             cohort_revision=cohort_revision)


def _pipelines_module():
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from pipelines import covidnet_pipeline

    return covidnet_pipeline


def compile_pipeline(out: Path | str | None = None, synthetic: bool = False) -> Path:
    """Compile the pipeline (DVC cohort, or with ``synthetic`` the synthetic-cohort demo) to IR YAML.

    ``out`` defaults to the committed ``pipelines/covidnet_pipeline.yaml`` (or
    ``covidnet_synthetic_pipeline.yaml``).
    """
    from kfp import compiler

    mod = _pipelines_module()
    out = Path(out) if out is not None else (SYNTHETIC_PIPELINE_YAML if synthetic else PIPELINE_YAML)
    out.parent.mkdir(parents=True, exist_ok=True)
    fn = mod.covidnet_synthetic if synthetic else mod.covidnet
    compiler.Compiler().compile(pipeline_func=fn, package_path=str(out))
    return out


def run_local(args: PipelineArguments, pipeline_root: Path | str) -> dict[str, Any]:
    """Run the synthetic-cohort pipeline in this machine's processes (``kfp.local``).

    Lightweight components only, each in a subprocess of this Python (``use_venv=False``,
    so the installed ``covidnet`` is used). Resources, accelerators and retries are ignored
    locally. Returns the pipeline's output artifacts by name.
    """
    import kfp.local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
                   raise_on_error=True)
    mod = _pipelines_module()
    kwargs = args.as_dict()
    kwargs.pop("cohort_repo", None)
    kwargs.pop("cohort_revision", None)
    task = mod.covidnet_synthetic(**kwargs)
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


def submit(host: str, args: PipelineArguments, experiment: str = "covidnet", schedule: str | None = None,
           package: Path | str | None = None, run_name: str | None = None) -> Any:
    """Compile and submit to a Kubeflow Pipelines endpoint: one run, or a recurring run on a cron schedule.

    Without ``args.cohort_repo`` the synthetic-cohort pipeline is sent (a demo); with it, the
    pipeline that fetches the DVC-versioned cohort at ``args.cohort_revision``.
    """
    import kfp

    synthetic = not args.cohort_repo
    if package is None:
        package = Path(tempfile.mkdtemp(prefix="covidnet-kfp-")) / (
            "covidnet_synthetic_pipeline.yaml" if synthetic else "covidnet_pipeline.yaml")
    package = compile_pipeline(package, synthetic=synthetic)
    client = kfp.Client(host=host)
    arguments = args.as_dict()
    name = run_name or f"covidnet-{args.profile}"
    if schedule:
        try:
            exp = client.get_experiment(experiment_name=experiment)
        except Exception:  # noqa: BLE001 - kfp raises a plain ValueError / ApiException when absent
            exp = client.create_experiment(name=experiment)
        return client.create_recurring_run(experiment_id=exp.experiment_id, job_name=name,
                                           cron_expression=kfp_cron(schedule),
                                           pipeline_package_path=str(package), params=arguments,
                                           enable_caching=True)
    return client.create_run_from_pipeline_package(str(package), arguments=arguments, run_name=name,
                                                   experiment_name=experiment, enable_caching=True)


# --- `covidnet pipeline ...` -----------------------------------------------------------------------

def add_arguments(parser: Any) -> None:
    """The ``covidnet pipeline`` subcommand's arguments (``covidnet.cli`` calls this)."""
    parser.add_argument("action", choices=("compile", "run", "submit"),
                        help="compile: write pipelines/covidnet_pipeline.yaml and covidnet_synthetic_pipeline.yaml; "
                             "run --local: the synthetic-cohort pipeline on this machine (kfp.local); "
                             "submit --host URL: a run (or with --schedule a recurring run) on Kubeflow Pipelines")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--profile", default=None, help="profile the run uses (default: the file's `profile` key)")
    parser.add_argument("--min-auc-lower", type=float, default=None,
                        help="promotion gate: lower CI bound of test AUC (default: promote.min_auc_lower)")
    parser.add_argument("--min-sensitivity-lower", type=float, default=None,
                        help="promotion gate: lower CI bound of sensitivity (default: promote.min_sensitivity_lower)")
    parser.add_argument("--out", type=Path, default=None,
                        help="compile: folder for the YAML files (default: pipelines/)")
    parser.add_argument("--local", action="store_true", help="run: on this machine with kfp.local (required)")
    parser.add_argument("--pipeline-root", type=Path, default=None,
                        help="run --local: where artifacts go (default: a new temporary folder)")
    parser.add_argument("--tracking-uri", default=None,
                        help="run --local: MLflow store (default: sqlite in the pipeline root)")
    parser.add_argument("--host", default=None, help="submit: the Kubeflow Pipelines API endpoint URL")
    parser.add_argument("--experiment", default="covidnet", help="submit: experiment name (default: %(default)s)")
    parser.add_argument("--schedule", default=None,
                        help="submit: cron expression ('0 3 * * 1' or KFP's 6 fields) for a recurring run")
    parser.add_argument("--cohort-repo", default="",
                        help="submit: DVC repository URL of the cohort (default: none, the synthetic pipeline)")
    parser.add_argument("--cohort-revision", default="main", help="submit: git revision of the cohort")


def main(args: Any) -> int:
    """Carry out ``covidnet pipeline ACTION``."""
    thresholds = {"min_auc_lower": args.min_auc_lower, "min_sensitivity_lower": args.min_sensitivity_lower}
    if args.action == "compile":
        check_arguments(args.params, args.profile, **thresholds)
        out = args.out or PIPELINE_YAML.parent
        for synthetic, default in ((False, PIPELINE_YAML), (True, SYNTHETIC_PIPELINE_YAML)):
            print(f"pipeline: compiled {compile_pipeline(Path(out) / default.name, synthetic=synthetic)}")
        return 0
    if args.action == "run":
        if not args.local:
            raise ParamsError("pipeline run: only --local is supported here; use `pipeline submit --host URL` "
                              "for a cluster")
        root = (args.pipeline_root or Path(tempfile.mkdtemp(prefix="covidnet-kfp-local-"))).resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = args.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        pargs = check_arguments(args.params, args.profile, **thresholds,
                                mlflow={"tracking_uri": uri, "artifact_root": str(root / "mlruns")})
        outputs = run_local(pargs, root / "runs")
        decision = json.loads(Path(outputs["decision"].path).read_text())
        alias = "champion" if decision["promoted"] else "challenger"
        print(f"pipeline: local run of profile {pargs.profile} finished; {decision['registered_model']} version "
              f"{decision['version']} is {alias} in {uri}; artifacts under {root / 'runs'}")
        return 0
    if not args.host:
        raise ParamsError("pipeline submit: --host URL is required (the Kubeflow Pipelines API endpoint)")
    if args.schedule:
        kfp_cron(args.schedule)
    pargs = check_arguments(args.params, args.profile, **thresholds, cohort_repo=args.cohort_repo,
                            cohort_revision=args.cohort_revision)
    result = submit(args.host, pargs, experiment=args.experiment, schedule=args.schedule)
    what = "recurring run" if args.schedule else "run"
    print(f"pipeline: submitted a {what} to {args.host} (experiment {args.experiment}): "
          f"{getattr(result, 'run_id', None) or getattr(result, 'recurring_run_id', None) or result}")
    return 0
