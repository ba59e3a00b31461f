"""``covidnet synth | validate | exclude | split | preprocess | train | evaluate | promote``.

Each stage command reads ``params.yaml`` (``--params``, ``--profile``), takes the paths of its
inputs and outputs from the ``paths`` section (each overridable by a flag), calls its stage's
one public function and prints the result's own summary. Nothing here decides anything.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covidnet.params import DEFAULT_PARAMS


@dataclass(frozen=True)
class Stage:
    """One stage command: its description, path flags, its outputs and its function."""

    description: str
    flags: tuple[tuple[str, str, str], ...]   # (flag, paths field, help)
    outs: tuple[str, ...]                     # the paths fields it writes; the first is what the summary points at
    run: Callable[[dict[str, Any], Any, argparse.Namespace], Any]


#: Output folders that may hold a stage's other outputs (a results folder); any other output (a
#: file, or a folder with a format of its own such as the model folder or the DICOM tree) gets
#: them beside it.
_OPEN_FOLDERS = ("validation", "evaluation")


def output_overrides(stage: Stage, given: dict[str, Path]) -> dict[str, Path]:
    """The stage's outputs when some are given on the command line: a command given an output
    writes only there, so every output not given goes inside the first one given (a results
    folder) or beside it, named for its field (``flow``, ``cohort.json`` for ``metrics``, ...),
    never to the params file's paths.

    Args:
        stage: the stage.
        given: the paths fields given by flags (inputs and outputs).

    Returns:
        ``given`` with the derived outputs added (unchanged when no output is given).
    """
    named = [f for f in stage.outs if f in given]
    if not named:
        return dict(given)
    anchor = given[named[0]]
    base = anchor if named[0] in _OPEN_FOLDERS else anchor.parent
    out = dict(given)
    for field in stage.outs:
        if field not in out:
            out[field] = base / (f"{field}{_SUFFIX[field]}" if field in _SUFFIX else field)
    return out


#: File outputs: the suffix a derived one gets.
_SUFFIX = {"metrics": ".json", "calibrator": ".json", "split": ".csv", "decision": ".json"}


def _synth(params, paths, args):
    from covidnet.synthetic.synth import run_synth

    return run_synth(params, paths, progress=not args.quiet)


def _validate(params, paths, args):
    from covidnet.validate.stage import run_validate

    return run_validate(params, paths, progress=not args.quiet)


def _exclude(params, paths, args):
    from covidnet.data.exclude import run_exclude

    return run_exclude(params, paths)


def _split(params, paths, args):
    from covidnet.data.split import run_split

    return run_split(params, paths)


def _preprocess(params, paths, args):
    from covidnet.preprocess.stage import run_preprocess

    return run_preprocess(params, paths, progress=not args.quiet)


def _train(params, paths, args):
    from covidnet.train.stage import run_train

    return run_train(params, paths, resume=args.resume, track=not args.no_track, progress=not args.quiet)


def _evaluate(params, paths, args):
    from covidnet.evaluate.stage import run_evaluate

    return run_evaluate(params, paths, predictions=args.predictions,
                        out=args.evaluation if args.predictions else None)


def _promote(params, paths, args):
    from covidnet.promote.stage import run_promote, run_rollback

    return run_rollback(params) if args.rollback else run_promote(params, paths)


STAGES: dict[str, Stage] = {
    "synth": Stage(
        "Write a SYNTHETIC cohort as real DICOM (CT Image Storage) plus the clinical manifest, deterministic "
        "for synth.seed. Anatomy phantoms in HU with COVID-19-like or other-pneumonia findings; hospitals with "
        "their scanner profiles and encodings; planted cases for each exclusion rule (listed in planted.csv).",
        (("--dicom", "dicom", "output DICOM folder"), ("--manifest", "manifest", "output manifest folder")),
        ("dicom", "manifest"), _synth),
    "validate": Stage(
        "Read every DICOM header under paths.dicom (non-DICOM files are listed in skipped.csv), assess and "
        "choose one series per study (series.csv, files.csv), then run Great Expectations suites over the "
        "manifest and the chosen series. Writes JSON results and a self-contained index.html; exits 1 listing every "
        "failed expectation with the file, column, value and line.",
        (("--dicom", "dicom", "DICOM folder"), ("--manifest", "manifest", "manifest folder"),
         ("--index", "index", "output folder of the header tables"),
         ("--out", "validation", "output folder of the results")),
        ("validation", "index"), _validate),
    "exclude": Stage(
        "Exclude COVID-19 patients whose first CT is more than exclude.max_pcr_gap_days from the first positive "
        "PCR, scans with severe motion artefacts, contrast-only studies and studies without a usable series. "
        "Writes cohort.csv, exclusions.csv (rule and reason per patient/scan) and flow.json.",
        (("--manifest", "manifest", "manifest folder"), ("--index", "index", "header tables folder"),
         ("--out", "cohort", "output folder")),
        ("cohort",), _exclude),
    "split": Stage(
        "Assign patients to train/val/test by split.ratios (stratified by label, split.seed) after setting "
        "apart the external cohort (split.external). Train and val keep every scan; test and external keep "
        "each patient's first scan. Writes the split table, flow.json/flow.md (Fig. 1 form) and the cohort "
        "metrics.",
        (("--cohort", "cohort", "exclude stage output folder"), ("--out", "split", "split table"),
         ("--flow", "flow", "flow diagram folder"), ("--metrics", "metrics", "cohort counts (JSON)")),
        ("split", "flow", "metrics"), _split),
    "preprocess": Stage(
        "For each scan of the split: clip HU to [hu_min, hu_max], scale to [0, 1], resize linearly to depth x "
        "size x size, crop the central crop x crop (paper: 64, 512, 384). Stores tensors (preprocess.dtype) "
        "with index.csv and a per-scan QC table (HU percentiles in the body, lung fraction, noise, spacing) "
        "used as the drift reference. Runs preprocess.workers processes; reuses tensors already made with the "
        "same parameters.",
        (("--split", "split", "split table"), ("--index", "index", "header tables folder"),
         ("--dicom", "dicom", "DICOM folder"), ("--out", "preprocessed", "output folder")),
        ("preprocessed",), _preprocess),
    "train": Stage(
        "Adam (train.learning_rate; paper 0.001), binary cross-entropy on the COVID-19 logit, global batch "
        "train.batch_size (paper 8) in micro-batches of train.micro_batch_size, a constant or cosine rate "
        "(train.schedule), augmentation the paper did not use (train.augment: flips, shifts, gain, zoom); "
        "validation loss and AUC every epoch, best epoch kept, early stopping after train.patience epochs. "
        "Checkpoints after every epoch: a killed run resumes where it stopped (--resume). Under torchrun: DistributedDataParallel. Writes the "
        "model folder (weights, model card, reference/: the training scans' QC values and the validation "
        "scores, for monitoring), reports/train (metrics.json, curve.csv) and an MLflow run.",
        (("--preprocessed", "preprocessed", "preprocessed tensors folder"), ("--out", "model", "model folder"),
         ("--checkpoints", "checkpoints", "checkpoint folder"), ("--report", "train_report", "report folder")),
        ("model", "train_report", "checkpoints"), _train),
    "evaluate": Stage(
        "For the trained model on the test split and the external cohort (or, with --predictions FILE, for any "
        "CSV patient_id,label,score[,hospital][,reader_<name>...]): accuracy, AUC, sensitivity, specificity, "
        "PPV, NPV and F1 for each class, each with a 95% percentile-bootstrap CI over patients "
        "(evaluate.bootstrap replications), the confusion matrix at evaluate.threshold, per-hospital matrices "
        "(Fig. 4 form), readers' kappa (Supplementary Table 9 form), calibration (ECE, Brier, reliability), "
        "t-SNE of the features; metrics.json, report.md/html and plots per set. With the synthetic cohort's "
        "lesion masks, a saliency map per scan (explain params) and the share of its mass inside the planted "
        "lesions against chance, with the top explain.top_k true positives drawn (saliency.png).",
        (("--out", "evaluation", "output folder"), ("--model", "model", "trained model folder"),
         ("--preprocessed", "preprocessed", "preprocessed tensors folder"),
         ("--calibrator", "calibrator", "calibrator fitted on the validation split (JSON)"),
         ("--headline", "headline", "folder: the headline figures, <set>.json each (the dvc metrics)")),
        ("evaluation", "calibrator", "headline"), _evaluate),
    "promote": Stage(
        "Register the trained model (the MLflow run its model card names) as a new version of "
        "mlflow.registered_model, tagged with the git commit, the cohort's DVC hash, a params hash and the test "
        "figures with CIs. The gate (promote params): lower CI bound of test AUC >= min_auc_lower and of COVID-19 "
        "sensitivity >= min_sensitivity_lower and of specificity >= min_specificity_lower; with "
        "compare_with_champion, a paired bootstrap of AUC(new) - AUC(champion) on the same test patients whose lower CI bound must not fall below -max_auc_drop. Passing "
        "moves the alias `champion` here and `previous_champion` to the old one; failing sets `challenger`. The "
        "decision record (which rule, which numbers) goes to paths.decision and a version tag. A failing gate "
        "exits 0. --rollback moves `champion` back to `previous_champion`. No version is ever deleted.",
        (("--model", "model", "trained model folder"), ("--evaluation", "evaluation", "evaluate stage folder"),
         ("--out", "decision", "decision record (JSON)")),
        ("decision",), _promote),
}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The arguments of stage ``command``: params, profile, quiet, its path flags and its own options."""
    stage = STAGES[command]
    parser.description = stage.description
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s; without one here, the package's own)")
    parser.add_argument("--profile", default=None,
                        help="apply profiles.<NAME> from the params file (default: its `profile` key)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.epilog = ("Paths default to the params file's `paths`. Given any output flag, the stage writes only there: "
                     "its other outputs go inside that folder (a results folder) or beside it.")
    for flag, field, text in stage.flags:
        parser.add_argument(flag, dest=field, type=Path, help=f"{text} (default: paths.{field} in the params file)")
    if command == "evaluate":
        parser.add_argument("--predictions", type=Path, default=None,
                            help="evaluate this predictions CSV instead of the model (writes to --out, default "
                                 "paths.evaluation/predictions)")
    if command == "train":
        parser.add_argument("--resume", choices=("auto", "always", "never"), default="auto",
                            help="auto: resume from the last checkpoint when its settings match (default); "
                                 "always: must resume, and say which settings differ; never: start afresh")
        parser.add_argument("--no-track", action="store_true",
                            help="do not record an MLflow run (quick experiments; dvc repro tracks)")
    if command == "promote":
        parser.add_argument("--rollback", action="store_true",
                            help="move `champion` back to the version aliased `previous_champion` (registers nothing)")


def run(args: argparse.Namespace) -> int:
    """Run stage ``args.command``; print its summary; 1 when validation failed, else 0."""
    from covidnet.params import is_synthetic, load_params
    from covidnet.paths import Paths

    stage = STAGES[args.command]
    params = load_params(args.params, profile=args.profile)
    given = {field: getattr(args, field) for _, field, _ in stage.flags if getattr(args, field) is not None}
    paths = Paths.from_params(params, **output_overrides(stage, given))
    result = stage.run(params, paths, args)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary under torchrun
        return 0
    synthetic = " (SYNTHETIC cohort)" if is_synthetic(params) else ""
    out = getattr(paths, stage.outs[0]) if not getattr(args, "rollback", False) else None
    line = f"{args.command}{synthetic}: {result.summary()}" + (f" -> {out}" if out else "")
    if getattr(result, "ok", True):
        print(line)
        return 0
    print(result.report.format(), file=sys.stderr)
    print(line, file=sys.stderr)
    return 1
