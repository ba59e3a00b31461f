"""The header tables of a DICOM tree on disk (``series.csv``, ``files.csv``, ``skipped.csv``).

``validate`` writes them (:func:`write_index`) from :func:`covidnet.data.series.index_tree`;
``exclude`` and ``preprocess`` read them back (:func:`load_index`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covidnet import atomic

SERIES_FILE = "series.csv"
FILES_FILE = "files.csv"
SKIPPED_FILE = "skipped.csv"


def write_index(index, folder: Path | str) -> None:
    """Write a :class:`covidnet.data.series.DicomIndex` into ``folder`` (replaced all or nothing)."""
    with atomic.atomic_path(folder, directory=True) as tmp:
        index.series.to_csv(tmp / SERIES_FILE, index=False)
        index.files.to_csv(tmp / FILES_FILE, index=False)
        index.skipped.to_csv(tmp / SKIPPED_FILE, index=False)


def load_index(folder: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The series table and the files table written by :func:`write_index`."""
    folder = Path(folder)
    series = pd.read_csv(folder / SERIES_FILE, dtype={"patient_id": str, "study_uid": str, "series_uid": str,
                                                     "study_date": str, "reason": str, "selection": str},
                         keep_default_na=False, na_values={"pixel_spacing_mm": [""], "slice_thickness_mm": [""],
                                                          "slice_spacing_mm": [""]})
    for col in ("eligible", "selected", "contrast"):
        series[col] = series[col].astype(str).str.lower().eq("true")
    files = pd.read_csv(folder / FILES_FILE, dtype={"series_uid": str, "path": str})
    return series, files
