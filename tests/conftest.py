"""Shared fixtures: moto's S3 server and a PostgreSQL server on loopback, the environment for git / DVC."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint: ``endpoint`` URL, a ``bucket`` made for the test, and credentials for it."""

    endpoint: str
    bucket: str
    env: dict

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def s3_server():
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 (a real HTTP S3 endpoint, in this process) with one bucket.

    One server per test module; its content lasts for the module.
    """
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(endpoint=f"http://{host}:{port}", bucket="covidnet",
                      env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()


@pytest.fixture(scope="module")
def git_env(tmp_path_factory):
    """The environment for git and DVC in temporary repositories: an identity, the venv's tools, a private HOME."""
    return {**os.environ, **_GIT_ENV, "HOME": str(tmp_path_factory.mktemp("home"))}


def _write_toy_tensors(root: Path, n_train: int = 12, n_val: int = 4, shape=(1, 8, 24, 24)) -> None:
    """``root/index.csv`` and ``root/tensors/*.npy``: COVID-19 volumes carry a bright lower-posterior patch.

    A learnable toy signal in the tiny profile's tensor shape, for tests of training launchers.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    (root / "tensors").mkdir(parents=True)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label = "covid" if i % 2 == 0 else "non_covid"
            x = rng.normal(0.3, 0.05, size=shape).astype(np.float16)
            if label == "covid":
                x[0, shape[1] // 2:, -10:-2, 2:10] += 0.4
            np.save(root / "tensors" / f"{split}{i}.npy", x)
            rows.append({"scan_id": f"{split}{i}", "patient_id": f"p{split}{i}", "label": label, "split": split,
                         "path": f"tensors/{split}{i}.npy"})
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)


@pytest.fixture
def toy_tensors():
    """``toy_tensors(root, n_train=12, n_val=4)`` writes tiny toy tensors (see :func:`_write_toy_tensors`)."""
    return _write_toy_tensors


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (initdb + pg_ctl from the machine's PostgreSQL,
    trust authentication, its own data folder); yields a SQLAlchemy URL (psycopg driver).

    PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
    Skipped, saying so, where no PostgreSQL server binaries are installed.
    """
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="covidnet-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = dict(capture_output=True, text=True, timeout=120)
    proc = subprocess.run([*as_user, initdb, "-D", str(data / "db"), "--auth=trust", "-U", "postgres",
                           "--no-sync"], **run)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-l", str(data / "server.log"), "-w", "start",
                           "-o", f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off"], **run)
    assert proc.returncode == 0, proc.stderr + (data / "server.log").read_text()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-m", "fast", "-w", "stop"], **run)
        time.sleep(0.1)
        shutil.rmtree(data, ignore_errors=True)
