"""Tests of covidnet.data.dicom on real DICOM files written by covidnet.synthetic.synth (tiny volumes, no mocks)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid
import pytest
from pydicom.encaps import encapsulate

from covidnet.data.dicom import (
    SeriesParams,
    SeriesReadError,
    index_tree,
    read_headers,
    read_stored,
    read_volume_hu,
)
from covidnet.synthetic.dicom_writer import SeriesHeader, stored_encoding, write_series

PARAMS = SeriesParams(min_slices=8, max_gap_ratio=1.5, duplicate_tol_mm=0.01, orientation_tol=1e-3, axial_tol=0.1,
                      workers=1)
SPACING = (2.5, 0.75, 0.75)  # (slice step, row, column) mm
SHAPE = (12, 16, 24)  # rows != columns, so a transposed read cannot pass
SHAPE_J2K = (12, 32, 40)  # synth's jpeg2000 needs slices of at least 32x32
CODECS = ("none", "rle", "jpeg_ls", "jpeg2000")


def _volume(seed: int, shape: tuple[int, int, int] = SHAPE, slope: float = 1.0) -> np.ndarray:
    """Random HU in [-1024, 3071], whole multiples of ``slope`` (exactly representable)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(round(-1024 / slope), round(3071 / slope) + 1, shape) * slope).astype(np.float32)


def _hex(rng: np.random.Generator, n: int = 12) -> str:
    return "".join(rng.choice(list("0123456789abcdef"), n))


def _write(root: Path, volume: np.ndarray, seed: int = 0, *, header: SeriesHeader | None = None,
           skip_slices: tuple[int, ...] = (), **kwargs: object) -> list[Path]:
    """One series in a nested random folder under ``root``, random file names (some ``.dcm``)."""
    rng = np.random.default_rng(seed)
    folder = root / _hex(rng, 6) / _hex(rng, 4)
    n = volume.shape[0] - len(skip_slices)
    names = [_hex(rng) + (".dcm" if rng.random() < 0.5 else "") for _ in range(n)]
    header = header or SeriesHeader(uid_entropy=f"series-{seed}")
    return write_series(folder, volume, SPACING, header=header, file_names=names, skip_slices=skip_slices, **kwargs)


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def _only_series(index):
    assert len(index.series) == 1, index.series
    return index.series.iloc[0]


# 1. Known-volume round trip -------------------------------------------------------------


@pytest.mark.parametrize("signed", [1, 0], ids=["signed", "unsigned"])
@pytest.mark.parametrize("slope", [1.0, 0.5])
@pytest.mark.parametrize("intercept", [-1024.0, 0.0])
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_exact_hu_in_slice_order(tmp_path: Path, codec: str, intercept: float, slope: float, signed: int) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    volume = _volume(1, shape, slope)
    written = _write(tmp_path, volume, codec=codec, rescale_intercept=intercept, rescale_slope=slope,
                     pixel_representation=signed)
    (tmp_path / "README.txt").write_text("not DICOM\n")

    index = index_tree(tmp_path, PARAMS)

    row = _only_series(index)
    assert row["eligible"] and row["selected"], row["reason"]
    assert row["n_slices"] == shape[0] and (row["rows"], row["columns"]) == shape[1:]
    assert row["slice_spacing_mm"] == pytest.approx(SPACING[0])
    assert row["institution"] == SeriesHeader().institution  # InstitutionName, the log's hospital
    files = index.files
    # write_series puts slice 0 most cranial (highest z); the index orders by ascending z.
    assert list(files["path"]) == _rel(written[::-1], tmp_path)
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
    _write(tmp_path, _volume(2, shape), codec=codec, pixel_representation=signed)
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
        _edit(path, dirty)
    files = index_tree(tmp_path, dataclasses.replace(PARAMS, min_slices=2)).files
    assert set(files["bits_stored"]) == {12}
    for r in files.itertuples():
        k = written.index(tmp_path / r.path)
        fast = read_stored(tmp_path / r.path, r.pixel_offset, r.bits_stored, r.pixel_representation, (8, 8))
        slow = read_stored(tmp_path / r.path, -1, r.bits_stored, r.pixel_representation, (8, 8))
        np.testing.assert_array_equal(fast, stored[k])
        np.testing.assert_array_equal(slow, stored[k])


