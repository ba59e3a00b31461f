"""One series to the model tensor from real DICOM files: the fast path against two independent references."""

from pathlib import Path

import numpy as np
import pytest

from covidnet.data.pixels import read_volume_hu
from covidnet.data.series import index_tree
from covidnet.preprocess.array import clip_scale, resize_crop
from covidnet.preprocess.qc import QC_VALUES
from covidnet.preprocess.series import preprocess_series
from covidnet.synthetic.dicom_writer import SeriesHeader, write_series
from support.preprocess import SERIES, hu_volume, preprocess_params


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
    index, files, shape = _write(tmp_path, hu_volume(), codec, slope, intercept, signed)
    p = preprocess_params(depth=depth, size=size, crop=crop)
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
    vol = hu_volume(d=19, h=32, w=32, seed=3)
    index, files, shape = _write(tmp_path, vol)
    p = preprocess_params(depth=8, size=48, crop=36)
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
    p = preprocess_params(depth=8, size=32, crop=32)
    a, _ = preprocess_series(files_a, tmp_path / "a", p, shape=shape)
    b, _ = preprocess_series(files_b, tmp_path / "b", p, shape=shape)
    diff = b - a
    assert diff[0, 3:5, 17:23, 17:23].min() > 0.1
    assert np.abs(diff[0, :, :8, :8]).max() < 1e-6
