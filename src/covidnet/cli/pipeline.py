"""``covidnet pipeline compile|run --local|submit|pytorchjob``: flags in, :mod:`covidnet.kfp.runner` calls out."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from covidnet.params import DEFAULT_PARAMS, ParamsError

log = logging.getLogger(__name__)


DESCRIPTION = ("compile: write the pipelines' IR YAML (pipelines/), resources, retries, secrets and volumes from "
               "the `pipeline` params; run --local: run a pipeline here with kfp.local (MLflow in a temporary SQLite "
               "store); submit --host URL [--experiment NAME] [--schedule CRON]: send a run or a recurring run to "
               "Kubeflow Pipelines; pytorchjob: write the Kubeflow PyTorchJob that trains across nodes. The profile, "
               "thresholds and cohort revision are checked first.")


def add_arguments(parser: Any, command: str = "pipeline") -> None:
    """The ``covidnet pipeline`` subcommand's arguments."""
    parser.description = DESCRIPTION
    from covidnet.kfp.runner import PIPELINES

    names = ", ".join(f"{k} ({v.summary})" for k, v in PIPELINES.items())
    parser.add_argument("action", choices=("compile", "run", "submit", "pytorchjob"),
                        help="compile: write the pipelines' IR YAML (pipelines/); run --local: a pipeline on this "
                             "machine (kfp.local); submit --host URL: a run (or with --schedule a recurring run) on "
                             "Kubeflow Pipelines; pytorchjob: the PyTorchJob manifest of pipeline.pytorchjob")
    parser.add_argument("--pipeline", default=None,
                        help=f"which pipeline: {names}. compile: default all; run/submit: default covidnet with "
                             "--cohort-repo, else covidnet-synthetic")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--profile", default=None, help="profile the run uses (default: the file's `profile` key)")
    parser.add_argument("--min-auc-lower", type=float, default=None,
                        help="promotion gate: lower CI bound of test AUC (default: promote.min_auc_lower)")
    parser.add_argument("--min-sensitivity-lower", type=float, default=None,
                        help="promotion gate: lower CI bound of sensitivity (default: promote.min_sensitivity_lower)")
    parser.add_argument("--nproc-per-node", default=None,
                        help="train: torchrun processes in the train pod, 'auto' (one per visible GPU) or a count "
                             "(default: pipeline.train.nproc_per_node)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="train: a folder of the train pod (a mounted PVC) or an s3://bucket/prefix keeping "
                             "checkpoints, so a retried task resumes (default: pipeline.train.checkpoint_dir; '' = none)")
    parser.add_argument("--out", "--output", type=Path, default=None,
                        help="compile: folder for the YAML files (default: pipelines/); pytorchjob: the YAML file "
                             "(default: stdout)")
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
                        help="run/submit: git + DVC repository (URL or path) of the cohort (pipelines covidnet, "
                             "covidnet-pytorchjob)")
    parser.add_argument("--cohort-revision", default=None,
                        help="run/submit: git revision (branch, tag, full commit) of the cohort (default: main); "
                             "submit checks it with git ls-remote when the repository can be reached")
    parser.add_argument("--name", default="covidnet-train", help="pytorchjob: the job's name (default: %(default)s)")
    parser.add_argument("--namespace", default=None,
                        help="pytorchjob: namespace (default: pipeline.pytorchjob.namespace, else kubectl's)")
    parser.add_argument("--workdir", default=None,
                        help="pytorchjob: the job's folder on the PVC (default: MOUNT_PATH/NAME), holding "
                             "params.yaml and preprocessed/; model/, report/, checkpoints/ are written there")


def _arguments(args: Any, **extra: Any):
    from covidnet.kfp.runner import check_arguments

    return check_arguments(args.params, args.profile, min_auc_lower=args.min_auc_lower,
                           min_sensitivity_lower=args.min_sensitivity_lower, cohort_repo=args.cohort_repo,
                           cohort_revision=args.cohort_revision, nproc_per_node=args.nproc_per_node,
                           checkpoint_dir=args.checkpoint_dir, **extra)


