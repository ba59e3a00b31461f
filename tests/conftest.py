"""Shared fixtures: moto's S3 server on loopback, and the environment for git / DVC subprocesses."""

import os
import sys
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
