"""Podman for the container tests: its Docker-compatible API, the project images, and a kfp.local shim.

``bash scripts/containers.sh ci`` installs and configures podman, builds the images
(``scripts/images.sh``) and starts ``podman system service`` on ``COVIDNET_PODMAN_SOCKET``
(default ``/run/podman/podman.sock``). :func:`podman_session` finds that socket, or starts a
service of its own when podman is installed but nothing listens, and skips (saying why) when
podman or an image is missing here, or when ``containers.sh ci`` left its reason.

**The shim, and why it is here only.** kfp 2.16.1's
``kfp.local.docker_task_handler.run_docker_container`` runs each component with
``auto_remove=True`` and then asks for the exit code. Podman 4.3's Docker-compatible API
answers 500 (not 404, as Docker does) while such a container is being removed, so kfp
either crashes on the 500 or, when the container is already gone, takes the exit code for 0
and reports a failed component as a success. :func:`run_without_auto_remove` does what kfp's
function does with the image, command, volumes and run arguments it is given, except that
it runs without auto-remove, streams the logs, reads the real exit code and then removes
the container; and it records each container (task, id, image, exit code) so the tests can
show and check them. It is installed by monkeypatching, in the tests only: with Docker
itself kfp's own function is right, and the project code never uses DockerRunner.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from covidnet.kfp.params import ImageParams, pipeline_params
from covidnet.params import load_params
from support import REPO

SOCKET = Path(os.environ.get("COVIDNET_PODMAN_SOCKET", "/run/podman/podman.sock"))
CACHE = Path(os.environ.get("COVIDNET_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "covidnet")
SKIP_FILE = CACHE / "containers-skipped.txt"  # written by `scripts/containers.sh ci` when containers cannot run here
SETUP = "`bash scripts/containers.sh ci` installs podman, builds the images and starts its API"


def images() -> ImageParams:
    """The project images as params.yaml names them (``pipeline.image``)."""
    return pipeline_params(load_params(REPO / "params.yaml")).image


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """``podman ARGS`` (the CLI, beside the API): stdout and stderr as text."""
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def _answers(socket: Path) -> bool:
    """Does a Docker-compatible API answer ``/_ping`` on this unix socket?"""
    import http.client
    import socket as sockets

    class _Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
            self.sock.settimeout(5)
            self.sock.connect(str(socket))

    if not socket.is_socket():
        return False
    try:
        conn = _Conn("localhost")
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False


@dataclass
class Podman:
    """A reachable podman: ``docker_host`` (``unix://...``) for the docker SDK, the images, their labels."""

    docker_host: str
    images: ImageParams
    revision: str

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=300)


def podman_session():
    """Generator behind the session fixture (see the module docstring): yields a :class:`Podman` or skips."""
    if shutil.which("podman") is None:
        reason = SKIP_FILE.read_text().strip() if SKIP_FILE.exists() else "podman is not installed here"
        pytest.skip(f"containers: {reason} ({SETUP})")
    if SKIP_FILE.exists():
        pytest.skip(f"containers: not possible on this machine: {SKIP_FILE.read_text().strip()}")
    wanted = images()
    if podman("image", "exists", wanted.cpu, check=False).returncode != 0:
        pytest.skip(f"containers: the image {wanted.cpu} (pipeline.image.cpu) is not built: `bash scripts/images.sh`")
    revision = podman("image", "inspect", "--format", '{{index .Labels "org.opencontainers.image.revision"}}',
                      wanted.cpu).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if head and not revision.startswith(head):
        warnings.warn(f"the image {wanted.cpu} was built from {revision or 'an unknown commit'}, the checkout is at "
                      f"{head}: the container tests run that image (`bash scripts/images.sh cpu` rebuilds it)")
    own = None
    socket = SOCKET
    if not _answers(socket):  # nothing listens: a service of our own, for this session
        socket = Path(tempfile.mkdtemp(prefix="covidnet-podman-")) / "podman.sock"
        own = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not _answers(socket):
            if time.time() > deadline or own.poll() is not None:
                own.kill()
                pytest.skip(f"containers: `podman system service` did not answer on {socket}")
            time.sleep(0.2)
    try:
        yield Podman(docker_host=f"unix://{socket}", images=wanted, revision=revision)
    finally:
        if own is not None:
            own.terminate()
            own.wait(timeout=30)