# 2. Slice order comes from ImagePositionPatient ----------------------------------------------


def test_order_ignores_file_names_and_instance_numbers(tmp_path: Path) -> None:
    volume = _volume(4)
    n = volume.shape[0]
    written = write_series(tmp_path / "series", volume, SPACING, file_names=[f"IM{k:04d}.dcm" for k in range(n)])
    # Reverse the names (IM0000 becomes the most caudal slice) through temporary names.
    for k, path in enumerate(written):
        path.rename(path.with_name(f"tmp{k}"))
    for k in range(n):
        (tmp_path / "series" / f"tmp{k}").rename(written[n - 1 - k])
    renamed = written[::-1]  # renamed[k] holds slice k now
    perm = np.random.default_rng(5).permutation(n)
    for k, path in enumerate(renamed):
        def scramble(ds, k=k) -> None:
            ds.InstanceNumber = int(perm[k]) + 1
            ds.SliceLocation = str(float(perm[k]))
        _edit(path, scramble)

    index = index_tree(tmp_path, PARAMS)

    assert _only_series(index)["eligible"]
    assert list(index.files["path"]) == _rel(renamed[::-1], tmp_path)
    np.testing.assert_array_equal(read_volume_hu(index.files, tmp_path, SHAPE[1:]), volume[::-1])


def test_order_for_a_tilted_but_axial_series(tmp_path: Path) -> None:
    """Positions are projected on the slice normal: a small gantry-like tilt keeps the order."""
    volume = _volume(6)
    written = _write(tmp_path, volume)
    tilt = np.deg2rad(3.0)
    col = (0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    normal = np.cross((1.0, 0.0, 0.0), col)
    for k, path in enumerate(written):
        def tilted(ds, k=k) -> None:
            ds.ImageOrientationPatient = ["1", "0", "0", *(f"{v:.6f}" for v in col)]
            ds.ImagePositionPatient = [f"{v:.6f}" for v in (0.0, 0.0, 0.0) - k * SPACING[0] * normal]
        _edit(path, tilted)

    index = index_tree(tmp_path, PARAMS)

    assert _only_series(index)["eligible"], index.series["reason"].iloc[0]
    assert list(index.files["path"]) == _rel(written[::-1], tmp_path)
    assert index.series["slice_spacing_mm"].iloc[0] == pytest.approx(SPACING[0], abs=1e-4)


# 3. Series selection --------------------------------------------------------------------------


def test_one_series_selected_per_study(tmp_path: Path) -> None:
    study = SeriesHeader(study_uid="1.2.3.1", uid_entropy="study-a")
    other = SeriesHeader(study_uid="1.2.3.2", uid_entropy="study-b", patient_id="SYNTH-0001")
    series = {
        "localizer": dataclasses.replace(study, series_uid="1.2.3.1.1", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        "contrast": dataclasses.replace(study, series_uid="1.2.3.1.2", contrast_agent="IOHEXOL"),
        "long": dataclasses.replace(study, series_uid="1.2.3.1.3"),
        "short": dataclasses.replace(study, series_uid="1.2.3.1.4"),
        "other": dataclasses.replace(other, series_uid="1.2.3.2.1"),
    }
    slices = {"localizer": 14, "contrast": 16, "long": 12, "short": 10, "other": 9}
    for seed, (name, header) in enumerate(series.items()):
        _write(tmp_path, _volume(seed, (slices[name], 8, 8)), seed, header=header)

    table = index_tree(tmp_path, PARAMS).series.set_index("series_uid")

    by_name = {name: table.loc[h.series_uid] for name, h in series.items()}
    assert by_name["localizer"]["reason"].startswith("localizer")
    assert by_name["contrast"]["reason"].startswith("contrast-enhanced") and "IOHEXOL" in by_name["contrast"]["reason"]
    assert not by_name["localizer"]["eligible"] and not by_name["contrast"]["eligible"]
    assert by_name["long"]["selected"] and by_name["long"]["selection"].startswith("most slices (12) of 2 eligible of 4 series")
    assert by_name["short"]["eligible"] and not by_name["short"]["selected"] and by_name["short"]["reason"] == ""
    assert by_name["other"]["selected"]
    assert table.groupby("study_uid")["selected"].sum().to_dict() == {"1.2.3.1": 1, "1.2.3.2": 1}


def test_tie_on_slice_count_prefers_thinner_slices(tmp_path: Path) -> None:
    header = SeriesHeader(study_uid="1.2.3.9", uid_entropy="tie")
    for seed, (uid, step) in enumerate((("1.2.3.9.1", 2.5), ("1.2.3.9.2", 1.25))):
        folder = tmp_path / f"s{seed}"
        write_series(folder, _volume(seed, (10, 8, 8)), (step, 0.75, 0.75), header=dataclasses.replace(header, series_uid=uid))
    table = index_tree(tmp_path, PARAMS).series.set_index("series_uid")
    assert table["selected"].to_dict() == {"1.2.3.9.1": False, "1.2.3.9.2": True}


# 4. Bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,content", [
    ("README.txt", b"SYNTHETIC cohort\n"),
    ("index.json", b'{"thumbnails": []}\n'),
    ("empty", b""),
    ("deep/er/noise.bin", bytes(range(256)) * 4),
])
def test_non_dicom_file_is_skipped(tmp_path: Path, name: str, content: bytes) -> None:
    _write(tmp_path, _volume(7))
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(content)

    index = index_tree(tmp_path, PARAMS)

    assert index.skipped.to_dict("records") == [{"path": name, "reason": "not a DICOM file (no DICM preamble)"}]
    assert _only_series(index)["selected"]


