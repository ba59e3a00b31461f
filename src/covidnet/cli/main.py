"""``covidnet``: one subcommand per pipeline stage and tool; each reads params.yaml and its paths.

The CLI only translates: :data:`COMMANDS` maps each command to its group module, which adds
the command's arguments (``add_arguments(parser, command)``) and carries it out (``run(args)``,
returning the exit status). A known failure (:class:`covidnet.errors.CovidnetError`, or a file
that is not there: ``FileNotFoundError`` names it) becomes a one-paragraph message and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

DESCRIPTION = """\
COVIDNet MLOps: chest CT -> COVID-19 vs other pneumonia (Liu et al., Sci. Rep. 2021).

Stages, in the order dvc.yaml runs them:
  synth       write a SYNTHETIC cohort: DICOM tree + manifest (patients.csv, scans.csv)
  validate    scan the DICOM tree (series + files tables) and run the Great Expectations suites
  exclude     apply the paper's exclusion criteria; cohort, exclusions with reasons, flow counts
  split       patient-level train:val:test 3:1:1 split (+ external test cohort), flow diagram
  preprocess  clip HU, scale to [0,1], resize, crop -> (1, D, C, C) tensors + QC table
  train       COVIDNet (3D DenseNet), Adam + BCE, best epoch by validation AUC, MLflow run
  evaluate    the paper's figures with bootstrap CIs on the test sets; report, plots, metrics
  promote     register the evaluated model in MLflow; the gate moves the `champion` alias

Every number comes from params.yaml (section per stage; `profile` picks overrides from
`profiles`); every path from its `paths` section, overridable per flag.
"""

#: command -> (group module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("covidnet.cli.stages", "write a synthetic DICOM cohort and its manifest"),
    "validate": ("covidnet.cli.stages", "index the DICOM tree and run the data-quality suites"),
    "exclude": ("covidnet.cli.stages", "apply the paper's exclusion criteria"),
    "split": ("covidnet.cli.stages", "patient-level stratified split and the flow diagram"),
    "preprocess": ("covidnet.cli.stages", "series -> (1, D, C, C) tensors and the QC table"),
    "train": ("covidnet.cli.stages", "train COVIDNet on the preprocessed tensors (MLflow-tracked)"),
    "evaluate": ("covidnet.cli.stages", "metrics with bootstrap CIs, ROC, calibration, t-SNE and the report"),
    "promote": ("covidnet.cli.stages", "register the evaluated model; the gate moves the `champion` alias"),
    "model": ("covidnet.cli.model", "inspect the network builders"),
    "serve": ("covidnet.cli.serve", "serve the model over HTTP (KServe ModelServer)"),
    "predict": ("covidnet.cli.serve", "send a DICOM study folder (or an s3:// reference) to a server, print the answer"),
    "pipeline": ("covidnet.cli.pipeline", "the Kubeflow pipelines: compile, run --local, submit --host URL, pytorchjob"),
    "monitor": ("covidnet.cli.monitor", "drift report, PCR feedback, live performance from the prediction log"),
    "pacs": ("covidnet.cli.pacs", "the PACS loop: watch (DICOMweb) or listen (C-STORE), SR and overlay back into the study"),
    "worklist": ("covidnet.cli.pacs", "the reading worklist: studies by COVID-19 probability, QC flags, time waiting"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covidnet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (module, short) in COMMANDS.items():
        p = sub.add_parser(name, help=short)
        importlib.import_module(module).add_arguments(p, name)
    return parser


#: Libraries whose INFO lines are their own business (MLflow's store set-up, Alembic's migrations,
#: Great Expectations' per-expectation lines): warnings only, whatever the command's level.
_QUIET_LIBRARIES = ("mlflow", "alembic", "great_expectations", "urllib3", "botocore")


def configure_logging(quiet: bool) -> None:
    """The command's own lines at INFO (``--quiet``: warnings only); libraries' at WARNING.

    ``--quiet`` (what ``dvc.yaml`` runs) or a stderr that is not a terminal also turns MLflow's
    artifact progress bars off, so a log holds the stages' own lines.
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level when imported
    if quiet or not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``covidnet`` console script."""
    from covidnet.errors import CovidnetError

    args = build_parser().parse_args(argv)
    configure_logging(quiet=getattr(args, "quiet", False))
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except (CovidnetError, FileNotFoundError) as exc:
        print(f"covidnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
