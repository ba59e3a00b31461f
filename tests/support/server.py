"""``covidnet serve`` in a subprocess, a tiny trained model and its params, a tiny DICOM study, and a JSON POST."""

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import yaml

from covidnet.synthetic.dicom_writer import SeriesHeader, write_series

NAME = "covidnet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(tmp: Path) -> Path:
    """A tiny model trained for one epoch into ``tmp/model`` (as tests/train does); the folder."""
    from covidnet.train.loop import train_model
    from support.train import PRE, TINY, tiny_cohort, train_params, train_paths

    index = tiny_cohort(tmp / "pre", n_train=4, n_val=2)
    train_model(index, train_paths(tmp), TINY, train_params(epochs=1, batch_size=2),
                {**PRE, "dtype": "float16", "body_hu": -500.0, "lung_hu": [-950.0, -400.0], "workers": 1},
                progress=False)
    return tmp / "model"


def serve_params(tmp: Path, **serve) -> Path:
    """The repository's params with the ``tiny`` profile and ``serve`` values replaced, as ``tmp/params.yaml``."""
    from support import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["serve"].update(serve)
    params["paths"]["calibrator"] = str(tmp / "calibrator.json")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp / "params.yaml"


@contextlib.contextmanager
def moto_s3(bucket: str = "studies"):
    """moto's S3 server on a free loopback port with one bucket: ``{"env": ..., "client": boto3 client}``."""
    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    try:
        yield {"env": env, "client": client}
    finally:
        moto.stop()


def start_server(args: list[str], cwd: Path, env: dict, log_path: Path, model: str = NAME,
                 timeout_s: float = 90.0) -> tuple[subprocess.Popen, str | None]:
    """``covidnet serve ARGS --port P`` in a subprocess, its output in ``log_path``.

    Returns the process and its base URL once ``/v2/models/<model>/ready`` answers 200, or
    the process and None when it exits (or is not ready within ``timeout_s``) first.
    """
    port = free_port()
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "covidnet.cli.main", "serve", "--port", str(port), *args], cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/v2/models/{model}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.3)
    return proc, None


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


@contextlib.contextmanager
def running_server(args: list[str], cwd: Path, env: dict, log_path: Path, model: str = NAME):
    """:func:`start_server` that must become ready (else RuntimeError with the log's end); stopped on exit."""
    proc, base = start_server(args, cwd, env, log_path, model)
    try:
        if base is None:
            raise RuntimeError(f"server did not become ready:\n{log_path.read_text()[-3000:]}")
        yield base
    finally:
        stop_server(proc)


def write_study(root: Path, uid: str = "s1", skip=(), noise: float = 80.0, seed: int = 0, tissue: float = -100.0,
           **header) -> Path:
    """12 slices of 32 x 32: -700 HU around a square of ``tissue`` HU, Gaussian noise of ``noise`` HU."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(-700, noise, size=(12, 32, 32))
    vol[:, 4:28, 4:28] += tissue + 700
    write_series(root / uid, vol, (8.0, 10.0, 10.0), header=SeriesHeader(uid_entropy=uid, **header),
                 skip_slices=skip)
    return root / uid


def post_json(url: str, body, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def assert_alive(server) -> None:
    with urllib.request.urlopen(f"{server['base']}/v2/health/ready", timeout=5) as r:
        assert r.status == 200


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deflated zip of ``{name: data}`` in memory (a study upload)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()
