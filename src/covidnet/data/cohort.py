"""The clinical manifest: the schema a cohort (synthetic or real) is delivered in.

A cohort is a DICOM tree plus a manifest folder with two CSV files:

``patients.csv`` — one row per patient:
    ``patient_id`` (str, unique; equals the DICOM PatientID), ``hospital`` (str),
    ``label`` (``covid`` or ``non_covid``), ``pathogen`` (str, e.g. ``SARS-CoV-2``,
    ``influenza A``), ``pcr_positive_date`` (ISO date of the first positive SARS-CoV-2
    RT-PCR; required when ``label`` is ``covid``, empty otherwise), ``sex`` (``F``/``M``/``O``),
    ``age`` (years).

``scans.csv`` — one row per CT examination (a DICOM study):
    ``patient_id``, ``study_uid`` (StudyInstanceUID, unique), ``series_uid`` (the series the
    reader reviewed; may be empty), ``scan_date`` (ISO date), ``motion_artifact`` (0/1: the
    reader marked severe breathing or motion artifacts).

Series selection is data driven (see :mod:`covidnet.data.dicom`); ``series_uid`` is checked
against the headers but never trusted over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from covidnet.errors import CovidnetError

PATIENTS_FILE = "patients.csv"
SCANS_FILE = "scans.csv"
PATIENT_COLUMNS = ("patient_id", "hospital", "label", "pathogen", "pcr_positive_date", "sex", "age")
SCAN_COLUMNS = ("patient_id", "study_uid", "series_uid", "scan_date", "motion_artifact")
LABELS = ("covid", "non_covid")
#: Ground truth a SYNTHETIC cohort's manifest folder also holds (real cohorts have none): the
#: finding pattern drawn for each scan, and each axial series' lungs and planted lesions in the
#: model's tensor grid (``lesions/<SeriesInstanceUID>.npy``, uint8: 0 outside, 1 lung, 2 lesion).
FINDINGS_FILE = "findings.csv"
LESIONS_DIR = "lesions"
#: Integer class used by the model: 1 = COVID-19, 0 = other pneumonia.
LABEL_TO_INT = {"covid": 1, "non_covid": 0}


class ManifestError(CovidnetError, ValueError):
    """The manifest cannot be read: a file or a required column is missing."""


@dataclass(frozen=True)
class Manifest:
    """The two manifest tables, every column read as text (validation types them)."""

    patients: pd.DataFrame
    scans: pd.DataFrame


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a readable CSV file: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: required column(s) {missing} missing; found {list(frame.columns)}")
    frame = frame.apply(lambda col: col.str.strip())
    return frame


def read_manifest(manifest_dir: Path | str) -> Manifest:
    """Read ``patients.csv`` and ``scans.csv`` from ``manifest_dir`` as text tables.

    Raises:
        ManifestError: a file is missing, unreadable, or lacks a required column.
    """
    manifest_dir = Path(manifest_dir)
    return Manifest(
        patients=_read_table(manifest_dir / PATIENTS_FILE, PATIENT_COLUMNS),
        scans=_read_table(manifest_dir / SCANS_FILE, SCAN_COLUMNS),
    )