# --- kfp.local's DockerRunner against podman ---------------------------------------------------------

@dataclass
class ContainerRun:
    """One component's container: the task it ran, its id, image, exit code and wall time."""

    task: str
    id: str
    image: str
    exit_code: int
    seconds: float


@dataclass
class ContainerLog:
    """The containers a kfp.local run started, in order."""

    runs: list[ContainerRun] = field(default_factory=list)

    def table(self, title: str) -> str:
        lines = [f"{title}: {len(self.runs)} containers"]
        lines += [f"  {r.task:<14} container {r.id[:12]}  {r.image}  exit {r.exit_code}  {r.seconds:5.1f} s"
                  for r in self.runs]
        return "\n".join(lines)


def _task_of(command: list[str]) -> str:
    """The task a component's command runs: its executor output file is ``<root>/<run>/<task>/executor_output.json``."""
    for i, arg in enumerate(command):
        if arg == "--executor_input" and i + 1 < len(command):
            try:
                return Path(json.loads(command[i + 1])["outputs"]["outputFile"]).parent.name
            except (ValueError, KeyError):
                break
    return "?"


def run_without_auto_remove(log: ContainerLog):
    """A stand-in for ``kfp.local.docker_task_handler.run_docker_container`` (see the module docstring)."""
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    def run_docker_container(client, image: str, command: list[str], volumes: dict, **container_run_args) -> int:
        image = add_latest_tag_if_not_present(image=image)
        client.images.get(image)  # no registry here: a missing image is an error naming it, not a pull
        t0 = time.time()
        container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                          volumes=volumes, auto_remove=False, **container_run_args)
        task = _task_of(command)
        print(f"[container {container.id[:12]}] task {task} in {image}", flush=True)
        try:
            for line in container.logs(stream=True, follow=True):
                print(line.decode(errors="replace"), end="")
            code = int(container.wait()["StatusCode"])
        finally:
            container.remove(force=True)
        print(f"[container {container.id[:12]}] task {task} exited {code}", flush=True)
        log.runs.append(ContainerRun(task=task, id=container.id, image=image, exit_code=code,
                                     seconds=time.time() - t0))
        return code

    return run_docker_container


def docker_runner(monkeypatch, session: Podman, **container_run_args) -> ContainerLog:
    """``kfp.local`` set up for DockerRunner against ``session``'s socket, the shim installed; returns its log."""
    import kfp.local.docker_task_handler as handler

    monkeypatch.setenv("DOCKER_HOST", session.docker_host)
    log = ContainerLog()
    monkeypatch.setattr(handler, "run_docker_container", run_without_auto_remove(log))
    return log


def open_to_the_image_user(root: Path) -> None:
    """The images run as uid 1000 (non-root): a host folder bind-mounted into them must be writable by it.

    On a cluster the pod's volumes belong to the pod; here kfp.local mounts the pipeline root
    from the host (root-owned), so the test opens it (and what is already in it) to all.
    """
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


# --- the server ----------------------------------------------------------------------------------------

def wait_ready(base: str, model: str, container: str, timeout_s: float = 180.0) -> float:
    """Seconds until ``/v2/models/<model>/ready`` answers 200; AssertionError with the container's log if never."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        state = podman("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip()
        if state == "false":
            break
        try:
            with urllib.request.urlopen(f"{base}/v2/models/{model}/ready", timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    logs = podman("logs", container, check=False)
    raise AssertionError(f"the server in {container[:12]} did not become ready:\n{(logs.stdout + logs.stderr)[-4000:]}")
