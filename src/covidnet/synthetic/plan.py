"""The plan of a SYNTHETIC cohort: who the patients are and what each of their studies holds.

:func:`plan_cohort` turns :class:`~covidnet.synthetic.params.SynthParams` into the manifest
rows (``patients.csv``, ``scans.csv``), the planted exclusion cases (``planted.csv``) and one
picklable :class:`ScanTask` per study, before any pixel is drawn. Labels, hospitals, dates,
finding patterns, severities, codecs, folder names, UIDs and the seeds of each patient's
anatomy and each scan's noise are all drawn here, from streams spawned from ``synth.seed``
per patient, so the same parameters give the same plan whatever the number of workers that
later write it (:mod:`covidnet.synthetic.synth`). :func:`scan_findings` turns a task's
finding pattern into the lung findings of :mod:`covidnet.synthetic.anatomy`.

Everything planned here is synthetic: invented patients, dates and pathogens.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from covidnet.synthetic.anatomy import Anatomy, Finding, covid_findings, other_pneumonia_findings
from covidnet.synthetic.dicom_writer import uid
from covidnet.synthetic.params import HospitalProfile, SynthParams

NON_COVID_PATHOGENS = (
    "influenza A",
    "influenza B",
    "RSV",
    "adenovirus",
    "Mycoplasma pneumoniae",
    "Streptococcus pneumoniae",
    "Klebsiella pneumoniae",
)
_BACTERIAL = {"Streptococcus pneumoniae", "Klebsiella pneumoniae"}
_FIRST_DATE = dt.date(2020, 1, 20)


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


@dataclass(frozen=True)
class ScanTask:
    """Everything one worker needs to write one study (picklable)."""

    patient_index: int
    scan_index: int
    patient_id: str
    sex: str
    age: int
    label: str
    pattern: str  # covid | covid_consolidation | lobar | peribronchial | diffuse | none
    effusion: bool
    severity: float
    hospital: HospitalProfile
    matrix: int
    z_extent_mm: float
    study_date: str
    study_uid: str
    axial_uid: str
    contrast_uid: str
    localizer_uid: str
    with_axial: bool
    with_contrast: bool
    motion: bool
    broken: bool
    codec: str
    folder: str
    anatomy_seed: int
    scan_seed: int


def random_hex(rng: np.random.Generator, n: int = 12) -> str:
    """``n`` random hex digits (``n // 2`` bytes) from ``rng``: folder and file names."""
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, n // 2))


def _findings_pattern(rng: np.random.Generator, params: SynthParams, label: str, pathogen: str) -> tuple[str, bool]:
    """Draw the finding pattern; with probability ``difficulty`` from the pooled distribution."""
    source = label
    if rng.random() < params.difficulty:
        source = "covid" if rng.random() < 0.5 else "non_covid"
    if source == "covid":
        if rng.random() < params.no_finding_fraction:
            return "none", False
        consolidates = rng.random() < params.consolidation_fraction
        return ("covid_consolidation" if consolidates else "covid"), False
    effusion = bool(rng.random() < params.effusion_fraction)
    if rng.random() < params.diffuse_ggo_fraction:
        return "diffuse", effusion
    bacterial = pathogen in _BACTERIAL if label == "non_covid" else rng.random() < 0.5
    return ("lobar" if bacterial else "peribronchial"), effusion


def plan_cohort(params: SynthParams) -> tuple[list[dict], list[dict], list[dict], list[ScanTask]]:
    """Plan the whole cohort from ``params`` (no file is written).

    Args:
        params: the ``synth`` section.

    Returns:
        ``(patients, scans, planted, tasks)``: the rows of ``patients.csv`` and ``scans.csv``
        (schema :mod:`covidnet.data.cohort`), of ``planted.csv`` (``patient_id, study_uid,
        case``) and one :class:`ScanTask` per study, in patient then scan order.
    """
    root = np.random.SeedSequence(params.seed)
    plan_rng = np.random.default_rng(root.spawn(1)[0])
    patient_seeds = root.spawn(params.n_patients + 1)[1:]
    n = params.n_patients
    n_covid = int(round(n * params.covid_fraction))
    labels = np.array(["covid"] * n_covid + ["non_covid"] * (n - n_covid))
    plan_rng.shuffle(labels)
    hospitals = np.arange(n) % len(params.hospitals)
    plan_rng.shuffle(hospitals)
    # Planted exclusion cases: distinct patients; pcr_gap only among COVID-19 patients.
    covid_idx = [i for i in range(n) if labels[i] == "covid"]
    order = list(plan_rng.permutation(n))
    planted: dict[int, str] = {}
    for i in plan_rng.permutation(covid_idx)[: params.exclusion_cases.pcr_gap]:
        planted[int(i)] = "pcr_gap"
    for case in ("motion", "contrast_only", "broken_series"):
        chosen = [i for i in order if int(i) not in planted][: getattr(params.exclusion_cases, case)]
        for i in chosen:
            planted[int(i)] = case
    folders: set[str] = set()

    patients, scans, planted_rows, tasks = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng(patient_seeds[i].spawn(1)[0])
        scan_seeds = patient_seeds[i].spawn(8)
        label = str(labels[i])
        hospital = params.hospitals[int(hospitals[i])]
        patient_id = f"SYN{params.seed % 10000:04d}-{i + 1:04d}"
        pathogen = "SARS-CoV-2" if label == "covid" else str(rng.choice(NON_COVID_PATHOGENS))
        sex = str(rng.choice(["F", "M"]))
        age = int(rng.integers(18, 90))
        onset = _FIRST_DATE + dt.timedelta(days=int(rng.integers(0, 700)))
        case = planted.get(i, "")
        n_scans = int(rng.integers(params.scans_per_patient[0], params.scans_per_patient[1] + 1))
        if label == "covid":
            if case == "pcr_gap":
                offset = int(rng.integers(20, 41))
            else:
                offset = int(rng.integers(params.first_scan_after_pcr_days[0], params.first_scan_after_pcr_days[1] + 1))
            pcr = onset
            first = pcr + dt.timedelta(days=offset)
        else:
            pcr = None
            first = onset
        pattern, effusion = _findings_pattern(rng, params, label, pathogen)
        patients.append(
            {
                "patient_id": patient_id,
                "hospital": hospital.name,
                "label": label,
                "pathogen": pathogen,
                "pcr_positive_date": pcr.isoformat() if pcr else "",
                "sex": sex,
                "age": age,
            }
        )
        matrix = int(round(params.matrix * hospital.matrix_scale))
        patient_folder = random_hex(rng, 10)
        day = first
        for s in range(n_scans):
            if s > 0:
                day = day + dt.timedelta(days=int(rng.integers(params.days_between_scans[0], params.days_between_scans[1] + 1)))
            study_uid = uid(params.seed, patient_id, s, "study")
            with_contrast = bool(rng.random() < params.contrast_fraction)
            with_axial = True
            motion = broken = False
            if s == 0 and case == "contrast_only":
                with_contrast, with_axial = True, False
            elif s == 0 and case == "motion":
                motion = True
            elif s == 0 and case == "broken_series":
                broken = True
            compressed = bool(rng.random() < params.compressed_fraction)
            codec = (hospital.codec if hospital.codec != "none" else "rle") if compressed else "none"
            folder = f"{patient_folder}/{random_hex(rng, 8)}"
            while folder in folders:
                folder = f"{patient_folder}/{random_hex(rng, 8)}"
            folders.add(folder)
            # Severity evolves over the course: worst around the second scan.
            severity = float(np.clip(0.55 + 0.3 * math.sin(1.2 * s) + rng.normal(0, 0.08), 0.3, 1.0))
            axial_uid = uid(params.seed, patient_id, s, "axial")
            task = ScanTask(
                patient_index=i,
                scan_index=s,
                patient_id=patient_id,
                sex=sex,
                age=age,
                label=label,
                pattern=pattern,
                effusion=effusion,
                severity=severity,
                hospital=hospital,
                matrix=matrix,
                z_extent_mm=params.z_extent_mm,
                study_date=_da(day),
                study_uid=study_uid,
                axial_uid=axial_uid,
                contrast_uid=uid(params.seed, patient_id, s, "contrast"),
                localizer_uid=uid(params.seed, patient_id, s, "localizer"),
                with_axial=with_axial,
                with_contrast=with_contrast,
                motion=motion,
                broken=broken,
                codec=codec,
                folder=folder,
                anatomy_seed=int(patient_seeds[i].generate_state(1)[0]),
                scan_seed=int(scan_seeds[s].generate_state(1)[0]),
            )
            tasks.append(task)
            scans.append(
                {
                    "patient_id": patient_id,
                    "study_uid": study_uid,
                    "series_uid": axial_uid if with_axial else "",
                    "scan_date": day.isoformat(),
                    "motion_artifact": int(motion),
                }
            )
            if s == 0 and case:
                planted_rows.append({"patient_id": patient_id, "study_uid": study_uid, "case": case})
    return patients, scans, planted_rows, tasks


def scan_findings(task: ScanTask, anatomy: Anatomy, seed: int) -> list[Finding]:
    """The lung findings of one study: ``task.pattern`` drawn into ``anatomy`` at ``task.severity``.

    Findings keep their place across a patient's scans (same ``seed``), their size follows
    the severity.
    """
    rng = np.random.default_rng(seed)
    if task.pattern == "none":
        return []
    if task.pattern.startswith("covid"):
        return covid_findings(rng, anatomy, consolidation=task.pattern == "covid_consolidation", severity=task.severity)
    return other_pneumonia_findings(rng, anatomy, pattern=task.pattern, effusion=task.effusion, severity=task.severity)


