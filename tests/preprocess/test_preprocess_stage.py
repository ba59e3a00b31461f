"""The preprocess stage over a cohort of real DICOM series: tensors, index and QC tables, reuse, failures."""

import numpy as np
import pandas as pd
import pytest

from covidnet.data.pixels import SeriesReadError
from covidnet.data.series import index_tree
from covidnet.preprocess.stage import preprocess_cohort
from covidnet.synthetic.dicom_writer import SeriesHeader, write_series
from support.preprocess import SERIES, hu_volume, preprocess_params


def _cohort_fixture(tmp_path, n=3):
    root = tmp_path / "dicom"
    for i in range(n):
        write_series(root / f"s{i}", hu_volume(seed=i), (2.5, 0.8, 0.8), header=SeriesHeader(uid_entropy=f"s{i}"))
    index = index_tree(root, SERIES)
    sel = index.series[index.series.selected]
    split = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "study_uid": sel.study_uid.to_numpy(),
                          "series_uid": sel.series_uid.to_numpy(), "hospital": "h", "label": "covid",
                          "split": "train", "scan_date": "2020-03-01", "scan_order": 1})
    return root, index, split


def test_cohort_stage_writes_index_qc_and_reuses(tmp_path):
    root, index, split = _cohort_fixture(tmp_path)
    out = tmp_path / "pre"
    p = preprocess_params(dtype="float16", workers=2)
    s1 = preprocess_cohort(split, index.series, index.files, root, out, p, progress=False)
    assert (s1.n_scans, s1.n_reused, s1.n_failed) == (3, 0, 0)
    idx = pd.read_csv(out / "index.csv")
    qc = pd.read_csv(out / "qc.csv")
    assert len(idx) == 3 and len(qc) == 3 and qc["error"].isna().all()
    t = np.load(out / idx.path[0])
    assert t.shape == (1, 8, 30, 30) and t.dtype == np.float16
    s2 = preprocess_cohort(split, index.series, index.files, root, out, p, progress=False)
    assert s2.n_reused == 3
    # other parameters: new tensors, the old ones are pruned
    s3 = preprocess_cohort(split, index.series, index.files, root, out, preprocess_params(depth=6), progress=False)
    assert s3.n_reused == 0 and len(list((out / "tensors").glob("*.npy"))) == 3


def test_undecodable_scan_is_reported_not_fatal(tmp_path):
    root, index, split = _cohort_fixture(tmp_path)
    victim = index.files[index.files.series_uid == split.series_uid[1]].path.iloc[4]
    (root / victim).write_bytes((root / victim).read_bytes()[:-3000])  # truncate after indexing
    out = tmp_path / "pre"
    s = preprocess_cohort(split, index.series, index.files, root, out, preprocess_params(), progress=False)
    assert (s.n_scans, s.n_failed) == (2, 1)
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    err = qc.loc[qc.series_uid == split.series_uid[1], "error"].iloc[0]
    assert victim.split("/")[-1] in err and "truncated" in err
    assert split.series_uid[1] not in set(pd.read_csv(out / "index.csv").series_uid)


def test_every_scan_failing_stops_the_stage(tmp_path):
    root, index, split = _cohort_fixture(tmp_path, n=1)
    for path in index.files.path:
        (root / path).write_bytes((root / path).read_bytes()[:200])
    with pytest.raises(SeriesReadError, match="no scan could be preprocessed"):
        preprocess_cohort(split, index.series, index.files, root, tmp_path / "pre", preprocess_params(), progress=False)
    assert not (tmp_path / "pre" / "index.csv").exists()
