"""Tests of covidnet.data.series (slice order, series selection, rejection) on real DICOM files written by covidnet.synthetic.dicom_writer."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidnet.data.pixels import read_volume_hu
from covidnet.data.series import index_tree
from covidnet.synthetic.dicom_writer import SeriesHeader, write_series
from support.dicom_cases import (
    PARAMS,
    SHAPE,
    SPACING,
    edit_dataset,
    only_series,
    random_volume,
    relative_paths,
    write_random_series,
)

# 1. Slice order comes from ImagePositionPatient ----------------------------------------------


def test_order_ignores_file_names_and_instance_numbers(tmp_path: Path) -> None:
    volume = random_volume(4)
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
        edit_dataset(path, scramble)

    index = index_tree(tmp_path, PARAMS)

    assert only_series(index)["eligible"]
    assert list(index.files["path"]) == relative_paths(renamed[::-1], tmp_path)
    np.testing.assert_array_equal(read_volume_hu(index.files, tmp_path, SHAPE[1:]), volume[::-1])


def test_order_for_a_tilted_but_axial_series(tmp_path: Path) -> None:
    """Positions are projected on the slice normal: a small gantry-like tilt keeps the order."""
    volume = random_volume(6)
    written = write_random_series(tmp_path, volume)
    tilt = np.deg2rad(3.0)
    col = (0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    normal = np.cross((1.0, 0.0, 0.0), col)
    for k, path in enumerate(written):
        def tilted(ds, k=k) -> None:
            ds.ImageOrientationPatient = ["1", "0", "0", *(f"{v:.6f}" for v in col)]
            ds.ImagePositionPatient = [f"{v:.6f}" for v in (0.0, 0.0, 0.0) - k * SPACING[0] * normal]
        edit_dataset(path, tilted)

    index = index_tree(tmp_path, PARAMS)

    assert only_series(index)["eligible"], index.series["reason"].iloc[0]
    assert list(index.files["path"]) == relative_paths(written[::-1], tmp_path)
    assert index.series["slice_spacing_mm"].iloc[0] == pytest.approx(SPACING[0], abs=1e-4)


# 2. Series selection --------------------------------------------------------------------------


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
        write_random_series(tmp_path, random_volume(seed, (slices[name], 8, 8)), seed, header=header)

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
        write_series(folder, random_volume(seed, (10, 8, 8)), (step, 0.75, 0.75), header=dataclasses.replace(header, series_uid=uid))
    table = index_tree(tmp_path, PARAMS).series.set_index("series_uid")
    assert table["selected"].to_dict() == {"1.2.3.9.1": False, "1.2.3.9.2": True}


# 3. Broken series --------------------------------------------------------------------------------


def _set_modality_mr(paths: list[Path]) -> None:
    for p in paths:
        edit_dataset(p, lambda ds: setattr(ds, "Modality", "MR"))


def _drop_from_one(keyword: str):
    def change(paths: list[Path]) -> None:
        edit_dataset(paths[4], lambda ds: ds.__delattr__(keyword))
    return change


def _duplicate(paths: list[Path]) -> None:
    position = pydicom.dcmread(paths[3]).ImagePositionPatient
    edit_dataset(paths[4], lambda ds: setattr(ds, "ImagePositionPatient", position))


def _sagittal(paths: list[Path]) -> None:
    for k, p in enumerate(paths):
        def change(ds, k=k) -> None:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.ImagePositionPatient = [k * SPACING[0], 0, 0]
        edit_dataset(p, change)


def _one_rotated(paths: list[Path]) -> None:
    edit_dataset(paths[2], lambda ds: setattr(ds, "ImageOrientationPatient", [0.9998, 0.02, 0, -0.02, 0.9998, 0]))


def _one_spacing(paths: list[Path]) -> None:
    edit_dataset(paths[2], lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.8]))


def _syntax(uid: str):
    def change(paths: list[Path]) -> None:
        for p in paths:
            edit_dataset(p, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", uid))
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
    written = write_random_series(tmp_path, random_volume(10), codec=codec)
    change(written)

    index = index_tree(tmp_path, PARAMS)

    row = only_series(index)
    assert not row["eligible"] and not row["selected"]
    assert expected in row["reason"], row["reason"]
    if names_file:
        assert str(written[4]) in row["reason"]
    assert index.files.empty and index.skipped.empty


def test_gap_in_positions(tmp_path: Path) -> None:
    write_random_series(tmp_path, random_volume(11), skip_slices=(6,))
    reason = only_series(index_tree(tmp_path, PARAMS))["reason"]
    assert reason.startswith("gap in slice positions: 5.00 mm") and "(1 gap(s))" in reason


def test_too_few_slices(tmp_path: Path) -> None:
    write_random_series(tmp_path, random_volume(12, (5, 8, 8)))
    row = only_series(index_tree(tmp_path, PARAMS))
    assert row["reason"] == "too few slices: 5 < series.min_slices 8" and row["n_slices"] == 5


def test_mixed_image_sizes(tmp_path: Path) -> None:
    header = SeriesHeader(uid_entropy="mixed")
    write_series(tmp_path / "a", random_volume(13, (6, 16, 16)), SPACING, header=header)
    write_series(tmp_path / "b", random_volume(14, (6, 24, 24)), SPACING, header=header, origin_mm=(0.0, 0.0, -6 * SPACING[0]),
                 file_names=[f"B{k}" for k in range(6)])
    row = only_series(index_tree(tmp_path, PARAMS))
    assert row["reason"] == "mixed image sizes [(16, 16), (24, 24)]"


# 4. Paths ------------------------------------------------------------------------------------------


def test_index_paths_are_relative_to_root(tmp_path: Path) -> None:
    written = write_random_series(tmp_path, random_volume(19))
    index = index_tree(tmp_path, PARAMS)
    assert not any(os.path.isabs(p) for p in index.files["path"])
    assert sorted(index.files["path"]) == sorted(relative_paths(written, tmp_path))
