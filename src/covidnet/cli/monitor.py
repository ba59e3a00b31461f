"""``covidnet monitor drift | feedback | performance``: arguments and what each prints.

Exit status: 0 when nothing crossed a threshold (also for a window too small to judge),
:data:`covidnet.monitor.report.ALARM_EXIT` (3) when the drift alarm is raised or a performance
figure is flagged below the promotion gate, 2 for an error (bad input, unreachable log, a
model version whose reference cannot be found), as the other ``covidnet`` commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from covidnet.errors import InputError
from covidnet.params import DEFAULT_PARAMS

DESCRIPTION = """\
drift        drift report over a window of the prediction log against the reference profile of
             the model version that served it: per QC feature and for the score, PSI and KS;
             drift.json + drift.html in paths.monitor; exit 3 on alarm (monitor.drift rule)
feedback     ingest PCR results (CSV: patient_hash or patient_id, pcr_result, pcr_date) into the
             log's feedback table; bad rows are reported with their line numbers, the rest ingested
performance  sensitivity, specificity and AUC with bootstrap CIs against PCR over a window, overall
             and per hospital (Fig. 4 form); performance.json + .html; exit 3 when a figure is
             demonstrably below the promotion gate (promote.min_auc_lower, min_sensitivity_lower)

The log: SQLite at paths.predlog, or monitor.log.url, or $COVIDNET_PREDLOG_URL (monitor.log.url_env).
"""


def add_arguments(parser: argparse.ArgumentParser, command: str = "monitor") -> None:
    """The ``covidnet monitor`` subcommand's arguments."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("action", choices=("drift", "feedback", "performance"), help="what to do (see above)")
    parser.add_argument("file", nargs="?", type=Path, default=None, help="feedback: the PCR results CSV")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file (default: %(default)s; without one here, the package's own)")
    parser.add_argument("--profile", default=None, help="apply profiles.<NAME> from the params file")
    parser.add_argument("--since", default=None, help="window start, ISO 8601 (default: --hours before --until)")
    parser.add_argument("--until", default=None, help="window end, ISO 8601, exclusive (default: now)")
    parser.add_argument("--hours", type=float, default=None,
                        help="window length when --since is not given (default: drift monitor.drift.window_hours, "
                             "performance 24 x monitor.feedback.window_days)")
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help="drift: a model folder holding a reference profile (repeatable; default: paths.model)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="drift: do not look up other versions' references in their MLflow training runs")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: paths.monitor)")


def run(args: argparse.Namespace) -> int:
    """Carry out ``covidnet monitor ACTION``; returns the exit status."""
    from covidnet.monitor.report import ALARM_EXIT
    from covidnet.params import is_synthetic, load_params
    from covidnet.paths import Paths

    params = load_params(args.params, profile=args.profile)
    if args.action == "feedback":
        from covidnet.monitor.feedback import run_feedback

        if args.file is None:
            raise InputError("monitor feedback: give the PCR results CSV (covidnet monitor feedback FILE.csv)")
        print(f"monitor feedback: {run_feedback(params, args.file).summary()}")
        return 0
    if args.file is not None:
        raise InputError(f"monitor {args.action}: takes no FILE argument (got {args.file})")
    out = args.out or Paths.from_params(params).monitor
    synthetic = " (SYNTHETIC data)" if is_synthetic(params) else ""
    if args.action == "drift":
        from covidnet.monitor.report import run_drift

        r = run_drift(params, args.since, args.until, args.hours, args.model, out, use_mlflow=not args.no_mlflow)
        for m in r["models"]:
            what = m.get("error") or (f"drifting: {', '.join(m['drifted'])}" if m.get("drifted") else "no drift")
            print(f"monitor drift{synthetic}: {m['model_name']} {m['model_version']}: {m['n']} studies, "
                  f"{m['status']} ({what})")
        print(f"monitor drift{synthetic}: {r['status'].upper()} over {r['window']['since']} .. {r['window']['until']} "
              f"({r['n']} studies) -> {out / 'drift.json'}, {out / 'drift.html'}")
        if r["status"] == "error":
            raise InputError("monitor drift: " + "; ".join(r["errors"]))
        return ALARM_EXIT if r["alarm"] else 0
    from covidnet.monitor.feedback import run_performance

    r = run_performance(params, args.since, args.until, args.hours, out)
    for m in r["models"]:
        mt = m["metrics"]
        sens, spec = mt["covid"]["sensitivity"]["value"], mt["covid"]["specificity"]["value"]
        print(f"monitor performance{synthetic}: {m['model_name']} {m['model_version']}: {m['n_patients']} patients, "
              f"sensitivity {'n/a' if sens is None else f'{sens:.3f}'}, specificity "
              f"{'n/a' if spec is None else f'{spec:.3f}'}" + (f"; FLAGGED: {', '.join(m['flagged'])}" if m["flagged"] else ""))
    print(f"monitor performance{synthetic}: {r['status'].upper()} ({r['n_patients']} patients with PCR) -> "
          f"{out / 'performance.json'}, {out / 'performance.html'}")
    return ALARM_EXIT if r["alarm"] else 0
