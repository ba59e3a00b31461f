"""Compressed series to the model tensor: every syntax, decoder and process count gives the very same tensor.

The reference is the uncompressed copy of the same volume through the same function (native
pixel data, read in place, one process): the compressed copies must give it bit for bit, and
so must pydicom's own decoders in one process (the path before preprocess.decoders existed).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from covidnet.data.pixels import SYNTAXES, SeriesReadError
from covidnet.data.series import index_tree
from covidnet.data.transcode import transcode
from covidnet.params import load_params, section
from covidnet.preprocess.decode import parallel_workers, shutdown_pools
from covidnet.preprocess.params import PreprocessParams
from covidnet.preprocess.series import preprocess_series
from covidnet.synthetic.dicom_writer import SeriesHeader, write_series
from support import REPO
from support.preprocess import SERIES, hu_volume, preprocess_params

DECODERS = section(load_params(REPO / "params.yaml"), "preprocess", PreprocessParams).decoders


def _series(root: Path, syntax: str, vol: np.ndarray, **kw):
    folder = root / "plain"
    paths = write_series(folder, vol, (2.5, 0.8, 0.8), header=SeriesHeader(uid_entropy="d"), **kw)
    if syntax != "none":
        for p in paths:
            transcode(p, p, syntax)
    index = index_tree(root, SERIES)
    row = index.series[index.series.selected].iloc[0]
    return index.files[index.files.series_uid == row.series_uid], (int(row.rows), int(row.columns))


@pytest.fixture(scope="module")
def volume():
    return hu_volume(d=23, h=40, w=44, seed=5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, volume):
    root = tmp_path_factory.mktemp("plain")
    files, shape = _series(root, "none", volume)
    assert (files["pixel_offset"] >= 0).all()
    p = preprocess_params(depth=9, size=48, crop=34)
    return preprocess_series(files, root, p, shape=shape)


@pytest.mark.parametrize("signed", [1, 0], ids=["signed", "unsigned"])
@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_every_syntax_gives_the_uncompressed_tensor_bit_for_bit(tmp_path, volume, reference, syntax, signed):
    files, shape = _series(tmp_path, syntax, volume, pixel_representation=signed)
    assert (files["pixel_offset"] == -1).all()
    want, want_qc = reference
    p = preprocess_params(depth=9, size=48, crop=34)
    for variant in (p,                                                        # pydicom's choice, one process
                    dataclasses.replace(p, decoders=DECODERS),                # params.yaml's decoders
                    dataclasses.replace(p, decoders=DECODERS, decode_workers=2),  # ... in two processes
                    dataclasses.replace(p, decoders=DECODERS, decode_workers=3)):
        got, qc = preprocess_series(files, tmp_path, variant, shape=shape)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert qc == pytest.approx(want_qc, nan_ok=True)


def test_parallel_read_error_names_the_file(tmp_path, volume):
    files, shape = _series(tmp_path, "jpeg_ls", volume)
    bad = tmp_path / files["path"].iloc[len(files) // 2]
    ds = pydicom.dcmread(bad)
    ds.PixelData = encapsulate([b"\xff" * 64])
    ds.save_as(bad)
    p = preprocess_params(depth=23, size=44, crop=44, decoders=DECODERS, decode_workers=2)
    with pytest.raises(SeriesReadError, match="cannot decode pixel data") as info:
        preprocess_series(files, tmp_path, p, shape=shape)
    assert str(bad) in str(info.value)
    # the pool is still usable afterwards
    good = files.drop(index=files.index[len(files) // 2])
    preprocess_series(good, tmp_path, dataclasses.replace(p, depth=8), shape=shape)


def _workers_in_child(n: int) -> int:
    return parallel_workers(n, [{"pixel_offset": -1}] * 8, (512, 512))


def test_decoding_stays_in_the_process_inside_another_pool_or_for_little_work():
    compressed = [{"pixel_offset": -1}] * 8
    assert parallel_workers(2, compressed, (512, 512)) == 2
    assert parallel_workers(2, [{"pixel_offset": 100}] * 8, (512, 512)) == 1  # native pixel data: read in place
    assert parallel_workers(4, compressed[:3], (512, 512)) == 1
    assert parallel_workers(1, compressed, (512, 512)) == 1
    assert parallel_workers(2, compressed, (512, 512), min_mpix=2.0) == 2  # 8 x 0.26 megapixels
    assert parallel_workers(2, compressed, (128, 128), min_mpix=2.0) == 1
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        assert pool.submit(_workers_in_child, 2).result() == 1


def test_decode_params_do_not_change_the_tensor_key_and_default_to_the_old_behaviour():
    p = preprocess_params()
    assert p.decode_workers == 1 and p.decoders is None and p.decode_parallel_mpix == 0.0
    assert dataclasses.replace(p, decode_workers=4, decoders=DECODERS, decode_parallel_mpix=3.0).key == p.key
    with pytest.raises(ValueError, match="decode_workers must be >= 1"):
        preprocess_params(decode_workers=0)
    with pytest.raises(ValueError, match="decode_parallel_mpix must be >= 0"):
        preprocess_params(decode_parallel_mpix=-1.0)
    loaded = section(load_params(REPO / "params.yaml"), "preprocess", PreprocessParams)
    assert set(loaded.decoders) == set(SYNTAXES) and loaded.decode_workers >= 1


def teardown_module():
    shutdown_pools()


# Python 3.11's pool, breaking, also sets an exception on the futures this process had taken
# (cancelled), which raises in its manager thread: noise of CPython (fixed in 3.12), not of ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_decoding_process_that_dies_is_a_series_read_error_and_the_next_series_gets_a_new_one(
        tmp_path, volume, monkeypatch):
    """A decoder that crashes its process (a segfault in C) fails that series, naming its files, not the caller."""
    import os

    from covidnet.preprocess import decode

    files, shape = _series(tmp_path, "rle", volume)
    p = preprocess_params(depth=23, size=44, crop=44, decoders=DECODERS, decode_workers=2)
    want, _ = preprocess_series(files, tmp_path, dataclasses.replace(p, decode_workers=1), shape=shape)
    real = decode.read_blocks

    def dies_in_a_worker(*args):
        if multiprocessing.parent_process() is not None:
            os._exit(3)
        return real(*args)

    shutdown_pools()  # the next pool is forked with the patched function
    monkeypatch.setattr(decode, "read_blocks", dies_in_a_worker)
    with pytest.raises(SeriesReadError, match="a decoding process died while reading this series' slices") as info:
        preprocess_series(files, tmp_path, p, shape=shape)
    assert files["path"].iloc[0] in str(info.value)
    monkeypatch.undo()
    shutdown_pools()
    got, _ = preprocess_series(files, tmp_path, p, shape=shape)
    np.testing.assert_array_equal(got, want)
