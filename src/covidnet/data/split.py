"""Patient-level split: train : validation : test, stratified by label, plus an external set.

As in Liu et al. (2021): patients (never scans) are split at random 3:1:1; training and
validation use all scans of each patient; test sets use each patient's first scan only. A
secondary (external) test cohort, chosen by hospital and/or first-scan date, is set apart
before the split and also keeps first scans only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from covidnet.data.cohort import LABELS
from covidnet.errors import CovidnetError

SPLITS = ("train", "val", "test")
EXTERNAL = "external"
SPLIT_COLUMNS = ("patient_id", "study_uid", "series_uid", "hospital", "label", "split", "scan_date", "scan_order")


@dataclass(frozen=True)
class ExternalRule:
    """Which patients form the secondary test cohort (either condition selects)."""

    hospitals: list[str] = field(default_factory=list)
    scan_date_from: str | None = None


@dataclass(frozen=True)
class SplitParams:
    """The ``split`` section of params.yaml."""

    seed: int
    ratios: list[float]
    min_per_class: int                  # patients of each class every split (train, val, test) must hold
    external: ExternalRule = field(default_factory=ExternalRule)

    def __post_init__(self) -> None:
        if self.min_per_class < 1:
            raise ValueError(f"split.min_per_class: must be >= 1, got {self.min_per_class}")
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or sum(self.ratios) <= 0:
            raise ValueError(f"split.ratios must be three non-negative numbers (train, val, test), got {self.ratios}")
        if self.external.scan_date_from is not None:
            try:
                dt.date.fromisoformat(self.external.scan_date_from)
            except ValueError:
                raise ValueError(
                    f"split.external.scan_date_from {self.external.scan_date_from!r} is not an ISO date YYYY-MM-DD"
                ) from None


class SplitError(CovidnetError, RuntimeError):
    """The split violates an invariant (a patient in two splits, an empty split)."""


def _allocate(n: int, ratios: list[float]) -> list[int]:
    """Split ``n`` items by ``ratios`` with cumulative rounding (sizes add up to ``n``)."""
    cum = np.cumsum(ratios) / float(sum(ratios))
    bounds = np.rint(cum * n).astype(int)
    return list(np.diff(np.concatenate([[0], bounds])))


def split_cohort(cohort: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """Assign every patient to train, val, test or external.

    Args:
        cohort: one row per included scan (the exclude stage's cohort table, with
            ``scan_order`` 1 for each patient's first scan).
        params: ratios, seed and the external rule.

    Returns:
        One row per scan kept, :data:`SPLIT_COLUMNS`: all scans for train and val, the first
        scan for test and external.

    Raises:
        SplitError: a patient ends up in two splits (checked, not assumed).
    """
    patients = cohort.sort_values("scan_order").groupby("patient_id", sort=True).first()
    external = patients["hospital"].isin(params.external.hospitals)
    if params.external.scan_date_from is not None:
        external |= patients["scan_date"] >= params.external.scan_date_from
    assignment = pd.Series(EXTERNAL, index=patients.index, dtype=object)
    rng = np.random.default_rng(params.seed)
    for label in LABELS:
        ids = np.array(sorted(patients.index[(patients["label"] == label) & ~external]))
        ids = ids[rng.permutation(len(ids))]
        start = 0
        for name, size in zip(SPLITS, _allocate(len(ids), params.ratios)):
            assignment.loc[ids[start : start + size]] = name
            start += size

    out = cohort.assign(split=cohort["patient_id"].map(assignment))
    first_only = out["split"].isin(["test", EXTERNAL])
    out = out[~first_only | (out["scan_order"] == 1)]
    out = out[list(SPLIT_COLUMNS)].sort_values(["split", "patient_id", "scan_order"]).reset_index(drop=True)
    check_split(out)
    return out


def check_split(split: pd.DataFrame) -> None:
    """Raise :class:`SplitError` if a patient sits in two splits or a test set has two scans of one patient."""
    per_patient = split.groupby("patient_id")["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if not leaked.empty:
        pid = leaked.index[0]
        raise SplitError(f"patient {pid} is in splits {sorted(split.loc[split.patient_id == pid, 'split'].unique())}")
    tests = split[split["split"].isin(["test", EXTERNAL])]
    dup = tests["patient_id"].duplicated()
    if dup.any():
        raise SplitError(f"patient {tests.loc[dup, 'patient_id'].iloc[0]} has more than one scan in a test set")


def split_counts(split: pd.DataFrame) -> dict:
    """Patients and scans per split and class: ``{split: {label: {patients, scans}}}``."""
    out = {}
    for name in (*SPLITS, EXTERNAL):
        part = split[split["split"] == name]
        out[name] = {
            label: {"patients": int(part.loc[part.label == label, "patient_id"].nunique()),
                    "scans": int((part.label == label).sum())}
            for label in LABELS
        }
    return out


@dataclass(frozen=True)
class SplitResult:
    """What the ``split`` stage wrote: the split table and the flow counts with the splits."""

    split: pd.DataFrame
    flow: dict

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {v['covid']['patients'] + v['non_covid']['patients']}"
                          for k, v in self.flow["split"].items())
        return f"patients per split: {sizes}"


def run_split(params: dict, paths) -> SplitResult:
    """The ``split`` stage: the split table (``paths.split``), the flow report (``paths.flow``) and the
    cohort metrics (``paths.metrics``)."""
    import json

    from covidnet import atomic
    from covidnet.data.flow import flow_metrics, render_flow
    from covidnet.params import is_synthetic, section

    cohort = pd.read_csv(paths.cohort / "cohort.csv", dtype=str, keep_default_na=False)
    cohort["scan_order"] = cohort["scan_order"].astype(int)
    sparams = section(params, "split", SplitParams)
    split = split_cohort(cohort, sparams)
    counts = split_counts(split)
    short = [f"{name} {label} {counts.get(name, {}).get(label, {}).get('patients', 0)}" for name in SPLITS
             for label in LABELS if counts.get(name, {}).get(label, {}).get("patients", 0) < sparams.min_per_class]
    if short:
        raise SplitError(f"{paths.cohort}: {len(set(cohort['patient_id']))} patients split {sparams.ratios} leave too "
                         f"few patients ({', '.join(short)}); split.min_per_class is {sparams.min_per_class}")
    flow = json.loads((paths.cohort / "flow.json").read_text())
    flow["split"] = counts
    flow["synthetic"] = is_synthetic(params)
    atomic.write_csv(paths.split, split)
    with atomic.atomic_path(paths.flow, directory=True) as tmp:
        atomic.write_json(tmp / "flow.json", flow)
        (tmp / "flow.md").write_text(render_flow(flow, synthetic=flow["synthetic"]))
    atomic.write_json(paths.metrics, flow_metrics(flow))
    return SplitResult(split, flow)
