"""The tables Great Expectations sees: the manifest and the series table, typed for the suites.

``patients.csv`` and ``scans.csv`` are read as text (:func:`covidnet.data.cohort.read_manifest`);
here empty strings become missing values (GX's nulls), dates are parsed into helper columns and
each row keeps where it came from, so a failed expectation can name it:

* ``line``: the 1-based CSV line of a manifest row (the header is line 1);
* ``row``: the 0-based row of the series table, next to its ``patient_id``, ``study_uid`` and
  ``series_uid``.

Helper columns (``age_years``, ``*_date_value``, ``patient_label``, ``scan_date_matches``)
carry the typed or joined values the suites check; messages name the user's column instead.
Nothing here imports Great Expectations.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pandas as pd

ISO_DATE_REGEX = r"^\d{4}-\d{2}-\d{2}$"
ISO_DATE_FORMAT = "%Y-%m-%d"

#: Columns of the series table this stage reads (the table may hold more).
SERIES_COLUMNS = (
    "patient_id",
    "study_uid",
    "series_uid",
    "study_date",
    "modality",
    "n_slices",
    "pixel_spacing_mm",
    "slice_thickness_mm",
    "selected",
)
_SERIES_NUMERIC = ("n_slices", "pixel_spacing_mm", "slice_thickness_mm")
_SERIES_TEXT = ("patient_id", "study_uid", "series_uid", "study_date", "modality")

# Helper columns added to the tables Great Expectations sees.
_LINE = "line"  # 1-based CSV line number (the header is line 1)
_ROW = "row"  # 0-based row of the series table
_LABEL = "patient_label"  # the patient's label, joined in for date rules scoped to COVID-19
_MATCH = "scan_date_matches"


def _text_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Copy of a text table with empty strings as missing values (GX's nulls)."""
    out = frame.astype(object).copy()
    return out.where(out.notna() & (out != ""), None)


def _as_date(value: Any) -> dt.date | None:
    if not isinstance(value, str) or not re.match(ISO_DATE_REGEX, value):
        return None
    try:
        return dt.datetime.strptime(value, ISO_DATE_FORMAT).date()
    except ValueError:
        return None


def _date_column(values: pd.Series) -> pd.Series:
    """ISO text -> ``datetime.date`` objects (None where empty or invalid: other rules report those)."""
    return pd.Series([_as_date(v) for v in values], index=values.index, dtype=object)


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: required column(s) {missing} missing; found {list(frame.columns)}")


def _patients_frame(patients: pd.DataFrame) -> pd.DataFrame:
    frame = _text_frame(patients)
    frame[_LINE] = range(2, len(frame) + 2)
    frame["age_years"] = pd.to_numeric(frame["age"], errors="coerce").astype(float)
    frame["pcr_positive_date_value"] = _date_column(frame["pcr_positive_date"])
    frame[_LABEL] = frame["label"]
    frame.index = range(len(frame))
    return frame


def _labels_by_patient(patients: pd.DataFrame) -> dict[str, str]:
    first = patients.drop_duplicates("patient_id", keep="first")
    return {p: lab for p, lab in zip(first["patient_id"], first["label"]) if p}


def _scans_frame(scans: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    frame = _text_frame(scans)
    frame[_LINE] = range(2, len(frame) + 2)
    frame["scan_date_value"] = _date_column(frame["scan_date"])
    frame[_LABEL] = [labels.get(p) for p in frame["patient_id"]]
    frame.index = range(len(frame))
    return frame


def _as_bool(values: pd.Series, what: str) -> pd.Series:
    if values.dtype == bool:
        return values
    mapping = {"true": True, "false": False, "1": True, "0": False}
    converted = values.map(lambda v: v if isinstance(v, bool) else mapping.get(str(v).strip().lower()))
    bad = values[converted.isna()]
    if len(bad):
        raise ValueError(f"{what}: expected true/false, got {bad.iloc[0]!r} (row {bad.index[0]})")
    return converted.astype(bool)


def _series_frame(series: pd.DataFrame, scans: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    _require_columns(series, SERIES_COLUMNS, "series table")
    table = series.reset_index(drop=True)
    selected = _as_bool(table["selected"], "series table column 'selected'")
    frame = table.loc[selected, list(SERIES_COLUMNS[:-1])].copy()
    frame.insert(0, _ROW, frame.index.astype(int))
    frame[list(_SERIES_TEXT)] = _text_frame(frame[list(_SERIES_TEXT)])
    for col in _SERIES_NUMERIC:
        try:
            frame[col] = pd.to_numeric(frame[col], errors="raise").astype(float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"series table column {col!r}: expected numbers: {exc}") from None
    frame["study_date_value"] = _date_column(frame["study_date"])
    studies = scans.drop_duplicates("study_uid", keep="first")
    scan_dates = {uid: date for uid, date in zip(studies["study_uid"], studies["scan_date"]) if uid}
    frame["scan_date"] = [scan_dates.get(uid) or None for uid in frame["study_uid"]]
    frame[_MATCH] = [
        None if (study is None or scan is None) else bool(study == scan)
        for study, scan in zip(frame["study_date"], frame["scan_date"])
    ]
    frame[_MATCH] = frame[_MATCH].astype(object)
    frame[_LABEL] = [labels.get(p) for p in frame["patient_id"]]
    frame.index = range(len(frame))
    return frame
