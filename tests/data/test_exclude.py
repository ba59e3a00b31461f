import pandas as pd

from covidnet.data.cohort import Manifest
from covidnet.data.exclude import ExcludeParams, apply_exclusions

PARAMS = ExcludeParams(max_pcr_gap_days=14, exclude_motion_artifact=True, min_patients=1)


def _series(study, series, *, selected=True, eligible=True, contrast=False, reason="", image_type="ORIGINAL\\PRIMARY\\AXIAL",
            patient="p"):
    return {"patient_id": patient, "study_uid": study, "series_uid": series, "modality": "CT", "image_type": image_type,
            "contrast": contrast, "eligible": eligible, "selected": selected, "reason": reason}


def _fixture():
    patients = pd.DataFrame([
        ["c1", "h1", "covid", "SARS-CoV-2", "2020-02-01", "F", "50"],   # kept, two scans
        ["c2", "h1", "covid", "SARS-CoV-2", "2020-02-01", "M", "60"],   # first CT 20 days after PCR
        ["n1", "h2", "non_covid", "influenza A", "", "F", "40"],        # one motion scan, one ok
        ["n2", "h2", "non_covid", "RSV", "", "M", "70"],                # contrast only
        ["n3", "h2", "non_covid", "RSV", "", "M", "71"],                # broken series
        ["n4", "h2", "non_covid", "RSV", "", "M", "72"],                # images missing
    ], columns=["patient_id", "hospital", "label", "pathogen", "pcr_positive_date", "sex", "age"])
    scans = pd.DataFrame([
        ["c1", "s1", "", "2020-02-05", "0"], ["c1", "s2", "", "2020-02-03", "0"],
        ["c2", "s3", "", "2020-02-21", "0"],
        ["n1", "s4", "", "2020-03-01", "1"], ["n1", "s5", "", "2020-03-04", "0"],
        ["n2", "s6", "", "2020-03-01", "0"],
        ["n3", "s7", "", "2020-03-01", "0"],
        ["n4", "s8", "", "2020-03-01", "0"],
    ], columns=["patient_id", "study_uid", "series_uid", "scan_date", "motion_artifact"])
    series = pd.DataFrame([
        _series("s1", "x1"), _series("s2", "x2"), _series("s3", "x3"), _series("s4", "x4"), _series("s5", "x5"),
        _series("s6", "x6", selected=False, eligible=False, contrast=True, reason="contrast-enhanced"),
        _series("s6", "x6l", selected=False, eligible=False, image_type="ORIGINAL\\PRIMARY\\LOCALIZER", reason="localizer"),
        _series("s7", "x7", selected=False, eligible=False, reason="gap in slice positions: 10 mm"),
        _series("s9", "x9", patient="zz"),
    ])
    return Manifest(patients, scans), series


def test_each_rule_with_reason():
    manifest, series = _fixture()
    r = apply_exclusions(manifest, series, PARAMS)
    rules = {(row.patient_id, row.study_uid): row.rule for row in r.exclusions.itertuples()}
    assert rules[("c2", "")] == "pcr_gap"
    assert rules[("n1", "s4")] == "motion_artifact"
    assert rules[("n2", "s6")] == "contrast_only"
    assert rules[("n3", "s7")] == "no_usable_series"
    assert rules[("n4", "s8")] == "missing_images"
    assert rules[("zz", "s9")] == "not_in_manifest"
    assert {p for (p, s), rule in rules.items() if rule == "no_scan_left"} == {"n2", "n3", "n4"}
    reason = r.exclusions.set_index("rule").loc["pcr_gap", "reason"]
    assert "20 days" in reason and "2020-02-01" in reason
    assert "gap in slice positions" in r.exclusions.set_index("rule").loc["no_usable_series", "reason"]
    assert sorted(r.cohort.study_uid) == ["s1", "s2", "s5"]


def test_first_scan_order_and_series():
    manifest, series = _fixture()
    cohort = apply_exclusions(manifest, series, PARAMS).cohort.set_index("study_uid")
    assert cohort.loc["s2", "scan_order"] == 1 and cohort.loc["s1", "scan_order"] == 2  # by date, not file order
    assert cohort.loc["s1", "series_uid"] == "x1"
    assert cohort.loc["s2", "days_from_pcr"] == 2


def test_flow_counts_add_up():
    manifest, series = _fixture()
    flow = apply_exclusions(manifest, series, PARAMS).flow
    for label in ("covid", "non_covid"):
        removed = sum(c[label]["scans"] for c in flow["excluded"].values())
        assert flow["recruited"][label]["scans"] - removed == flow["included"][label]["scans"]
    assert flow["excluded"]["pcr_gap"]["covid"] == {"patients": 1, "scans": 1}
    assert flow["studies_not_in_manifest"] == 1


def test_thresholds_come_from_params():
    manifest, series = _fixture()
    r = apply_exclusions(manifest, series, ExcludeParams(max_pcr_gap_days=30, exclude_motion_artifact=False, min_patients=1))
    assert "pcr_gap" not in set(r.exclusions.rule) and "motion_artifact" not in set(r.exclusions.rule)
    assert {"s3", "s4"} <= set(r.cohort.study_uid)
