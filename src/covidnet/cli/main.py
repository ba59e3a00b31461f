"""``covidnet``: one subcommand per pipeline stage; each reads params.yaml and its paths.

The CLI only translates: it parses flags, calls :mod:`covidnet.stages`, prints a summary,
and turns a known failure into a one-paragraph message and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

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


# name -> (one-line help, description, [(flag, paths field, help)])
_STAGES: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "synth": (
        "write a synthetic DICOM cohort and its manifest",
        "Write a SYNTHETIC cohort as real DICOM (CT Image Storage) plus the clinical manifest, deterministic "
        "for synth.seed. Anatomy phantoms in HU with COVID-19-like or other-pneumonia findings; hospitals with "
        "their scanner profiles and encodings; planted cases for each exclusion rule (listed in planted.csv).",
        [("--dicom", "dicom", "output DICOM folder"), ("--manifest", "manifest", "output manifest folder")],
    ),
    "validate": (
        "index the DICOM tree and run the data-quality suites",
        "Read every DICOM header under paths.dicom (non-DICOM files are listed in skipped.csv), assess and "
        "choose one series per study (series.csv, files.csv), then run Great Expectations suites over the "
        "manifest and the chosen series. Writes JSON results and GX Data Docs HTML; exits 1 listing every "
        "failed expectation with the file, column, value and line.",
        [("--dicom", "dicom", "DICOM folder"), ("--manifest", "manifest", "manifest folder"),
         ("--index", "index", "output folder of the header tables"),
         ("--out", "validation", "output folder of the results")],
    ),
    "exclude": (
        "apply the paper's exclusion criteria",
        "Exclude COVID-19 patients whose first CT is more than exclude.max_pcr_gap_days from the first positive "
        "PCR, scans with severe motion artefacts, contrast-only studies and studies without a usable series. "
        "Writes cohort.csv, exclusions.csv (rule and reason per patient/scan) and flow.json.",
        [("--manifest", "manifest", "manifest folder"), ("--index", "index", "header tables folder"),
         ("--out", "cohort", "output folder")],
    ),
    "split": (
        "patient-level stratified split and the flow diagram",
        "Assign patients to train/val/test by split.ratios (stratified by label, split.seed) after setting "
        "apart the external cohort (split.external). Train and val keep every scan; test and external keep "
        "each patient's first scan. Writes the split table, flow.json/flow.md (Fig. 1 form) and the cohort "
        "metrics.",
        [("--cohort", "cohort", "exclude stage output folder"), ("--out", "split", "split table")],
    ),
    "preprocess": (
        "series -> (1, D, C, C) tensors and the QC table",
        "For each scan of the split: clip HU to [hu_min, hu_max], scale to [0, 1], resize linearly to depth x "
        "size x size, crop the central crop x crop (paper: 64, 512, 384). Stores tensors (preprocess.dtype) "
        "with index.csv and a per-scan QC table (HU percentiles in the body, lung fraction, noise, spacing) "
        "used as the drift reference. Runs preprocess.workers processes; reuses tensors already made with the "
        "same parameters.",
        [("--split", "split", "split table"), ("--index", "index", "header tables folder"),
         ("--dicom", "dicom", "DICOM folder"), ("--out", "preprocessed", "output folder")],
    ),
    "train": (
        "train COVIDNet on the preprocessed tensors (MLflow-tracked)",
        "Adam (train.learning_rate; paper 0.001), binary cross-entropy on the COVID-19 logit, global batch "
        "train.batch_size (paper 8) in micro-batches of train.micro_batch_size; validation loss and AUC every "
        "epoch, best epoch kept, early stopping after train.patience epochs. Checkpoints after every epoch: a "
        "killed run resumes where it stopped (--resume). Under torchrun: DistributedDataParallel. Writes the "
        "model folder (weights.pt, model.json, reference/: the training scans' QC values and the validation "
        "scores, for monitoring), reports/train (metrics.json, curve.csv) and an MLflow run.",
        [("--preprocessed", "preprocessed", "preprocessed tensors folder"), ("--out", "model", "model folder"),
         ("--checkpoints", "checkpoints", "checkpoint folder"), ("--report", "train_report", "report folder")],
    ),
    "evaluate": (
        "metrics with bootstrap CIs, ROC, calibration, t-SNE and the report",
        "For the trained model on the test split and the external cohort (or, with --predictions FILE, for any "
        "CSV patient_id,label,score[,hospital][,reader_<name>...]): accuracy, AUC, sensitivity, specificity, "
        "PPV, NPV and F1 for each class, each with a 95% percentile-bootstrap CI over patients "
        "(evaluate.bootstrap replications), the confusion matrix at evaluate.threshold, per-hospital matrices "
        "(Fig. 4 form), readers' kappa (Supplementary Table 9 form), calibration (ECE, Brier, reliability), "
        "t-SNE of the features; metrics.json, report.md/html and plots per set.",
        [("--out", "evaluation", "output folder"), ("--model", "model", "trained model folder"),
         ("--preprocessed", "preprocessed", "preprocessed tensors folder")],
    ),
    "promote": (
        "register the evaluated model; the gate moves the `champion` alias",
        "Register the trained model (the MLflow run in model.json) as a new version of mlflow.registered_model, "
        "tagged with the git commit, the cohort's DVC hash, a params hash and the test figures with CIs. The gate "
        "(promote params): lower CI bound of test AUC >= min_auc_lower and of COVID-19 sensitivity >= "
        "min_sensitivity_lower; with compare_with_champion, a paired bootstrap of AUC(new) - AUC(champion) on "
        "the same test patients whose lower CI bound must not fall below -max_auc_drop. Passing moves the alias "
        "`champion` here and `previous_champion` to the old one; failing sets `challenger`. The decision record "
        "(which rule, which numbers) goes to paths.decision and a version tag. A failing gate exits 0. "
        "--rollback moves `champion` back to `previous_champion`. No version is ever deleted.",
        [("--model", "model", "trained model folder"), ("--evaluation", "evaluation", "evaluate stage folder"),
         ("--out", "decision", "decision record (JSON)")],
    ),
}
_PATH_FIELDS = ("dicom", "manifest", "index", "validation", "cohort", "split", "preprocessed", "model",
                "checkpoints", "train_report", "evaluation", "decision")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covidnet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (short, description, flags) in _STAGES.items():
        p = sub.add_parser(name, help=short, description=description)
        p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
        p.add_argument("--profile", default=None,
                       help="apply profiles.<NAME> from the params file (default: its `profile` key)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
        for flag, field, text in flags:
            p.add_argument(flag, dest=field, type=Path, help=f"{text} (default: paths.{field} in the params file)")
        if name == "evaluate":
            p.add_argument("--predictions", type=Path, default=None,
                           help="evaluate this predictions CSV instead of the model (writes to --out, default "
                                "paths.evaluation/predictions)")
        if name == "train":
            p.add_argument("--resume", choices=("auto", "always", "never"), default="auto",
                           help="auto: resume from the last checkpoint when its settings match (default); "
                                "always: must resume, and say which settings differ; never: start afresh")
            p.add_argument("--no-track", action="store_true",
                           help="do not record an MLflow run (quick experiments; dvc repro tracks)")
        if name == "promote":
            p.add_argument("--rollback", action="store_true",
                           help="move `champion` back to the version aliased `previous_champion` (registers nothing)")
    p = sub.add_parser("model", help="inspect the network builders",
                       description="`covidnet model summary`: parameters and forward FLOPs per volume of each "
                                   "builder (paper: DenseNet-264 at 1x64x384x384; released: the authors' TF "
                                   "variant at 1x64x224x224; cpu: the CPU profile), counted on the meta device "
                                   "(nothing is allocated).")
    p.add_argument("action", choices=("summary",), help="what to show")
    p.add_argument("--builders", nargs="+", default=None, help="builders to show (default: all)")
    p = sub.add_parser("serve", help="serve the model over HTTP (KServe ModelServer)",
                       description="Start the KServe ModelServer with covidnet.serve.kserve_model on this machine, "
                                   "serving serve.model_uri (default: the `champion` of mlflow.registered_model in the "
                                   "local MLflow store) or --model-dir: V1 /v1/models/NAME:predict (JSON, or a raw study "
                                   "zip) and V2 /v2/models/NAME/infer (DICOM study zips, s3:// references or "
                                   "preprocessed tensors), health and readiness (/v2/health/ready) and /metrics.")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=None, help="also serve gRPC on this port (default: off)")
    p.add_argument("--model-uri", default=None,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION (MLflow registry of mlflow.tracking_uri or "
                        "MLFLOW_TRACKING_URI) or a model folder (default: serve.model_uri, the champion)")
    p.add_argument("--model-dir", type=Path, default=None, help="serve this model folder instead (e.g. models/covidnet)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    p.add_argument("--profile", default=None, help="apply profiles.<NAME> from the params file")
    p = sub.add_parser("predict", help="send a DICOM study folder (or an s3:// reference) to a server, print the answer",
                       description="Zip every file under PATH (one study; any depth) and POST it to the server at "
                                   "URL: as the raw body of a V1 request (Content-Type: application/zip; default) or "
                                   "base64 in a V2 BYTES input (--encoding base64). An s3://bucket/key PATH is sent as "
                                   "a reference (V2) and fetched by the server. Prints the per-study answers (JSON).")
    p.add_argument("path", help="folder holding the study's DICOM files, or s3://bucket/key")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL (default: %(default)s)")
    p.add_argument("--model", default=None, help="served model name (default: serve.model_name in --params)")
    p.add_argument("--encoding", choices=("binary", "base64"), default="binary",
                   help="binary: the zip as the request body (V1); base64: V2 JSON (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the answer (default: %(default)s, the InferenceService timeout)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)")
    p = sub.add_parser("pipeline", help="the Kubeflow pipelines: compile, run --local, submit --host URL, pytorchjob",
                       description="compile: write the pipelines' IR YAML (pipelines/), resources, retries, secrets "
                                   "and volumes from the `pipeline` params; run --local: run a pipeline here with "
                                   "kfp.local (MLflow in a temporary SQLite store); submit --host URL [--experiment "
                                   "NAME] [--schedule CRON]: send a run or a recurring run to Kubeflow Pipelines; "
                                   "pytorchjob: write the Kubeflow PyTorchJob that trains across nodes. The profile, "
                                   "thresholds and cohort revision are checked first.")
    from covidnet.cli import pipeline as _pipeline
    _pipeline.add_arguments(p)
    from covidnet.cli import monitor as monitor_cli
    p = sub.add_parser("monitor", help="drift report, PCR feedback, live performance from the prediction log",
                       description=monitor_cli.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    monitor_cli.add_arguments(p)
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Run the KServe model server (:mod:`covidnet.serve.kserve_model`) in this process."""
    argv = ["--http_port", str(args.port), "--params", str(args.params), "--enable_grpc",
            "false" if args.grpc_port is None else "true", "--grpc_port", str(args.grpc_port or 8081)]
    argv += ["--model_dir", str(args.model_dir)] if args.model_dir else []
    argv += ["--model_uri", args.model_uri] if args.model_uri else []
    argv += ["--profile", args.profile] if args.profile else []
    sys.argv = ["covidnet serve", *argv]  # `import kserve` parses sys.argv
    from covidnet.serve import kserve_model

    kserve_model.main(argv)
    return 0


