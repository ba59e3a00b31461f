"""Predictions tables in: one row per patient, ``patient_id,label,score[,hospital][,reader_<name>...]``.

``label`` is 1 for COVID-19 and 0 for other pneumonia; ``score`` the probability of COVID-19
in [0, 1]; each ``reader_<name>`` column a reader's 0/1 call. Every rule a table breaks is
reported with the file, the column and the offending lines and values.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidnet.errors import CovidnetError

REQUIRED = ("patient_id", "label", "score")


READER_PREFIX = "reader_"


_MAX_SHOWN = 5


class PredictionsError(CovidnetError, ValueError):
    """A predictions table breaks a rule; the message names the file, column and line/row."""


def _bad(source: str, column: str, rule: str, where: list[str], values: list[Any]) -> PredictionsError:
    shown = "; ".join(f"{w}: {v!r}" for w, v in zip(where[:_MAX_SHOWN], values[:_MAX_SHOWN]))
    more = f" (and {len(where) - _MAX_SHOWN} more)" if len(where) > _MAX_SHOWN else ""
    return PredictionsError(f"{source}: column {column!r} {rule}; {shown}{more}")


def validate_predictions(frame: pd.DataFrame, source: str = "predictions",
                         locations: list[str] | None = None) -> pd.DataFrame:
    """Check and type a predictions table (from a CSV or built in memory).

    Args:
        frame: ``patient_id, label, score`` and optional ``hospital``, ``reader_<name>``.
        source: named in errors (the file path).
        locations: how to name each row in errors (``line 7``); default ``row <index>``.

    Returns:
        A copy with ``patient_id``/``hospital`` as str, ``label`` and readers as int8,
        ``score`` as float64; other columns dropped (with a warning).

    Raises:
        PredictionsError: naming the column and the offending lines/rows and values.
    """
    frame = frame.rename(columns=lambda c: str(c).strip())
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise PredictionsError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}; expected "
                               "patient_id,label,score[,hospital][,reader_<name>...]")
    if len(frame) == 0:
        raise PredictionsError(f"{source}: no rows after the header (expected one row per patient)")
    where = np.array(locations if locations is not None else [f"row {i}" for i in frame.index], dtype=object)
    readers = [c for c in frame.columns if c.startswith(READER_PREFIX)]
    extra = [c for c in frame.columns if c not in (*REQUIRED, "hospital", *readers)]
    if extra:
        warnings.warn(f"{source}: ignoring column(s) {extra}", stacklevel=2)
    out = pd.DataFrame(index=frame.index)

    def text(col: str) -> pd.Series:
        values = frame[col].astype(str).str.strip()
        empty = frame[col].isna().to_numpy() | (values == "").to_numpy()
        if empty.any():
            raise _bad(source, col, "must not be empty", list(where[empty]), ["" for _ in where[empty]])
        return values

    def numeric(col: str, allowed: str) -> np.ndarray:
        values = pd.to_numeric(frame[col].astype(str).str.strip(), errors="coerce").to_numpy(np.float64)
        bad = ~(np.isin(values, (0.0, 1.0)) if allowed == "binary" else (values >= 0) & (values <= 1))
        if bad.any():
            rule = "must be 0 or 1" if allowed == "binary" else "must be a number in [0, 1] (not NaN)"
            raise _bad(source, col, rule, list(where[bad]), list(frame[col].to_numpy()[bad]))
        return values

    out["patient_id"] = text("patient_id")
    dup = out["patient_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        first = out["patient_id"][dup].iloc[0]
        lines = list(where[(out["patient_id"] == first).to_numpy()])
        raise PredictionsError(f"{source}: column 'patient_id' must be unique (one row per patient); "
                               f"{first!r} appears at {', '.join(lines)} ({int(dup.sum())} rows share an id)")
    out["label"] = numeric("label", "binary").astype(np.int8)
    out["score"] = numeric("score", "unit")
    if "hospital" in frame.columns:
        out["hospital"] = text("hospital")
    for col in readers:
        if not col[len(READER_PREFIX):].strip():
            raise PredictionsError(f"{source}: column {col!r} needs a reader name after {READER_PREFIX!r}")
        out[col] = numeric(col, "binary").astype(np.int8)
    return out.reset_index(drop=True)


def read_predictions(path: Path | str) -> pd.DataFrame:
    """Read and validate a predictions CSV; errors name the file and the 1-based CSV line.

    Raises:
        PredictionsError: file missing or empty, a column missing, NaN or out-of-range
            score, label or reader value not 0/1, empty or duplicate patient id.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise PredictionsError(f"{path}: the file is empty (expected a header patient_id,label,score and one "
                               "row per patient)") from None
    except pd.errors.ParserError as exc:
        raise PredictionsError(f"{path}: not a valid CSV: {exc}") from None
    lines = [f"line {i + 2}" for i in range(len(raw))]
    blank = (raw == "").all(axis=1).to_numpy() if len(raw.columns) else np.zeros(len(raw), bool)
    return validate_predictions(raw[~blank], str(path), [l for l, b in zip(lines, blank) if not b])
