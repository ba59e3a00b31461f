import pandas as pd
import pytest

from covidnet.data.split import ExternalRule, SplitError, SplitParams, check_split, split_cohort, split_counts


def _cohort(n_per_label=10, hospitals=("h1", "h2", "h3")):
    rows = []
    for label in ("covid", "non_covid"):
        for i in range(n_per_label):
            pid = f"{label[0]}{i:03d}"
            for order in (1, 2, 3)[: 1 + i % 3]:
                rows.append({"patient_id": pid, "study_uid": f"1.2.{pid}.{order}", "series_uid": f"1.3.{pid}.{order}",
                             "hospital": hospitals[i % len(hospitals)], "label": label,
                             "scan_date": f"2020-03-{10 + order:02d}", "scan_order": order})
    return pd.DataFrame(rows)


def test_patient_level_stratified_3_1_1():
    cohort = _cohort(10)
    split = split_cohort(cohort, SplitParams(seed=1, ratios=[3, 1, 1], min_per_class=1))
    counts = split_counts(split)
    for label in ("covid", "non_covid"):
        assert [counts[s][label]["patients"] for s in ("train", "val", "test")] == [6, 2, 2]
    # no patient in two splits
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    # train/val keep every scan; test keeps the first scan only
    trval = split[split.split.isin(["train", "val"])]
    assert len(trval) == len(cohort[cohort.patient_id.isin(trval.patient_id)])
    test = split[split.split == "test"]
    assert (test.scan_order == 1).all() and not test.patient_id.duplicated().any()


def test_deterministic_for_seed_and_changes_with_seed():
    cohort = _cohort(10)
    a = split_cohort(cohort, SplitParams(seed=1, ratios=[3, 1, 1], min_per_class=1))
    b = split_cohort(cohort.sample(frac=1, random_state=3), SplitParams(seed=1, ratios=[3, 1, 1], min_per_class=1))
    c = split_cohort(cohort, SplitParams(seed=2, ratios=[3, 1, 1], min_per_class=1))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_external_by_hospital_and_date():
    cohort = _cohort(9)
    split = split_cohort(cohort, SplitParams(seed=0, ratios=[3, 1, 1], min_per_class=1, external=ExternalRule(hospitals=["h3"])))
    ext = split[split.split == "external"]
    assert set(ext.hospital) == {"h3"} and (ext.scan_order == 1).all()
    assert "h3" not in set(split[split.split != "external"].hospital)
    by_date = split_cohort(cohort, SplitParams(seed=0, ratios=[3, 1, 1], min_per_class=1,
                                               external=ExternalRule(scan_date_from="2020-03-11")))
    assert set(by_date.split) == {"external"}  # every first scan is on 2020-03-11


def test_leak_is_detected():
    bad = pd.DataFrame({"patient_id": ["p1", "p1"], "split": ["train", "test"], "scan_order": [1, 2]})
    with pytest.raises(SplitError, match="patient p1 is in splits"):
        check_split(bad)


def test_bad_ratios():
    with pytest.raises(ValueError, match="split.ratios must be three"):
        SplitParams(seed=0, ratios=[3, 1], min_per_class=1)
    with pytest.raises(ValueError, match="scan_date_from '03/2020' is not an ISO date"):
        SplitParams(seed=0, ratios=[3, 1, 1], min_per_class=1, external=ExternalRule(scan_date_from="03/2020"))
