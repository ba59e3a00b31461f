"""Tests of covidnet.data.pixels (stored values and HU) on real DICOM files written by covidnet.synthetic.dicom_writer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from covidnet.data.pixels import SeriesReadError, read_stored, read_volume_hu
from covidnet.data.series import index_tree
from covidnet.synthetic.dicom_writer import SeriesHeader, stored_encoding, write_series
from support.dicom_cases import (
    CODECS,
    PARAMS,
    SHAPE,
    SHAPE_J2K,
    SPACING,
    cut_file,
    edit_dataset,
    only_series,
    random_volume,
    relative_paths,
    write_random_series,
)

# 1. Known-volume round trip -------------------------------------------------------------


@pytest.mark.parametrize("signed", [1, 0], ids=["signed", "unsigned"])
@pytest.mark.parametrize("slope", [1.0, 0.5])
@pytest.mark.parametrize("intercept", [-1024.0, 0.0])
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_exact_hu_in_slice_order(tmp_path: Path, codec: str, intercept: float, slope: float, signed: int) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    volume = random_volume(1, shape, slope)
    written = write_random_series(tmp_path, volume, codec=codec, rescale_intercept=intercept, rescale_slope=slope,
                     pixel_representation=signed)
    (tmp_path / "README.txt").write_text("not DICOM\n")

    index = index_tree(tmp_path, PARAMS)

    row = only_series(index)
    assert row["eligible"] and row["selected"], row["reason"]
    assert row["n_slices"] == shape[0] and (row["rows"], row["columns"]) == shape[1:]
    assert row["slice_spacing_mm"] == pytest.approx(SPACING[0])
    assert row["institution"] == SeriesHeader().institution  # InstitutionName, the log's hospital
    files = index.files
    # write_series puts slice 0 most cranial (highest z); the index orders by ascending z.
    assert list(files["path"]) == relative_paths(written[::-1], tmp_path)
    assert np.all(np.diff(files["position_mm"]) > 0)
    want_intercept, want_bits = stored_encoding(intercept, slope, signed)
    assert set(files["rescale_intercept"]) == {want_intercept}
    assert set(files["rescale_slope"]) == {slope}
    assert set(files["bits_stored"]) == {want_bits} and set(files["pixel_representation"]) == {signed}
    assert (files["pixel_offset"] >= 0).all() if codec == "none" else (files["pixel_offset"] == -1).all()

    hu = read_volume_hu(files, tmp_path, shape[1:])
    assert hu.dtype == np.float32 and hu.shape == shape
    np.testing.assert_array_equal(hu, volume[::-1])


@pytest.mark.parametrize("signed", [1, 0], ids=["signed", "unsigned"])
@pytest.mark.parametrize("codec", CODECS)
def test_in_place_read_matches_decoder(tmp_path: Path, codec: str, signed: int) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    write_random_series(tmp_path, random_volume(2, shape), codec=codec, pixel_representation=signed)
    files = index_tree(tmp_path, PARAMS).files
    window = (3, 9)
    for r in files.itertuples():
        path = tmp_path / r.path
        args = (r.bits_stored, r.pixel_representation, shape[1:])
        decoded = read_stored(path, -1, *args)
        assert decoded.shape == shape[1:]
        np.testing.assert_array_equal(read_stored(path, -1, *args, rows=window), decoded[window[0] : window[1]])
        if codec == "none":
            assert r.pixel_offset >= 0
            np.testing.assert_array_equal(read_stored(path, r.pixel_offset, *args), decoded)
            part = read_stored(path, r.pixel_offset, *args, rows=window)
            assert part.shape == (window[1] - window[0], shape[2])
            np.testing.assert_array_equal(part, decoded[window[0] : window[1]])


@pytest.mark.parametrize("signed", [1, 0], ids=["signed", "unsigned"])
def test_unused_high_bits_are_ignored_by_both_readers(tmp_path: Path, signed: int) -> None:
    """BitsStored 12 with junk in bits 12-15: masked (unsigned) or sign-extended from bit 11 (signed)."""
    rng = np.random.default_rng(3)
    stored = rng.integers(-2048, 2048, (4, 8, 8)) if signed else rng.integers(0, 4096, (4, 8, 8))
    volume = stored.astype(np.float32) + (0.0 if signed else -1024.0)
    written = write_series(tmp_path / "s", volume, SPACING, rescale_intercept=0.0 if signed else -1024.0,
                           pixel_representation=signed)
    junk = np.uint16(0b1010 << 12)

    def dirty(ds) -> None:
        raw = np.frombuffer(ds.PixelData, "<u2")
        ds.PixelData = ((raw & np.uint16(0x0FFF)) | junk).astype("<u2").tobytes()
        ds.BitsStored, ds.HighBit = 12, 11

    for path in written:
        edit_dataset(path, dirty)
    files = index_tree(tmp_path, dataclasses.replace(PARAMS, min_slices=2)).files
    assert set(files["bits_stored"]) == {12}
    for r in files.itertuples():
        k = written.index(tmp_path / r.path)
        fast = read_stored(tmp_path / r.path, r.pixel_offset, r.bits_stored, r.pixel_representation, (8, 8))
        slow = read_stored(tmp_path / r.path, -1, r.bits_stored, r.pixel_representation, (8, 8))
        np.testing.assert_array_equal(fast, stored[k])
        np.testing.assert_array_equal(slow, stored[k])


# 2. Deflated files and unreadable pixel data ------------------------------------------------


def test_deflated_series_is_read_or_rejected_for_its_syntax(tmp_path: Path) -> None:
    volume = random_volume(15)
    written = write_random_series(tmp_path, volume)
    deflated = pydicom.uid.DeflatedExplicitVRLittleEndian
    for p in written:
        edit_dataset(p, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", deflated))
    assert pydicom.dcmread(written[0]).pixel_array.shape == SHAPE[1:]  # the files are valid

    index = index_tree(tmp_path, PARAMS)

    assert index.skipped.empty, index.skipped["reason"].iloc[0]
    row = only_series(index)
    if row["eligible"]:
        np.testing.assert_array_equal(read_volume_hu(index.files, tmp_path, SHAPE[1:]), volume[::-1])
    else:
        assert "transfer syntax" in row["reason"]


@pytest.mark.parametrize("codec", ["rle", "jpeg_ls", "jpeg2000"])
@pytest.mark.parametrize("payload", [b"\x00" * 64, b"\xff" * 64], ids=["zeros", "ones"])
def test_corrupt_payload_raises_series_read_error_naming_file(tmp_path: Path, codec: str, payload: bytes) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    written = write_random_series(tmp_path, random_volume(16, shape), codec=codec)
    edit_dataset(written[7], lambda ds: setattr(ds, "PixelData", encapsulate([payload])))
    index = index_tree(tmp_path, PARAMS)
    assert only_series(index)["eligible"]  # the header is fine: only decoding finds it

    with pytest.raises(SeriesReadError, match="cannot decode pixel data") as info:
        read_volume_hu(index.files, tmp_path, shape[1:])

    assert str(written[7]) in str(info.value)
    assert info.value.__cause__ is not None


def test_file_cut_after_indexing_raises_series_read_error(tmp_path: Path) -> None:
    written = write_random_series(tmp_path, random_volume(17))
    files = index_tree(tmp_path, PARAMS).files
    cut_file(written[0], 0.9)
    r = files.iloc[-1]  # written[0] is the most cranial slice: last in the index
    assert tmp_path / r["path"] == written[0]

    for offset in (int(r["pixel_offset"]), -1):  # in place, and through the decoder
        with pytest.raises(SeriesReadError) as info:
            read_stored(written[0], offset, 16, 1, SHAPE[1:])
        assert str(written[0]) in str(info.value)


def test_slice_of_another_size_raises_series_read_error(tmp_path: Path) -> None:
    written = write_series(tmp_path / "s", random_volume(18, (2, 8, 8)), SPACING, codec="rle")
    with pytest.raises(SeriesReadError, match="differs from the series"):
        read_stored(written[0], -1, 16, 1, (16, 16))
