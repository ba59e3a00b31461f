"""PCR feedback and live performance: ``covidnet monitor feedback`` and ``covidnet monitor performance``.

**Feedback** (:func:`ingest_feedback`): a CSV with one PCR result per patient,

``patient_hash`` *or* ``patient_id``
    the patient: the hash the log stores (64 hex digits, ``HMAC-SHA256(key, "patient:" + id)``,
    :func:`covidnet.monitor.predlog.hash_id`), or the DICOM PatientID, hashed here with the same key
    (from the environment) and never stored;
``pcr_result``
    ``positive``/``negative`` (also ``pos``/``neg``, ``detected``/``not detected``, ``1``/``0``,
    any case);
``pcr_date``
    ``YYYY-MM-DD``.

Rows that break a rule are reported with their CSV line numbers and the rest are ingested
into the log's ``feedback`` table in one transaction: an empty or malformed id, an
unparseable result or date, an id that appears on more than one row of the file (every such
row is rejected: which result is right cannot be told), an id that already has a result in
the table, an id no logged prediction carries ("unknown id").

**Performance** (:func:`performance_report`): the predictions of a window joined with the PCR
results of their patients, each patient counted once, by the first prediction within
``monitor.feedback.pcr_max_days`` of the PCR date (as the test set counts each patient's
first scan). For each model version (and decision threshold) the figures are the evaluate
stage's own (:func:`covidnet.evaluate.stage.compute_metrics`: sensitivity, specificity, AUC, ...,
95% percentile-bootstrap CIs over patients, ``evaluate`` bootstrap settings), overall and per
hospital, with confusion matrices in the form of the paper's Fig. 4. A figure is *flagged*
when its whole CI lies below the promotion gate's threshold (``promote.min_auc_lower``,
``promote.min_sensitivity_lower``): demonstrably below what the model was admitted with;
``meets_gate`` says whether it still passes the gate's own rule (lower bound at or above).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from covidnet.errors import CovidnetError

log = logging.getLogger(__name__)

_RESULTS = {"positive": True, "pos": True, "detected": True, "1": True, "true": True,
            "negative": False, "neg": False, "not detected": False, "0": False, "false": False}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class FeedbackError(CovidnetError, ValueError):
    """A feedback file that cannot be read at all (missing, not CSV, a required column missing)."""


@dataclass
class FeedbackResult:
    """What :func:`ingest_feedback` did: counts, and the CSV line numbers of each rejection reason."""

    source: str
    rows: int
    ingested: int
    rejected: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return sum(len(v) for v in self.rejected.values())

    def summary(self) -> str:
        text = f"{self.ingested} of {self.rows} row(s) ingested from {self.source}"
        if self.rejected:
            parts = []
            for reason, lines in self.rejected.items():
                shown = ", ".join(map(str, lines[:10])) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
                parts.append(f"{reason}: {len(lines)} (line{'s' if len(lines) > 1 else ''} {shown})")
            text += "; rejected " + "; ".join(parts)
        return text


def read_feedback(path: Path | str) -> pd.DataFrame:
    """The feedback CSV file as text columns, with ``line`` (see :func:`parse_feedback`).

    Raises:
        FeedbackError: missing file, not a CSV, no id column, no ``pcr_result`` or ``pcr_date``.
    """
    path = Path(path)
    if not path.is_file():
        raise FeedbackError(f"{path}: feedback file not found")
    return parse_feedback(path.read_bytes(), str(path))


def parse_feedback(data: bytes, source: str) -> pd.DataFrame:
    """Feedback CSV content as text columns, with ``line`` (1-based CSV line of each row).

    Raises:
        FeedbackError: not UTF-8 CSV, no id column, no ``pcr_result`` or ``pcr_date`` (naming ``source``).
    """
    try:
        text = data.decode("utf-8-sig")
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"{source}: not a readable CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    ids = [c for c in ("patient_hash", "patient_id") if c in frame.columns]
    missing = [c for c in ("pcr_result", "pcr_date") if c not in frame.columns]
    if len(ids) != 1 or missing:
        raise FeedbackError(f"{source}: expected columns patient_hash (or patient_id), pcr_result, pcr_date; found "
                            f"{list(frame.columns)}" + (" (give patient_hash or patient_id, not both)"
                                                        if len(ids) == 2 else ""))
    # Line numbers: the header is line 1; blank lines were skipped, so count them back in.
    data_lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip()][1:]
    frame["line"] = data_lines[:len(frame)]
    return frame


def ingest_feedback(path: Path | str, plog) -> FeedbackResult:
    """Check a feedback CSV file row by row and ingest its good rows (module docstring).

    Args:
        path: the CSV.
        plog: the open :class:`covidnet.monitor.predlog.PredictionLog` (its key hashes ``patient_id``).

    Raises:
        FeedbackError: the file cannot be read at all; ``patient_id`` given but the log has no key.
    """
    return ingest_feedback_frame(read_feedback(path), plog, str(path))


def ingest_feedback_frame(frame: pd.DataFrame, plog, source: str) -> FeedbackResult:
    """Check parsed feedback rows (:func:`parse_feedback`) and ingest the good ones; ``source``
    names them in the result and is stored with each row (its last path component)."""
    from covidnet.monitor.predlog import hash_id

    rejected: dict[str, list[int]] = {}

    def reject(reason: str, lines) -> None:
        rejected.setdefault(reason, []).extend(int(x) for x in lines)

    raw_ids = frame["patient_hash" if "patient_hash" in frame else "patient_id"].str.strip()
    if "patient_id" in frame:
        if plog.key is None:
            raise FeedbackError(f"{source}: patient_id needs the hash key; open the log with its key")
        hashes = raw_ids.map(lambda v: hash_id(plog.key, "patient", v) if v else "")
        bad_id = raw_ids == ""
        id_rule = "empty patient_id"
    else:
        hashes = raw_ids.str.lower()
        bad_id = ~hashes.map(lambda h: bool(_HEX64.match(h)))
        id_rule = "patient_hash is not 64 hex digits"
    results = frame["pcr_result"].str.strip().str.lower().map(_RESULTS)
    dates = frame["pcr_date"].str.strip().map(_date)
    ok = pd.Series(True, index=frame.index)
    for reason, bad in ((id_rule, bad_id), ("unparseable pcr_result", results.isna()),
                        ("unparseable pcr_date (expected YYYY-MM-DD)", dates.isna())):
        bad = bad & ok
        if bad.any():
            reject(reason, frame.loc[bad, "line"])
        ok &= ~bad
    dup = hashes.duplicated(keep=False) & ok
    if dup.any():
        reject("duplicate id in the file", frame.loc[dup, "line"])
    ok &= ~dup
    known = plog.known_patients(hashes[ok].tolist())
    unknown = ok & ~hashes.isin(known)
    if unknown.any():
        reject("unknown id (no logged prediction)", frame.loc[unknown, "line"])
    ok &= ~unknown
    rows = [{"patient_hash": h, "pcr_positive": bool(r), "pcr_date": d, "source": Path(source).name}
            for h, r, d in zip(hashes[ok], results[ok], dates[ok])]
    inserted, present = plog.add_feedback(rows)
    if present:
        reject("already has a PCR result in the log", frame.loc[ok & hashes.isin(set(present)), "line"])
    result = FeedbackResult(source=source, rows=int(len(frame)), ingested=inserted,
                            rejected={k: sorted(v) for k, v in rejected.items()})
    log.info("feedback: %s", result.summary())
    return result


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


# --- performance ---------------------------------------------------------------------------------

def join_feedback(predictions: pd.DataFrame, feedback: pd.DataFrame, max_days: int) -> pd.DataFrame:
    """One row per patient: the first prediction within ``max_days`` of its PCR date, with the PCR label.

    Args:
        predictions: log rows (``patient_hash``, ``time``, ``score``, ``decision``, ...).
        feedback: the ``feedback`` table (``patient_hash``, ``pcr_positive``, ``pcr_date``).
        max_days: the largest |prediction date - PCR date| in days.

    Returns:
        The joined rows with ``label`` (1 = PCR positive) and ``days_from_pcr``.
    """
    if predictions.empty or feedback.empty:
        return predictions.iloc[0:0].assign(label=pd.Series(dtype=int), days_from_pcr=pd.Series(dtype=int))
    joined = predictions.dropna(subset=["patient_hash"]).merge(
        feedback[["patient_hash", "pcr_positive", "pcr_date"]], on="patient_hash", how="inner")
    day = joined["time"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    joined["days_from_pcr"] = (day - pd.to_datetime(joined["pcr_date"])).dt.days
    joined = joined[joined["days_from_pcr"].abs() <= max_days]
    joined = joined.sort_values(["time", "id"] if "id" in joined else ["time"]).drop_duplicates("patient_hash")
    return joined.assign(label=joined["pcr_positive"].astype(int)).reset_index(drop=True)


def _gate_figure(fig: dict[str, Any], threshold: float) -> dict[str, Any]:
    ci = fig.get("ci")
    return {"value": fig.get("value"), "ci": ci, "threshold": threshold,
            "meets_gate": None if not ci else bool(ci[0] >= threshold),
            "flagged": None if not ci else bool(ci[1] < threshold)}


def performance_report(joined: pd.DataFrame, evaluate_params, promote_params, since: dt.datetime,
                       until: dt.datetime, synthetic: bool = False) -> dict[str, Any]:
    """Sensitivity, specificity and AUC with CIs per model version, overall and per hospital.

    Args:
        joined: :func:`join_feedback` output.
        evaluate_params: :class:`covidnet.evaluate.stage.EvaluateParams` (bootstrap, seed, CI level;
            the threshold is replaced by the one the server decided at).
        promote_params: :class:`covidnet.promote.stage.PromoteParams` (the gate's thresholds).
        since, until: the window, for the report.
        synthetic: the predictions are on synthetic data (said in the report).

    Returns:
        ``status`` (``flagged``, ``ok`` or ``no_data``), ``alarm`` and per model version the
        evaluate metrics (``metrics``: overall figures, ``confusion``, ``per_hospital`` in Fig. 4
        form) and the ``gate`` checks (overall AUC and sensitivity, per-hospital sensitivity).
    """
    from covidnet.evaluate.figures import compute_metrics
    from covidnet.evaluate.predictions import validate_predictions

    models = []
    for (name, version, threshold), group in joined.groupby(["model_name", "model_version", "threshold"], sort=True):
        preds = validate_predictions(pd.DataFrame({
            "patient_id": group["patient_hash"].to_numpy(), "label": group["label"].to_numpy(),
            "score": group["score"].to_numpy(), "hospital": group["hospital"].fillna("(unknown)").to_numpy()}),
            source=f"model {name} version {version}")
        metrics = compute_metrics(preds, dataclasses.replace(evaluate_params, threshold=float(threshold)))
        gate = {"auc": _gate_figure(metrics["auc"], promote_params.min_auc_lower),
                "sensitivity": _gate_figure(metrics["covid"]["sensitivity"], promote_params.min_sensitivity_lower),
                "per_hospital_sensitivity": {h: _gate_figure(v["sensitivity"], promote_params.min_sensitivity_lower)
                                             for h, v in metrics["per_hospital"].items()}}
        flagged = [k for k in ("auc", "sensitivity") if gate[k]["flagged"]]
        flagged += [f"sensitivity at {h}" for h, g in gate["per_hospital_sensitivity"].items() if g["flagged"]]
        models.append({"model_name": name, "model_version": version, "threshold": float(threshold),
                       "n_patients": int(len(group)), "flagged": flagged, "gate": gate,
                       "metrics": {k: metrics[k] for k in ("n", "n_positive", "accuracy", "auc", "covid", "non_covid",
                                                           "confusion", "per_hospital", "bootstrap")}})
    alarm = any(m["flagged"] for m in models)
    return {"kind": "performance", "status": "no_data" if not models else ("flagged" if alarm else "ok"),
            "alarm": alarm, "window": {"since": since.isoformat(), "until": until.isoformat()},
            "n_patients": int(len(joined)), "synthetic": synthetic,
            "gate": {"min_auc_lower": promote_params.min_auc_lower,
                     "min_sensitivity_lower": promote_params.min_sensitivity_lower},
            "models": models}


def _pct(fig: dict[str, Any]) -> str:
    if fig.get("value") is None:
        return "n/a"
    ci = fig.get("ci")
    return f"{100 * fig['value']:.1f}" + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci else "")


def performance_blocks(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The performance report as report blocks (Fig. 4 form per hospital)."""
    w = report["window"]
    blocks: list[tuple[str, Any]] = [
        ("h1", "COVIDNet performance against PCR" + (" (SYNTHETIC data)" if report["synthetic"] else "")),
        ("p", f"Predictions from {w['since']} to {w['until']} with a PCR result: {report['n_patients']} patients "
              f"(each once). **Status: {report['status'].upper()}**. Flagged: a whole 95% CI below the promotion "
              f"gate (AUC lower bound {report['gate']['min_auc_lower']:g}, sensitivity lower bound "
              f"{report['gate']['min_sensitivity_lower']:g}).")]
    for m in report["models"]:
        mt = m["metrics"]
        blocks.append(("h2", f"{m['model_name']} version {m['model_version']} (threshold {m['threshold']:g}): "
                             f"{m['n_patients']} patients" + (f"; FLAGGED: {', '.join(m['flagged'])}" if m["flagged"] else "")))
        c = mt["confusion"]
        blocks.append(("table", (["", "n", "TP", "FN", "TN", "FP", "Sensitivity % (CI)", "Specificity % (CI)", "AUC (CI)"],
                                 [["all", str(mt["n"]), str(c["tp"]), str(c["fn"]), str(c["tn"]), str(c["fp"]),
                                   _pct(mt["covid"]["sensitivity"]), _pct(mt["covid"]["specificity"]),
                                   _pct(mt["auc"]) if mt["auc"].get("value") is not None else "n/a"]]
                                 + [[h, str(v["n"]), str(v["confusion"]["tp"]), str(v["confusion"]["fn"]),
                                     str(v["confusion"]["tn"]), str(v["confusion"]["fp"]), _pct(v["sensitivity"]),
                                     _pct(v["specificity"]), ""] for h, v in mt["per_hospital"].items()])))
    return blocks


def run_feedback(params: dict[str, Any], path: Path | str) -> FeedbackResult:
    """``covidnet monitor feedback FILE``: open the log (with its key) and ingest the file."""
    from covidnet.monitor.predlog import PredictionLog

    plog = PredictionLog.from_params(params)
    try:
        return ingest_feedback(path, plog)
    finally:
        plog.close()


def run_performance(params: dict[str, Any], since: str | None = None, until: str | None = None,
                    hours: float | None = None, out_dir: Path | str | None = None) -> dict[str, Any]:
    """``covidnet monitor performance``: join the window with PCR results, compute, write the report.

    The window defaults to the last ``monitor.feedback.window_days`` (``hours`` overrides it);
    the report goes to ``performance.json``/``.html`` in ``out_dir`` (default ``paths.monitor``).
    """
    from covidnet.evaluate.params import EvaluateParams
    from covidnet.monitor.params import monitor_params
    from covidnet.monitor.predlog import PredictionLog
    from covidnet.monitor.report import write_report
    from covidnet.monitor.window import time_window
    from covidnet.params import is_synthetic, section
    from covidnet.paths import Paths
    from covidnet.promote.gate import PromoteParams

    mp = monitor_params(params)
    start, end = time_window(since, until, hours if hours is not None else 24.0 * mp.feedback.window_days)
    plog = PredictionLog.from_params(params, with_key=False)
    try:
        joined = join_feedback(plog.predictions(since=start, until=end), plog.feedback(), mp.feedback.pcr_max_days)
    finally:
        plog.close()
    report = performance_report(joined, section(params, "evaluate", EvaluateParams),
                                section(params, "promote", PromoteParams), start, end,
                                synthetic=is_synthetic(params))
    write_report(report, performance_blocks(report), out_dir or Paths.from_params(params).monitor, "performance")
    return report