def _run(args: argparse.Namespace) -> int:
    from covidnet import stages
    from covidnet.params import is_synthetic, load_params

    if args.command == "model":
        from covidnet.model.network import BUILDERS, format_summary, model_summary

        print(format_summary(model_summary(args.builders or BUILDERS)))
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "predict":
        import json

        from covidnet.serve.client import predict

        model = args.model or load_params(args.params)["serve"]["model_name"]
        print(json.dumps(predict(args.path, args.url, model, args.encoding, args.timeout), indent=2))
        return 0
    if args.command == "pipeline":
        from covidnet.cli import pipeline as _pipeline
        return _pipeline.main(args)
    if args.command == "monitor":
        from covidnet.cli import monitor as monitor_cli
        return monitor_cli.main(args)
    params = load_params(args.params, profile=args.profile)
    overrides = {k: getattr(args, k, None) for k in _PATH_FIELDS}
    paths = stages.Paths.from_params(params, **overrides)
    progress = not args.quiet
    cmd = args.command
    synthetic = " (SYNTHETIC cohort)" if is_synthetic(params) else ""

    if cmd == "synth":
        s = stages.run_synth(params, paths)
        print(f"synth: wrote a SYNTHETIC cohort to {paths.dicom} and {paths.manifest}: {s}")
    elif cmd == "validate":
        index, report = stages.run_validate(params, paths, progress=progress)
        n_sel = int(index.series["selected"].sum())
        print(f"validate: {len(index.series)} series ({n_sel} chosen, one per usable study), "
              f"{len(index.skipped)} file(s) skipped -> {paths.index}")
        if not report.success:
            print(report.format(), file=sys.stderr)
            print(f"validate: FAILED{synthetic}; results in {paths.validation}", file=sys.stderr)
            return 1
        print(f"validate: all expectations met{synthetic}; results and Data Docs in {paths.validation}")
    elif cmd == "exclude":
        r = stages.run_exclude(params, paths)
        inc = r.flow["included"]
        print(f"exclude{synthetic}: included {inc['covid']['patients']} COVID-19 and {inc['non_covid']['patients']} "
              f"other-pneumonia patients ({len(r.cohort)} scans); {len(r.exclusions)} exclusion(s) "
              f"-> {paths.cohort}")
    elif cmd == "split":
        split, flow = stages.run_split(params, paths)
        sizes = ", ".join(f"{k} {v['covid']['patients'] + v['non_covid']['patients']}" for k, v in flow["split"].items())
        print(f"split{synthetic}: patients per split: {sizes} -> {paths.split}; flow diagram {paths.flow / 'flow.md'}")
    elif cmd == "preprocess":
        s = stages.run_preprocess(params, paths, progress=progress)
        print(f"preprocess: {s.n_scans} tensor(s) of shape {s.tensor_shape} ({s.n_reused} reused, "
              f"{s.n_failed} failed) -> {s.out_dir}")
    elif cmd == "train":
        r = stages.run_train(params, paths, resume=args.resume, track=not args.no_track,
                             progress=progress)
        auc = "n/a" if r.best["val_auc"] is None else f"{r.best['val_auc']:.3f}"
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"train{synthetic}: best epoch {r.best_epoch} of {r.epochs_run} (validation AUC {auc}, loss "
                  f"{r.best['val_loss']:.4f}){' (resumed after epoch %d)' % r.resumed_from if r.resumed_from else ''}"
                  f" -> {paths.model}; MLflow run {r.run_id}")
    elif cmd == "evaluate":
        results = stages.run_evaluate(params, paths, predictions=args.predictions,
                                      out=args.evaluation if args.predictions else None)
        for name, m in results.items():
            auc = m["auc"]["value"]
            ci = m["auc"].get("ci")
            auc_text = "n/a" if auc is None else f"{auc:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
            print(f"evaluate {name}{synthetic}: {m['n']} patients, AUC {auc_text}, accuracy "
                  f"{m['accuracy']['value']:.3f}")
    elif cmd == "promote":
        r = stages.run_promote(params, paths, rollback=args.rollback)
        if args.rollback:
            print(f"promote: rolled back {r.registered_model}: champion is version {r.champion} again (version "
                  f"{r.demoted} is now `rolled_back`)")
        elif r.promoted:
            print(f"promote{synthetic}: {r.registered_model} version {r.version} is the champion"
                  + (f" (previous champion: version {r.previous_champion})" if r.previous_champion else "")
                  + f"; decision in {paths.decision}")
        else:
            failed = "; ".join(f"{x.name}: {x.detail}" for x in r.failed)
            print(f"promote{synthetic}: {r.registered_model} version {r.version} NOT promoted (alias challenger; "
                  f"champion unchanged): {failed}; decision in {paths.decision}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``covidnet`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from covidnet.data.cohort import ManifestError
    from covidnet.data.dicom import SeriesReadError
    from covidnet.params import ParamsError
    from covidnet.data.split import SplitError
    from covidnet.evaluate.stage import PredictionsError
    from covidnet.promote.stage import PromoteError
    from covidnet.monitor.predlog import PredLogError
    from covidnet.serve.client import PredictError
    from covidnet.train.loop import ResumeError, TrainDataError

    try:
        return _run(args)
    except (ParamsError, ManifestError, SeriesReadError, SplitError, TrainDataError, ResumeError, PredictionsError,
            PromoteError, PredLogError, PredictError, FileNotFoundError, ValueError) as exc:
        print(f"covidnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