def run(args: Any) -> int:
    """Carry out ``covidnet pipeline ACTION``."""
    from covidnet.kfp import runner as kp
    if args.action == "compile":
        names = [kp.choose_pipeline(args.pipeline)] if args.pipeline else list(kp.PIPELINES)
        _arguments(args)
        out_dir = args.out or kp.PIPELINES_DIR
        for name in names:
            path = kp.compile_pipeline(name, Path(out_dir) / kp.PIPELINES[name].yaml, args.params, args.profile)
            print(f"pipeline: compiled {name} -> {path}")
        return 0
    if args.action == "pytorchjob":
        return _pytorchjob(args)
    if args.action == "run":
        if not args.local:
            raise ParamsError("pipeline run: only --local is supported here; use `pipeline submit --host URL` "
                              "for a cluster")
        name = kp.choose_pipeline(args.pipeline, args.cohort_repo)
        root = (args.pipeline_root or Path(tempfile.mkdtemp(prefix="covidnet-kfp-local-"))).resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = args.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        pargs = _arguments(args, mlflow={"tracking_uri": uri, "artifact_root": str(root / "mlruns")})
        try:
            outputs = kp.run_local(pargs, root / "runs", name=name)
        except RuntimeError as exc:  # kfp.local: "... Inner task failed: <task>"; the task's log says why
            print(f"covidnet pipeline: error: {exc} (the task's log above ends with the reason)", file=sys.stderr)
            return 1
        done = f"pipeline: local run of {name} (profile {pargs.profile}) finished"
        if "decision" in outputs:  # the training pipelines end with the promotion gate
            decision = json.loads(Path(outputs["decision"].path).read_text())
            alias = "champion" if decision["promoted"] else "challenger"
            done += f"; {decision['registered_model']} version {decision['version']} is {alias} in {uri}"
        print(f"{done}; artifacts under {root / 'runs'}")
        return 0
    if not args.host:
        raise ParamsError("pipeline submit: --host URL is required (the Kubeflow Pipelines API endpoint)")
    if args.schedule:
        kp.kfp_cron(args.schedule)
    name = kp.choose_pipeline(args.pipeline, args.cohort_repo)
    pargs = _arguments(args)
    kp.pipeline_arguments(kp.build_pipeline(name, pargs.settings), pargs)  # before asking any remote
    note = kp.check_cohort_revision(pargs)
    if note:
        log.warning("%s", note)
        print(f"pipeline: {note}")
    result = kp.submit(args.host, pargs, name, experiment=args.experiment, schedule=args.schedule)
    what = "recurring run" if args.schedule else "run"
    print(f"pipeline: submitted a {what} of {name} to {args.host} (experiment {args.experiment}): "
          f"{getattr(result, 'run_id', None) or getattr(result, 'recurring_run_id', None) or result}")
    return 0


def _pytorchjob(args: Any) -> int:
    import yaml

    from covidnet.atomic import write_text
    from covidnet.kfp.params import pipeline_params
    from covidnet.kfp.pytorchjob import pytorchjob_manifest
    from covidnet.params import load_params, profile_name

    params = load_params(args.params, profile=args.profile)
    settings = pipeline_params(params)
    workdir = args.workdir or str(Path(settings.pytorchjob.mount_path) / args.name)
    manifest = pytorchjob_manifest(settings.pytorchjob, settings.secrets, name=args.name, profile=profile_name(params),
                                   workdir=workdir, namespace=args.namespace)
    text = yaml.safe_dump(manifest, sort_keys=False)
    if args.out:
        write_text(args.out, text)
        print(f"pipeline: wrote PyTorchJob {args.name} ({settings.pytorchjob.nodes} node(s) x "
              f"{settings.pytorchjob.nproc_per_node} process(es)) to {args.out}")
    else:
        print(text, end="")
    return 0
