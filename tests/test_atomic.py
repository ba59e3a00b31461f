"""atomic_path: all or nothing, and the permissions of a plain write."""

import os
import stat

import pytest

from covidnet.atomic import atomic_path, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_and_folder_get_plain_permissions(tmp_path, umask_022):
    write_json(tmp_path / "a.json", {"x": 1})
    assert _mode(tmp_path / "a.json") == 0o644  # not tempfile's 0600
    with atomic_path(tmp_path / "out", directory=True) as tmp:
        (tmp / "f.txt").write_text("x")
    assert _mode(tmp_path / "out") == 0o755 and (tmp_path / "out" / "f.txt").read_text() == "x"


def test_failure_keeps_the_old_output_and_leaves_no_temporary(tmp_path):
    write_text(tmp_path / "t.txt", "old")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "t.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("stage failed")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            (tmp / "new").write_text("half")
            raise RuntimeError("stage failed")
    assert (tmp_path / "t.txt").read_text() == "old"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "t.txt"]


def test_folder_replaces_the_previous_one(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stale").write_text("x")
    with atomic_path(tmp_path / "d", directory=True) as tmp:
        (tmp / "fresh").write_text("y")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["fresh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
