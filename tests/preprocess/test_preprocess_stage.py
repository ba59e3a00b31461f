"""Preprocessing from real DICOM files: the fast path against two independent references."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covidnet.data.pixels import SeriesReadError, read_volume_hu
from covidnet.data.series import SeriesParams, index_tree
from covidnet.preprocess.stage import QC_VALUES, PreprocessParams, clip_scale, preprocess_cohort, preprocess_series, resize_crop
from covidnet.synthetic.dicom_writer import SeriesHeader, write_series

SERIES = SeriesParams(min_slices=4, max_gap_ratio=1.5, duplicate_tol_mm=0.01, orientation_tol=1e-3, axial_tol=0.1,
                      workers=1)


def _params(**kw):
    base = dict(hu_min=-1024.0, hu_max=1024.0, depth=8, size=40, crop=30, dtype="float32",
                body_hu=-500.0, lung_hu=(-950.0, -400.0), workers=1)
    return PreprocessParams(**{**base, **kw})


def _volume(d=21, h=36, w=44, seed=0):
    rng = np.random.default_rng(seed)
    vol = rng.integers(-1500, 2000, size=(d, h, w)).astype(np.float64)  # beyond the clip window on purpose
    vol[:, 10:20, 12:30] = -800  # an air pocket, a body block
    return vol


def _write(root: Path, vol, codec="none", slope=1.0, intercept=-1024.0, signed=1, uid="t"):
    write_series(root / uid, vol, (2.5, 0.8, 0.8), codec=codec, rescale_slope=slope, rescale_intercept=intercept,
                 pixel_representation=signed, header=SeriesHeader(uid_entropy=uid))
    index = index_tree(root, SERIES)
    row = index.series[index.series.selected].iloc[0]
    files = index.files[index.files.series_uid == row.series_uid]
    return index, files, (int(row.rows), int(row.columns))


@pytest.mark.parametrize("codec,slope,intercept,signed", [
    ("none", 1.0, -1024.0, 1), ("none", 0.5, -1024.0, 0), ("rle", 1.0, 0.0, 1), ("jpeg_ls", 1.0, -1024.0, 1),
    ("jpeg2000", 1.0, -1024.0, 0),
])
@pytest.mark.parametrize("depth,size,crop", [(8, 40, 30), (30, 64, 64), (5, 17, 9), (21, 36, 20)])  # 36: rows not resized
def test_fast_path_equals_whole_volume_reference(tmp_path, codec, slope, intercept, signed, depth, size, crop):
    """Reading only needed slices/rows gives the plain definition's numbers (tolerance 1e-5)."""
    index, files, shape = _write(tmp_path, _volume(), codec, slope, intercept, signed)
    p = _params(depth=depth, size=size, crop=crop)
    ours, qc = preprocess_series(files, tmp_path, p, shape=shape)
    hu = read_volume_hu(files, tmp_path, shape)
    ref = resize_crop(clip_scale(hu, p.hu_min, p.hu_max), depth, size, crop)
    assert ours.shape == (1, depth, crop, crop)
    np.testing.assert_allclose(ours[0], ref, atol=1e-5)
    assert 0.0 <= ours.min() and ours.max() <= 1.0
    # the shape is learnt from the first slice when not given
    np.testing.assert_allclose(preprocess_series(files, tmp_path, p, with_qc=False)[0], ours, atol=0)
    assert set(qc) == set(QC_VALUES) and qc["n_slices"] == len(files)
    assert qc["slice_spacing_mm"] == pytest.approx(float(np.median(np.diff(files["position_mm"]))))


def test_matches_monai_chain(tmp_path):
    """MONAI's LoadImage(PydicomReader) -> ScaleIntensityRange -> Resize -> CenterSpatialCrop, within 1e-3."""
    monai_t = pytest.importorskip("monai.transforms")
    vol = _volume(d=19, h=32, w=32, seed=3)
    index, files, shape = _write(tmp_path, vol)
    p = _params(depth=8, size=48, crop=36)
    ours, _ = preprocess_series(files, tmp_path, p, shape=shape)
    chain = monai_t.Compose([
        monai_t.LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True),
        monai_t.ScaleIntensityRange(a_min=p.hu_min, a_max=p.hu_max, b_min=0.0, b_max=1.0, clip=True),
        monai_t.Resize(spatial_size=(p.size, p.size, p.depth), mode="trilinear"),
        monai_t.CenterSpatialCrop(roi_size=(p.crop, p.crop, p.depth)),
    ])
    m = np.asarray(chain(str(tmp_path / "t")))          # (1, x=col, y=row, z by InstanceNumber)
    m = m.transpose(0, 3, 2, 1)[:, ::-1]                 # write_series: instance 1 is the most cranial slice
    np.testing.assert_allclose(ours, m, atol=1e-3)


def test_lesion_raises_values_where_drawn(tmp_path):
    """Behaviour: denser tissue in the input gives higher values in the same place of the tensor."""
    vol = np.full((16, 32, 32), -850.0)
    _, files_a, shape = _write(tmp_path / "a", vol, uid="a")
    vol_b = vol.copy()
    vol_b[6:10, 16:24, 16:24] = -600  # a ground-glass patch
    _, files_b, _ = _write(tmp_path / "b", vol_b, uid="b")
    p = _params(depth=8, size=32, crop=32)
    a, _ = preprocess_series(files_a, tmp_path / "a", p, shape=shape)
    b, _ = preprocess_series(files_b, tmp_path / "b", p, shape=shape)
    diff = b - a
    assert diff[0, 3:5, 17:23, 17:23].min() > 0.1
    assert np.abs(diff[0, :, :8, :8]).max() < 1e-6


def _cohort_fixture(tmp_path, n=3):
    root = tmp_path / "dicom"
    for i in range(n):
        write_series(root / f"s{i}", _volume(seed=i), (2.5, 0.8, 0.8), header=SeriesHeader(uid_entropy=f"s{i}"))
    index = index_tree(root, SERIES)
    sel = index.series[index.series.selected]
    split = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "study_uid": sel.study_uid.to_numpy(),
                          "series_uid": sel.series_uid.to_numpy(), "hospital": "h", "label": "covid",
                          "split": "train", "scan_date": "2020-03-01", "scan_order": 1})
    return root, index, split


def test_cohort_stage_writes_index_qc_and_reuses(tmp_path):
    root, index, split = _cohort_fixture(tmp_path)
    out = tmp_path / "pre"
    p = _params(dtype="float16", workers=2)
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
    s3 = preprocess_cohort(split, index.series, index.files, root, out, _params(depth=6), progress=False)
    assert s3.n_reused == 0 and len(list((out / "tensors").glob("*.npy"))) == 3


def test_undecodable_scan_is_reported_not_fatal(tmp_path):
    root, index, split = _cohort_fixture(tmp_path)
    victim = index.files[index.files.series_uid == split.series_uid[1]].path.iloc[4]
    (root / victim).write_bytes((root / victim).read_bytes()[:-3000])  # truncate after indexing
    out = tmp_path / "pre"
    s = preprocess_cohort(split, index.series, index.files, root, out, _params(), progress=False)
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
        preprocess_cohort(split, index.series, index.files, root, tmp_path / "pre", _params(), progress=False)
    assert not (tmp_path / "pre" / "index.csv").exists()