def test_dicom_without_pixel_data_or_series_uid_is_skipped(tmp_path: Path) -> None:
    written = _write(tmp_path, _volume(8))
    _edit(written[0], lambda ds: ds.__delattr__("PixelData"))
    _edit(written[1], lambda ds: ds.__delattr__("SeriesInstanceUID"))

    def to_report(ds):  # a structured report: no image, no pixels
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
        for keyword in ("PixelData", "Rows", "Columns"):
            delattr(ds, keyword)

    _edit(written[2], to_report)

    skipped = dict(index_tree(tmp_path, PARAMS).skipped.itertuples(index=False))

    assert "CT Image Storage) without complete pixel data" in skipped[_rel([written[0]], tmp_path)[0]]
    assert skipped[_rel([written[2]], tmp_path)[0]].startswith("no pixel data")
    assert skipped[_rel([written[1]], tmp_path)[0]] == "no SeriesInstanceUID"


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


_TRUNCATIONS = [(codec, fraction) for codec in CODECS for fraction in (0.5, 0.97)]
_EOF_WARNING = "ignore:End of file reached before delimiter:UserWarning"  # pydicom, on a cut encapsulated file


@pytest.mark.filterwarnings(_EOF_WARNING)
@pytest.mark.parametrize("codec,fraction", _TRUNCATIONS)
def test_truncated_file_never_raises_and_is_not_indexed(tmp_path: Path, codec: str, fraction: float) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    written = _write(tmp_path, _volume(9, shape), codec=codec)
    _cut(written[5], fraction)  # a middle slice: its absence is also a gap

    index = index_tree(tmp_path, PARAMS)

    bad = _rel([written[5]], tmp_path)[0]
    assert list(index.skipped["path"]) == [bad]
    assert bad not in set(index.files["path"])
    row = _only_series(index)
    assert not row["eligible"] and row["reason"].startswith("gap in slice positions")


@pytest.mark.filterwarnings(_EOF_WARNING)
@pytest.mark.parametrize("codec,fraction", [
    pytest.param(codec, fraction) for codec, fraction in _TRUNCATIONS
])
def test_truncated_file_reason_says_truncated(tmp_path: Path, codec: str, fraction: float) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    written = _write(tmp_path, _volume(9, shape), codec=codec)
    _cut(written[5], fraction)

    reason = index_tree(tmp_path, PARAMS).skipped["reason"].iloc[0]

    assert "truncated" in reason


