"""Checkpoints mirrored to S3 (moto's S3 server on loopback) and downloaded again."""

from pathlib import Path

import pytest

from covidnet.params import ParamsError
from covidnet.train.checkpoint_sync import S3Mirror, download, parse_s3


def test_parse_s3():
    assert parse_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3("s3://bucket") == ("bucket", "")
    for bad in ("s3:///x", "/data/ckpt", "gs://bucket/x"):
        with pytest.raises(ParamsError, match="is not an s3://bucket/prefix URI"):
            parse_s3(bad)


def _keys(s3, prefix):
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", []))


def test_mirror_uploads_changes_only_and_download_restores(tmp_path, s3_server):
    uri = f"s3://{s3_server.bucket}/run-a/train-1"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    client = s3_server.client()
    mirror = S3Mirror(folder, uri, interval_s=3600, client=client)  # the thread never wakes: sync() by hand
    mirror.sync()
    assert mirror.uploads == 0 and _keys(s3_server, "run-a/") == []  # nothing written yet
    (folder / "best.pt").write_bytes(b"best-1")
    (folder / "last.pt").write_bytes(b"last-1")
    mirror.sync()
    mirror.sync()
    assert mirror.uploads == 1 and _keys(s3_server, "run-a/") == ["run-a/train-1/best.pt", "run-a/train-1/last.pt"]
    (folder / "last.pt").write_bytes(b"last-2, longer")
    with mirror:  # entering starts the thread; leaving uploads what changed
        pass
    assert mirror.uploads == 2

    restored = tmp_path / "restored"
    assert download(uri, restored, client=client) == ["best.pt", "last.pt"]
    assert (restored / "last.pt").read_bytes() == b"last-2, longer" and (restored / "best.pt").read_bytes() == b"best-1"
    assert not list(restored.glob(".*"))  # no temporary download left
    assert download(f"s3://{s3_server.bucket}/run-b/train-1", tmp_path / "empty", client=client) == []


def test_download_of_a_missing_bucket_is_an_error(tmp_path, s3_server):
    with pytest.raises(Exception, match="NoSuchBucket"):
        download("s3://no-such-bucket/x", Path(tmp_path), client=s3_server.client())
