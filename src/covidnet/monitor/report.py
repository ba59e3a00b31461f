"""Drift reports over the prediction log: ``covidnet monitor drift``.

:func:`drift_report` reads the log's rows of a time window (:mod:`covidnet.monitor.predlog`), groups
them by the model version that served them, finds each version's reference profile
(:mod:`covidnet.model.reference`: in a local model folder whose version matches, else in the MLflow
registry, where the profile travels in the training run's ``covidnet/reference`` artifacts),
and judges each group with :func:`covidnet.monitor.drift.window_verdict`: per QC feature and for the
score, PSI and KS against the reference, plus the score distribution (quantiles, fraction
called COVID-19) beside the validation one. The report is written as ``drift.json`` and
``drift.html`` (atomically) and its ``alarm`` is what ``covidnet monitor drift`` turns into
exit status 3 for alerting.

The monitor's parameters are the ``monitor`` section of params.yaml (:mod:`covidnet.monitor.params`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.model.reference import Reference, ReferenceProfileError, load_reference
from covidnet.monitor.drift import DriftParams, table_series, window_verdict
from covidnet.monitor.params import monitor_params
from covidnet.monitor.window import time_window
from covidnet.params import is_synthetic
from covidnet.paths import Paths

log = logging.getLogger(__name__)

#: Exit status of `covidnet monitor drift` (and `performance`) when the alarm is raised.
ALARM_EXIT = 3


# --- time windows ------------------------------------------------------------------------------


# --- references --------------------------------------------------------------------------------

def find_reference(version: str, run_id: str | None, model_dirs: list[Path], tracking=None) -> Reference:
    """The reference profile of the model version that served some rows.

    Looks in each folder of ``model_dirs`` whose model version (:meth:`covidnet.model.card.ModelCard.version`)
    equals ``version``; else, with ``tracking`` (:class:`covidnet.tracking.MlflowParams`) and the
    logged training ``run_id``, downloads the run's ``covidnet`` artifact folder (the model folder
    ``train`` logged, reference included).

    Raises:
        ReferenceProfileError: found nowhere (the message says where it looked).
    """
    from covidnet.model.card import ModelCard

    for folder in model_dirs:
        if ModelCard.is_folder(folder):
            card = ModelCard.read(folder)
            if card.version(folder) == version:
                return load_reference(folder, card)
    if tracking is not None and run_id:
        return _run_reference(tracking, run_id)
    looked = ", ".join(str(d) for d in model_dirs) or "no model folder"
    raise ReferenceProfileError(f"no reference profile for model version {version!r}: not in {looked}"
                         + ("" if run_id else " and no MLflow run logged with it")
                         + ("" if tracking is not None or not run_id else " (MLflow lookup disabled)")
                         + "; pass --model DIR of that model")


def _run_reference(tracking, run_id: str) -> Reference:
    import tempfile

    from mlflow.exceptions import MlflowException

    from covidnet.model.card import MODEL_ARTIFACT, download_model_folder

    with tempfile.TemporaryDirectory(prefix="covidnet-reference-") as tmp:
        try:
            local = download_model_folder(run_id, tracking.tracking_uri, tmp)
        except (MlflowException, OSError) as exc:
            raise ReferenceProfileError(f"MLflow run {run_id} ({tracking.tracking_uri}): cannot download its "
                                 f"{MODEL_ARTIFACT}/ model folder ({exc})") from None
        ref = load_reference(local)
    return Reference(qc=ref.qc, scores=ref.scores, source=f"MLflow run {run_id}, {MODEL_ARTIFACT}/")


# --- the drift report --------------------------------------------------------------------------

def _score_summary(current: np.ndarray, reference: np.ndarray | None, threshold: float) -> dict[str, Any]:
    def describe(v: np.ndarray) -> dict[str, Any]:
        v = v[np.isfinite(v)]
        if not v.size:
            return {"n": 0}
        q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
        return {"n": int(v.size), "mean": float(v.mean()), "quantiles": dict(zip(("p10", "p25", "p50", "p75", "p90"),
                                                                                  map(float, q))),
                "fraction_covid19": float(np.mean(v >= threshold))}

    return {"threshold": threshold, "current": describe(np.asarray(current, np.float64)),
            "reference": None if reference is None else describe(np.asarray(reference, np.float64))}


def drift_report(rows: pd.DataFrame, params: DriftParams, since: dt.datetime, until: dt.datetime,
                 model_dirs: list[Path], tracking=None, synthetic: bool = False) -> dict[str, Any]:
    """Judge a window of the prediction log against the reference of each model version in it.

    Args:
        rows: the log's rows of the window (:meth:`covidnet.monitor.predlog.PredictionLog.predictions`).
        params: the ``monitor.drift`` thresholds and rule.
        since, until: the window (UTC), for the report.
        model_dirs: local model folders to find references in (:func:`find_reference`).
        tracking: MLflow params for references of other versions (None: local folders only).
        synthetic: the served studies are synthetic (said in the report).

    Returns:
        The report: ``status`` (``alarm``, ``ok``, ``insufficient``, ``no_data`` or ``error``
        when a version's reference cannot be found), ``alarm``, ``n``, and per model version
        its verdict (per series PSI, KS, p-value, medians), the score summary and a per-hospital
        breakdown (each hospital's own verdict; informational, the alarm is the version's).
    """
    models, errors = [], []
    for (name, version), group in rows.groupby(["model_name", "model_version"], sort=True):
        run_ids = group["mlflow_run_id"].dropna().unique() if "mlflow_run_id" in group else []
        entry: dict[str, Any] = {"model_name": name, "model_version": version, "n": int(len(group))}
        try:
            ref = find_reference(str(version), str(run_ids[0]) if len(run_ids) else None, model_dirs, tracking)
        except ReferenceProfileError as exc:
            entry.update(status="error", error=str(exc))
            errors.append(str(exc))
            models.append(entry)
            continue
        reference = table_series(ref.qc, params, scores=ref.scores)
        verdict = window_verdict(reference, table_series(group, params), params)
        threshold = float(group["threshold"].iloc[-1])
        hospitals = {}
        for h, sub in group.groupby(group["hospital"].fillna("(unknown)"), sort=True):
            v = window_verdict(reference, table_series(sub, params), params)
            hospitals[str(h)] = {"n": v.n, "status": v.status, "drifted": v.drifted}
        entry.update(reference=ref.source, n_reference_scans=int(len(ref.qc)), **verdict.as_dict(),
                     score_distribution=_score_summary(group["score"].to_numpy(), ref.scores, threshold),
                     hospitals=hospitals)
        models.append(entry)
    statuses = [m["status"] for m in models]
    if not models:
        status = "no_data"
    elif "error" in statuses:
        status = "error"
    elif "alarm" in statuses:
        status = "alarm"
    else:
        status = "ok" if "ok" in statuses else "insufficient"
    return {"kind": "drift", "status": status, "alarm": "alarm" in statuses,
            "window": {"since": since.isoformat(), "until": until.isoformat()}, "n": int(len(rows)),
            "synthetic": synthetic, "params": {**dataclasses.asdict(params), "features": list(params.features)},
            "errors": errors, "models": models}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def drift_blocks(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The drift report as report blocks (rendered to HTML by :func:`covidnet.pages.to_html`)."""
    w = report["window"]
    p = report["params"]
    blocks: list[tuple[str, Any]] = [("h1", "COVIDNet drift report" + (" (SYNTHETIC data)" if report["synthetic"] else "")),
                                     ("p", f"Window {w['since']} to {w['until']}: {report['n']} answered studies. "
                                           f"**Status: {report['status'].upper()}**."),
                                     ("p", f"Rule: a series drifts when {p['rule']} (PSI > {p['psi_threshold']:g}; KS "
                                           f"p < {p['ks_alpha']:g} / number of series); alarm when at least "
                                           f"{p['min_drifted']} drift(s) in a window of at least {p['min_window']}.")]
    for m in report["models"]:
        blocks.append(("h2", f"{m['model_name']} version {m['model_version']}: {m['n']} studies, {m['status']}"))
        if m["status"] == "error":
            blocks.append(("p", m["error"]))
            continue
        blocks.append(("p", f"Reference: {m['reference']} ({m['n_reference_scans']} training scans)."))
        rows = [[s["name"], str(s["n_current"]), _fmt(s["reference_median"]), _fmt(s["current_median"]),
                 _fmt(s["psi"]), _fmt(s["ks"]), _fmt(s["p_value"]), {True: "DRIFT", False: "no", None: "untested"}[
                     s["drifted"]] + (f" ({s['reason']})" if s.get("reason") else "")] for s in m["series"].values()]
        blocks.append(("table", (["Series", "n", "Reference median", "Window median", "PSI", "KS", "p", "Drift"],
                                 rows)))
        sd = m["score_distribution"]
        cur, ref = sd["current"], sd["reference"] or {}
        blocks.append(("p", f"Scores: window median {_fmt(cur.get('quantiles', {}).get('p50'))}, "
                            f"{_fmt(100 * cur['fraction_covid19'], 1) if cur.get('n') else 'n/a'} % called COVID-19 at "
                            f"{sd['threshold']:g}; validation median {_fmt(ref.get('quantiles', {}).get('p50'))}, "
                            f"{_fmt(100 * ref['fraction_covid19'], 1) if ref.get('n') else 'n/a'} %."))
        blocks.append(("table", (["Hospital", "n", "Status", "Drifting series"],
                                 [[h, str(v["n"]), v["status"], ", ".join(v["drifted"]) or "-"]
                                  for h, v in m["hospitals"].items()])))
    return blocks


def write_report(report: dict[str, Any], blocks: list[tuple[str, Any]], out_dir: Path | str, name: str) -> Path:
    """``<name>.json`` and ``<name>.html`` into ``out_dir``, each written atomically; the JSON path.

    The page ends with its provenance: the code's commit and when it was written."""
    from covidnet.atomic import write_json, write_text
    from covidnet.pages import provenance_blocks, to_html
    from covidnet.tracking import git_commit

    out_dir = Path(out_dir)
    write_json(out_dir / f"{name}.json", report)
    write_text(out_dir / f"{name}.html", to_html([*blocks, *provenance_blocks({"commit": git_commit()})], out_dir))
    return out_dir / f"{name}.json"


def run_drift(params: dict[str, Any], since: str | None = None, until: str | None = None,
              hours: float | None = None, model_dirs: list[Path] | None = None, out_dir: Path | str | None = None,
              use_mlflow: bool = True) -> dict[str, Any]:
    """``covidnet monitor drift``: read the window from the log, judge it, write the report.

    Args:
        params: merged params (``monitor``, ``paths.predlog``/``paths.model``/``paths.monitor``,
            ``mlflow``).
        since, until: ISO 8601 bounds (default: the last ``monitor.drift.window_hours``).
        hours: overrides ``monitor.drift.window_hours``.
        model_dirs: model folders holding references (default ``paths.model``).
        out_dir: where ``drift.json``/``drift.html`` go (default ``paths.monitor``).
        use_mlflow: look up references of other versions in their MLflow training runs.
    """
    from covidnet.monitor.predlog import PredictionLog
    from covidnet.tracking import mlflow_params

    mp = monitor_params(params)
    start, end = time_window(since, until, hours if hours is not None else mp.drift.window_hours)
    plog = PredictionLog.from_params(params, with_key=False)
    try:
        rows = plog.predictions(since=start, until=end)
    finally:
        plog.close()
    dirs = model_dirs if model_dirs is not None else [Paths.from_params(params).model]
    report = drift_report(rows, mp.drift, start, end, dirs, mlflow_params(params) if use_mlflow else None,
                          synthetic=is_synthetic(params))
    write_report(report, drift_blocks(report), out_dir or Paths.from_params(params).monitor, "drift")
    return report
