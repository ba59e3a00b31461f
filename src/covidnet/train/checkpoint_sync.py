"""Checkpoints mirrored to an ``s3://`` prefix, so that a retried train task on another pod resumes.

:func:`covidnet.train.launch.train_in_pod` trains with checkpoints in a local folder. Given an
``s3://bucket/prefix`` instead of a folder, it first downloads what the prefix holds
(:func:`download`) and then keeps the prefix a copy of the folder while training runs
(:class:`S3Mirror`): a thread looks every ``interval_s`` seconds and uploads the checkpoints
that changed, and a last upload happens when training ends, also when it fails.

Consistency: training writes ``best.pt`` before ``last.pt``, each atomically (:mod:`covidnet.train.checkpoint`).
The mirror reads ``last.pt``, then ``best.pt``, and keeps the pair only if ``last.pt`` did
not change meanwhile; it uploads ``best.pt`` first. So the prefix only ever holds a pair that
the local folder could also have held after a crash, which training resumes from.

The endpoint and credentials are boto3's (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` for MinIO), from the ``mlflow`` secret on the cluster.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from covidnet.params import ParamsError
from covidnet.train.checkpoint import BEST, LAST

log = logging.getLogger(__name__)

#: The files mirrored, in upload order (see the module docstring).
FILES = (BEST, LAST)


def parse_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; raise naming ``uri`` otherwise."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ParamsError(f"checkpoint_dir: {uri!r} is not an s3://bucket/prefix URI")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def _client() -> Any:
    import boto3

    return boto3.client("s3")


def download(uri: str, folder: Path, client: Any = None) -> list[str]:
    """Copy the mirrored checkpoints under ``uri`` into ``folder``; return the names found.

    Raises:
        botocore's ``ClientError``: the bucket does not exist or cannot be read (``NoSuchBucket``,
            ``AccessDenied``), rather than silently starting afresh.
    """
    client = client or _client()
    bucket, prefix = parse_s3(uri)
    base = f"{prefix}/" if prefix else ""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=base)
    present = {o["Key"] for o in listed.get("Contents", [])}
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for name in FILES:
        if f"{base}{name}" not in present:
            continue
        tmp = folder / f".{name}.download"
        client.download_file(bucket, f"{base}{name}", str(tmp))
        tmp.replace(folder / name)
        found.append(name)
    if found:
        log.info("checkpoints %s from %s", ", ".join(found), uri)
    return found


class S3Mirror:
    """Keep ``uri`` a copy of the checkpoints in ``folder`` while a ``with`` block runs.

    Args:
        folder: the local checkpoint folder training writes.
        uri: ``s3://bucket/prefix``.
        interval_s: seconds between looks at the folder.
        client: a boto3 S3 client (default: one from the environment).
    """

    def __init__(self, folder: Path, uri: str, interval_s: float, client: Any = None) -> None:
        self.folder, self.uri, self.interval_s = Path(folder), uri, interval_s
        self.bucket, self.prefix = parse_s3(uri)
        self.client = client or _client()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-mirror", daemon=True)
        self._sent: dict[str, tuple[int, int]] = {}
        self._stamp: tuple[int, int] | None = None
        self.uploads = 0

    def __enter__(self) -> "S3Mirror":
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self.sync()  # an upload that fails now fails the task: the last epochs would be lost
            return
        try:
            self.sync()  # training failed: keep what it finished for the retry
        except Exception as upload_error:  # noqa: BLE001 - the training error is the one to report
            log.warning("last checkpoint upload to %s failed: %s", self.uri, upload_error)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - a failed upload is retried at the next look
                log.warning("checkpoint upload to %s failed (retried): %s", self.uri, exc)

    def _snapshot(self) -> dict[str, bytes] | None:
        last = self.folder / LAST
        for _ in range(5):
            try:
                before = last.stat()
                data = {LAST: last.read_bytes()}
                best = self.folder / BEST
                if best.is_file():
                    data[BEST] = best.read_bytes()
                after = last.stat()
            except FileNotFoundError:
                return None
            if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size):
                self._stamp = (after.st_mtime_ns, after.st_size)
                return data
        return None  # training is writing fast; the next look will do

    def sync(self) -> None:
        """Upload the checkpoints if ``last.pt`` changed since the last upload."""
        data = self._snapshot()
        if data is None or self._sent.get(LAST) == self._stamp:
            return
        import io

        for name in FILES:
            if name in data:
                key = f"{self.prefix}/{name}" if self.prefix else name
                self.client.upload_fileobj(io.BytesIO(data[name]), self.bucket, key)
        self._sent[LAST] = self._stamp
        self.uploads += 1
        log.info("checkpoints mirrored to %s", self.uri)