def _set_modality_mr(paths: list[Path]) -> None:
    for p in paths:
        _edit(p, lambda ds: setattr(ds, "Modality", "MR"))


def _drop_from_one(keyword: str):
    def change(paths: list[Path]) -> None:
        _edit(paths[4], lambda ds: ds.__delattr__(keyword))
    return change


def _duplicate(paths: list[Path]) -> None:
    position = pydicom.dcmread(paths[3]).ImagePositionPatient
    _edit(paths[4], lambda ds: setattr(ds, "ImagePositionPatient", position))


def _sagittal(paths: list[Path]) -> None:
    for k, p in enumerate(paths):
        def change(ds, k=k) -> None:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.ImagePositionPatient = [k * SPACING[0], 0, 0]
        _edit(p, change)


def _one_rotated(paths: list[Path]) -> None:
    _edit(paths[2], lambda ds: setattr(ds, "ImageOrientationPatient", [0.9998, 0.02, 0, -0.02, 0.9998, 0]))


def _one_spacing(paths: list[Path]) -> None:
    _edit(paths[2], lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.8]))


def _syntax(uid: str):
    def change(paths: list[Path]) -> None:
        for p in paths:
            _edit(p, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", uid))
    return change


@pytest.mark.parametrize("change,codec,expected,names_file", [
    (_set_modality_mr, "none", "modality MR is not CT", False),
    (_drop_from_one("PixelSpacing"), "none", "missing PixelSpacing in 1 of 12 file(s)", True),
    (_drop_from_one("ImagePositionPatient"), "none", "missing ImagePositionPatient in 1 of 12 file(s)", True),
    (_drop_from_one("ImageOrientationPatient"), "none", "missing ImageOrientationPatient in 1 of 12 file(s)", True),
    (_duplicate, "none", "duplicate slice position", True),
    (_sagittal, "none", "not axial (slice normal", False),
    (_one_rotated, "none", "mixed orientations", False),
    (_one_spacing, "none", "mixed PixelSpacing", False),
    # MPEG2 and a private syntax on encapsulated (RLE) pixel data: no decoder exists.
    (_syntax("1.2.840.10008.1.2.4.100"), "rle", "no decoder for transfer syntax 1.2.840.10008.1.2.4.100", False),
    (_syntax("1.2.826.0.1.3680043.8.498.999"), "rle", "no decoder for transfer syntax 1.2.826.0.1.3680043.8.498.999", False),
], ids=["modality", "spacing", "position", "orientation", "duplicate", "sagittal", "mixed-orientation",
        "mixed-spacing", "mpeg2", "private-syntax"])
def test_broken_series_is_ineligible_with_reason(tmp_path: Path, change, codec: str, expected: str, names_file: bool) -> None:
    written = _write(tmp_path, _volume(10), codec=codec)
    change(written)

    index = index_tree(tmp_path, PARAMS)

    row = _only_series(index)
    assert not row["eligible"] and not row["selected"]
    assert expected in row["reason"], row["reason"]
    if names_file:
        assert str(written[4]) in row["reason"]
    assert index.files.empty and index.skipped.empty


def test_gap_in_positions(tmp_path: Path) -> None:
    _write(tmp_path, _volume(11), skip_slices=(6,))
    reason = _only_series(index_tree(tmp_path, PARAMS))["reason"]
    assert reason.startswith("gap in slice positions: 5.00 mm") and "(1 gap(s))" in reason


def test_too_few_slices(tmp_path: Path) -> None:
    _write(tmp_path, _volume(12, (5, 8, 8)))
    row = _only_series(index_tree(tmp_path, PARAMS))
    assert row["reason"] == "too few slices: 5 < series.min_slices 8" and row["n_slices"] == 5


def test_mixed_image_sizes(tmp_path: Path) -> None:
    header = SeriesHeader(uid_entropy="mixed")
    write_series(tmp_path / "a", _volume(13, (6, 16, 16)), SPACING, header=header)
    write_series(tmp_path / "b", _volume(14, (6, 24, 24)), SPACING, header=header, origin_mm=(0.0, 0.0, -6 * SPACING[0]),
                 file_names=[f"B{k}" for k in range(6)])
    row = _only_series(index_tree(tmp_path, PARAMS))
    assert row["reason"] == "mixed image sizes [(16, 16), (24, 24)]"


def test_deflated_series_is_read_or_rejected_for_its_syntax(tmp_path: Path) -> None:
    volume = _volume(15)
    written = _write(tmp_path, volume)
    deflated = pydicom.uid.DeflatedExplicitVRLittleEndian
    for p in written:
        _edit(p, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", deflated))
    assert pydicom.dcmread(written[0]).pixel_array.shape == SHAPE[1:]  # the files are valid

    index = index_tree(tmp_path, PARAMS)

    assert index.skipped.empty, index.skipped["reason"].iloc[0]
    row = _only_series(index)
    if row["eligible"]:
        np.testing.assert_array_equal(read_volume_hu(index.files, tmp_path, SHAPE[1:]), volume[::-1])
    else:
        assert "transfer syntax" in row["reason"]


@pytest.mark.parametrize("codec", ["rle", "jpeg_ls", "jpeg2000"])
@pytest.mark.parametrize("payload", [b"\x00" * 64, b"\xff" * 64], ids=["zeros", "ones"])
def test_corrupt_payload_raises_series_read_error_naming_file(tmp_path: Path, codec: str, payload: bytes) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    written = _write(tmp_path, _volume(16, shape), codec=codec)
    _edit(written[7], lambda ds: setattr(ds, "PixelData", encapsulate([payload])))
    index = index_tree(tmp_path, PARAMS)
    assert _only_series(index)["eligible"]  # the header is fine: only decoding finds it

    with pytest.raises(SeriesReadError, match="cannot decode pixel data") as info:
        read_volume_hu(index.files, tmp_path, shape[1:])

    assert str(written[7]) in str(info.value)
    assert info.value.__cause__ is not None


def test_file_cut_after_indexing_raises_series_read_error(tmp_path: Path) -> None:
    written = _write(tmp_path, _volume(17))
    files = index_tree(tmp_path, PARAMS).files
    _cut(written[0], 0.9)
    r = files.iloc[-1]  # written[0] is the most cranial slice: last in the index
    assert tmp_path / r["path"] == written[0]

    for offset in (int(r["pixel_offset"]), -1):  # in place, and through the decoder
        with pytest.raises(SeriesReadError) as info:
            read_stored(written[0], offset, 16, 1, SHAPE[1:])
        assert str(written[0]) in str(info.value)


def test_slice_of_another_size_raises_series_read_error(tmp_path: Path) -> None:
    written = write_series(tmp_path / "s", _volume(18, (2, 8, 8)), SPACING, codec="rle")
    with pytest.raises(SeriesReadError, match="differs from the series"):
        read_stored(written[0], -1, 16, 1, (16, 16))


# 5. Parallel header reading ------------------------------------------------------------------


def test_read_headers_in_processes_matches_one_process(tmp_path: Path) -> None:
    for seed in range(6):
        _write(tmp_path, _volume(seed, (12, 8, 8)), seed, codec=("none", "rle")[seed % 2])
    (tmp_path / "README.txt").write_text("not DICOM\n")
    paths = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(paths) >= 64

    serial = read_headers(paths, workers=1)
    parallel = read_headers(paths, workers=2)

    assert parallel == serial
    assert sum(isinstance(h, str) for h in serial) == 1
    one = index_tree(tmp_path, PARAMS)
    two = index_tree(tmp_path, dataclasses.replace(PARAMS, workers=2))
    for name in ("series", "files", "skipped"):
        assert getattr(one, name).equals(getattr(two, name)), name


def test_index_paths_are_relative_to_root(tmp_path: Path) -> None:
    written = _write(tmp_path, _volume(19))
    index = index_tree(tmp_path, PARAMS)
    assert not any(os.path.isabs(p) for p in index.files["path"])
    assert sorted(index.files["path"]) == sorted(_rel(written, tmp_path))
