"""Tests of covidnet.data.dicom (finding files, reading headers) on real DICOM files written by covidnet.synthetic.dicom_writer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pydicom.uid
import pytest

from covidnet.data.dicom import find_files, read_headers
from covidnet.data.series import index_tree
from covidnet.errors import MissingInputError
from support.dicom_cases import (
    CODECS,
    PARAMS,
    SHAPE,
    SHAPE_J2K,
    cut_file,
    edit_dataset,
    only_series,
    random_volume,
    relative_paths,
    write_random_series,
)

# 1. Files that are not usable DICOM ---------------------------------------------------------


@pytest.mark.parametrize("name,content", [
    ("README.txt", b"SYNTHETIC cohort\n"),
    ("index.json", b'{"thumbnails": []}\n'),
    ("empty", b""),
    ("deep/er/noise.bin", bytes(range(256)) * 4),
])
def test_non_dicom_file_is_skipped(tmp_path: Path, name: str, content: bytes) -> None:
    write_random_series(tmp_path, random_volume(7))
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(content)

    index = index_tree(tmp_path, PARAMS)

    assert index.skipped.to_dict("records") == [{"path": name, "reason": "not a DICOM file (no DICM preamble)"}]
    assert only_series(index)["selected"]


def test_dicom_without_pixel_data_or_series_uid_is_skipped(tmp_path: Path) -> None:
    written = write_random_series(tmp_path, random_volume(8))
    edit_dataset(written[0], lambda ds: ds.__delattr__("PixelData"))
    edit_dataset(written[1], lambda ds: ds.__delattr__("SeriesInstanceUID"))

    def to_report(ds):  # a structured report: no image, no pixels
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
        for keyword in ("PixelData", "Rows", "Columns"):
            delattr(ds, keyword)

    edit_dataset(written[2], to_report)

    skipped = dict(index_tree(tmp_path, PARAMS).skipped.itertuples(index=False))

    assert "CT Image Storage) without complete pixel data" in skipped[relative_paths([written[0]], tmp_path)[0]]
    assert skipped[relative_paths([written[2]], tmp_path)[0]].startswith("no pixel data")
    assert skipped[relative_paths([written[1]], tmp_path)[0]] == "no SeriesInstanceUID"


_TRUNCATIONS = [(codec, fraction) for codec in CODECS for fraction in (0.5, 0.97)]
_EOF_WARNING = "ignore:End of file reached before delimiter:UserWarning"  # pydicom, on a cut encapsulated file


@pytest.mark.filterwarnings(_EOF_WARNING)
@pytest.mark.parametrize("codec,fraction", _TRUNCATIONS)
def test_truncated_file_never_raises_and_is_not_indexed(tmp_path: Path, codec: str, fraction: float) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    written = write_random_series(tmp_path, random_volume(9, shape), codec=codec)
    cut_file(written[5], fraction)  # a middle slice: its absence is also a gap

    index = index_tree(tmp_path, PARAMS)

    bad = relative_paths([written[5]], tmp_path)[0]
    assert list(index.skipped["path"]) == [bad]
    assert bad not in set(index.files["path"])
    row = only_series(index)
    assert not row["eligible"] and row["reason"].startswith("gap in slice positions")


@pytest.mark.filterwarnings(_EOF_WARNING)
@pytest.mark.parametrize("codec,fraction", [
    pytest.param(codec, fraction) for codec, fraction in _TRUNCATIONS
])
def test_truncated_file_reason_says_truncated(tmp_path: Path, codec: str, fraction: float) -> None:
    shape = SHAPE_J2K if codec == "jpeg2000" else SHAPE
    written = write_random_series(tmp_path, random_volume(9, shape), codec=codec)
    cut_file(written[5], fraction)

    reason = index_tree(tmp_path, PARAMS).skipped["reason"].iloc[0]

    assert "truncated" in reason


# 2. Parallel header reading ------------------------------------------------------------------


def test_read_headers_in_processes_matches_one_process(tmp_path: Path) -> None:
    for seed in range(6):
        write_random_series(tmp_path, random_volume(seed, (12, 8, 8)), seed, codec=("none", "rle")[seed % 2])
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


def test_find_files_lists_every_file_at_any_depth(tmp_path: Path) -> None:
    written = write_random_series(tmp_path, random_volume(20, (3, 8, 8)))
    (tmp_path / ".hidden").write_text("x\n")
    assert find_files(tmp_path) == sorted([*written, tmp_path / ".hidden"])
    with pytest.raises(MissingInputError, match="DICOM folder not found"):
        find_files(tmp_path / "absent")
