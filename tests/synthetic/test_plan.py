"""Tests of the SYNTHETIC cohort plan (covidnet.synthetic.plan), before any pixel is drawn."""

from __future__ import annotations

import dataclasses

from covidnet.params import load_params, section
from covidnet.synthetic.params import SynthParams
from covidnet.synthetic.plan import plan_cohort
from support import REPO


def _tiny(**changes: object) -> SynthParams:
    return dataclasses.replace(section(load_params(REPO / "params.yaml", profile="tiny"), "synth", SynthParams), **changes)


def test_plan_is_deterministic_and_consistent() -> None:
    params = _tiny()
    patients, scans, planted, tasks = plan_cohort(params)
    assert plan_cohort(params) == (patients, scans, planted, tasks)
    assert len(patients) == params.n_patients
    assert sum(p["label"] == "covid" for p in patients) == round(params.n_patients * params.covid_fraction)
    assert [t.study_uid for t in tasks] == [s["study_uid"] for s in scans]
    assert len({t.study_uid for t in tasks}) == len(tasks) and len({t.folder for t in tasks}) == len(tasks)
    # Planted cases: distinct patients, pcr_gap only among COVID-19 patients, in each patient's first study.
    labels = {p["patient_id"]: p["label"] for p in patients}
    assert len({row["patient_id"] for row in planted}) == len(planted)
    assert all(labels[row["patient_id"]] == "covid" for row in planted if row["case"] == "pcr_gap")
    first = {t.patient_id: t.study_uid for t in tasks if t.scan_index == 0}
    assert all(first[row["patient_id"]] == row["study_uid"] for row in planted)
    assert plan_cohort(_tiny(seed=params.seed + 1))[0] != patients
