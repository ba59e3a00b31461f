"""The paper's exclusion criteria: which patients and scans enter the cohort, and why not.

Liu et al. (2021) included non-contrast chest CT and excluded COVID-19 patients whose first
CT was more than 14 days from the first positive PCR, and scans with severe breathing or
motion artefacts. On top of those, a scan needs a usable series: a study holding only
contrast-enhanced series, or whose only candidates are broken (gaps, duplicate positions,
missing geometry, undecodable), is excluded with the series' own reason.

Every excluded patient or scan is listed with a rule code and a reason; the counts per rule
and class feed the flow diagram (the paper's Fig. 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from covidnet.data.cohort import Manifest, ManifestError

COHORT_COLUMNS = ("patient_id", "hospital", "label", "pathogen", "pcr_positive_date", "study_uid",
                  "series_uid", "scan_date", "scan_order", "days_from_pcr")
EXCLUSION_COLUMNS = ("level", "patient_id", "study_uid", "label", "hospital", "rule", "reason")

#: Rule codes, in the order they are applied, with their labels in the flow diagram.
RULES = {
    "not_in_manifest": "study in the DICOM tree but not in the manifest",
    "missing_images": "study in the manifest but not in the DICOM tree",
    "contrast_only": "contrast-enhanced CT only (no non-contrast axial series)",
    "no_usable_series": "no usable non-contrast axial series (broken, too short or undecodable)",
    "motion_artifact": "severe breathing or motion artefact",
    "pcr_gap": "COVID-19 with first CT more than max_pcr_gap_days from first positive PCR",
    "no_scan_left": "no scan left after scan-level exclusions",
}


@dataclass(frozen=True)
class ExcludeParams:
    """The ``exclude`` section of params.yaml."""

    max_pcr_gap_days: int
    exclude_motion_artifact: bool
    min_patients: int               # included patients of each class below which the cohort is an error

    def __post_init__(self) -> None:
        if self.min_patients < 1:
            raise ValueError(f"exclude.min_patients: must be >= 1, got {self.min_patients}")


@dataclass(frozen=True)
class ExclusionResult:
    """Output of :func:`apply_exclusions`.

    Attributes:
        cohort: one row per included scan, :data:`COHORT_COLUMNS`; ``scan_order`` is 1 for
            each patient's first included scan (by date, then study UID).
        exclusions: one row per excluded patient (``level == "patient"``) or scan, with the
            rule code and a reason naming the values, :data:`EXCLUSION_COLUMNS`.
        flow: counts for the flow diagram: recruited, excluded per rule and included, each
            as patients and scans per class.
    """

    cohort: pd.DataFrame
    exclusions: pd.DataFrame
    flow: dict

    def summary(self) -> str:
        inc = self.flow["included"]
        return (f"included {inc['covid']['patients']} COVID-19 and {inc['non_covid']['patients']} other-pneumonia "
                f"patients ({len(self.cohort)} scans); {len(self.exclusions)} exclusion(s)")


def _describe_unusable(candidates: pd.DataFrame) -> tuple[str, str]:
    """Rule code and reason for a study without a selected series."""
    ct = candidates[(candidates["modality"] == "CT") & ~candidates["image_type"].str.upper().str.contains("LOCALIZER")]
    if not ct.empty and ct["contrast"].all():
        return "contrast_only", f"{len(ct)} CT series, all contrast-enhanced"
    broken = ct[~ct["contrast"]] if not ct.empty else candidates
    reasons = "; ".join(f"{r.series_uid}: {r.reason}" for r in broken.itertuples())
    return "no_usable_series", reasons or "no CT series"


def _counts(frame: pd.DataFrame) -> dict:
    out = {}
    for label in ("covid", "non_covid"):
        part = frame[frame["label"] == label]
        out[label] = {"patients": int(part["patient_id"].nunique()), "scans": int(part["study_uid"].nunique())}
    return out


def apply_exclusions(manifest: Manifest, series: pd.DataFrame, params: ExcludeParams) -> ExclusionResult:
    """Apply the exclusion criteria.

    Args:
        manifest: the validated manifest (text columns; dates ISO).
        series: the header table from the DICOM index (``selected`` marks the chosen
            series of each study).
        params: the exclusion thresholds.

    Returns:
        The cohort, the exclusions with reasons, and the flow counts.

    Raises:
        ValueError: a date in the manifest cannot be parsed (validation should have
            stopped it); the message names the file, column and value.
    """
    patients = manifest.patients.set_index("patient_id", drop=False)
    scans = manifest.scans.merge(
        manifest.patients[["patient_id", "hospital", "label", "pathogen", "pcr_positive_date"]],
        on="patient_id", how="left", validate="many_to_one",
    )
    for column, name in (("scan_date", "scans.csv"), ("pcr_positive_date", "patients.csv")):
        parsed = pd.to_datetime(scans[column].replace("", None), format="%Y-%m-%d", errors="coerce")
        bad = scans[column].ne("") & parsed.isna()
        if bad.any():
            raise ManifestError(f"{name}: column {column!r} has unparseable date(s) {sorted(scans.loc[bad, column].unique())[:5]}")
        scans[column + "_dt"] = parsed

    selected = series[series["selected"]].set_index("study_uid")
    by_study = {uid: g for uid, g in series.groupby("study_uid")}
    exclusions: list[dict] = []

    def exclude_scan(row, rule: str, reason: str) -> None:
        exclusions.append({"level": "scan", "patient_id": row.patient_id, "study_uid": row.study_uid,
                           "label": row.label, "hospital": row.hospital, "rule": rule, "reason": reason})

    kept = []
    for row in scans.itertuples(index=False):
        if row.study_uid not in by_study:
            exclude_scan(row, "missing_images", "no DICOM series with this StudyInstanceUID")
        elif row.study_uid not in selected.index:
            rule, reason = _describe_unusable(by_study[row.study_uid])
            exclude_scan(row, rule, reason)
        elif params.exclude_motion_artifact and row.motion_artifact == "1":
            exclude_scan(row, "motion_artifact", "reader flagged severe motion artefact (motion_artifact=1)")
        else:
            kept.append(row.study_uid)

    # Patient level: the first CT (of all the patient's scans) against the first positive PCR.
    first_ct = scans.groupby("patient_id")["scan_date_dt"].min()
    patient_out: set[str] = set()
    for pid, first in first_ct.items():
        p = patients.loc[pid]
        if p["label"] != "covid" or not p["pcr_positive_date"]:
            continue
        gap = abs((first - pd.Timestamp(p["pcr_positive_date"])).days)
        if gap > params.max_pcr_gap_days:
            patient_out.add(pid)
            exclusions.append({"level": "patient", "patient_id": pid, "study_uid": "", "label": p["label"],
                               "hospital": p["hospital"], "rule": "pcr_gap",
                               "reason": f"first CT {first.date()} is {gap} days from first positive PCR "
                                         f"{p['pcr_positive_date']} (> {params.max_pcr_gap_days})"})
    cohort = scans[scans["study_uid"].isin(kept) & ~scans["patient_id"].isin(patient_out)].copy()
    for pid in sorted(set(patients.index) - set(cohort["patient_id"]) - patient_out):
        p = patients.loc[pid]
        exclusions.append({"level": "patient", "patient_id": pid, "study_uid": "", "label": p["label"],
                           "hospital": p["hospital"], "rule": "no_scan_left",
                           "reason": "every scan of the patient was excluded"})

    manifest_studies = set(scans["study_uid"])
    for uid, group in by_study.items():
        if uid not in manifest_studies:
            first = group.iloc[0]
            exclusions.append({"level": "scan", "patient_id": first["patient_id"], "study_uid": uid, "label": "",
                               "hospital": "", "rule": "not_in_manifest",
                               "reason": f"{len(group)} series with PatientID {first['patient_id']!r}"})

    cohort["series_uid"] = cohort["study_uid"].map(selected["series_uid"])
    cohort = cohort.sort_values(["patient_id", "scan_date_dt", "study_uid"])
    cohort["scan_order"] = cohort.groupby("patient_id").cumcount() + 1
    days = (cohort["scan_date_dt"] - cohort["pcr_positive_date_dt"]).dt.days
    cohort["days_from_pcr"] = days.astype("Int64")
    cohort = cohort[list(COHORT_COLUMNS)].reset_index(drop=True)
    excl = pd.DataFrame(exclusions, columns=list(EXCLUSION_COLUMNS))

    def rule_counts(rule: str) -> dict:
        rows = excl[excl["rule"] == rule]
        out = {"description": RULES[rule]}
        for label in ("covid", "non_covid"):
            part = rows[rows["label"] == label]
            if rule == "pcr_gap":  # the scans this patient-level rule removed
                n_scans = int((scans["patient_id"].isin(part["patient_id"]) & scans["study_uid"].isin(kept)).sum())
            else:
                n_scans = int((part["level"] == "scan").sum())
            out[label] = {"patients": int(part["patient_id"].nunique()), "scans": n_scans}
        return out

    flow = {
        "recruited": _counts(scans),
        "excluded": {rule: rule_counts(rule) for rule in RULES
                     if rule != "not_in_manifest" and (excl["rule"] == rule).any()},
        "included": _counts(cohort),
        "studies_not_in_manifest": int((excl["rule"] == "not_in_manifest").sum()),
    }
    return ExclusionResult(cohort=cohort, exclusions=excl, flow=flow)


def run_exclude(params: dict, paths) -> ExclusionResult:
    """The ``exclude`` stage: writes ``cohort.csv``, ``exclusions.csv`` and ``flow.json`` to ``paths.cohort``."""
    from covidnet import atomic
    from covidnet.data.cohort import read_manifest
    from covidnet.data.index import load_index
    from covidnet.params import section

    series, _files = load_index(paths.index)
    eparams = section(params, "exclude", ExcludeParams)
    result = apply_exclusions(read_manifest(paths.manifest), series, eparams)
    included = {label: counts["patients"] for label, counts in result.flow["included"].items()}
    short = {label: n for label, n in included.items() if n < eparams.min_patients}
    if short:
        raise ManifestError(f"{paths.manifest}: after exclusions {included} patients per class are included; "
                            f"exclude.min_patients is {eparams.min_patients} per class: the cohort is (nearly) "
                            f"empty for {', '.join(short)} ({len(result.exclusions)} exclusion(s))")
    with atomic.atomic_path(paths.cohort, directory=True) as tmp:
        result.cohort.to_csv(tmp / "cohort.csv", index=False)
        result.exclusions.to_csv(tmp / "exclusions.csv", index=False)
        atomic.write_json(tmp / "flow.json", result.flow)
    return result
