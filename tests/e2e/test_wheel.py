"""The package installed as a wheel (what a container or a user's ``pip install .`` gets) works outside the checkout.

The wheel is built from a copy of the working tree's files (``git ls-files``), installed
without ``-e`` into a new virtual environment, and run from an empty folder. To keep the
test minutes rather than a full dependency install, the new environment sees the test
environment's third-party packages (installed from ``requirements.lock``) through a ``.pth``
line; the test environment's own editable ``covidnet`` is not among them (its ``.pth`` file is
not processed there), and the test checks that ``covidnet`` is imported from the new
environment's wheel, not from ``src/``.
"""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={"PATH": f"{Path(cmd[0]).parent}:/usr/bin:/bin", "HOME": str(cwd)})
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    src = tmp / "checkout"
    for name in filter(None, files):
        path = REPO / name
        if not (path.exists() or path.is_symlink()):
            continue  # deleted in the working tree
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            (src / name).symlink_to(path.readlink())
        else:
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(src)], tmp)
    (wheel,) = (tmp / "dist").glob("covidnet-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp)
    empty = tmp / "elsewhere"
    empty.mkdir()
    return venv, site, empty


def test_the_wheel_is_what_runs(wheel_venv):
    venv, site, empty = wheel_venv
    r = _run([str(venv / "bin" / "python"), "-c", "import covidnet, covidnet.params as p; "
              "print(covidnet.__file__); print(p.params_file())"], empty)
    module, params = r.stdout.split()
    assert Path(module).is_relative_to(site), f"covidnet imported from {module}, not the wheel"
    assert Path(params).is_relative_to(site) and Path(params).read_text() == (REPO / "params.yaml").read_text()


def test_help_compile_and_serve_help_from_an_empty_folder(wheel_venv):
    venv, _site, empty = wheel_venv
    covidnet = str(venv / "bin" / "covidnet")
    assert "Stages, in the order dvc.yaml runs them" in _run([covidnet, "--help"], empty).stdout
    out = empty / "compiled"
    _run([covidnet, "pipeline", "compile", "--out", str(out)], empty)
    from covidnet.kfp.runner import PIPELINES

    for entry in PIPELINES.values():
        compiled = (out / entry.yaml).read_text()
        assert compiled == (REPO / "pipelines" / entry.yaml).read_text(), f"{entry.yaml} differs from the committed one"
    assert "--model-uri" in _run([covidnet, "serve", "--help"], empty).stdout
    # What an InferenceService's container runs (serving/inferenceservice-*.yaml):
    assert "--model_dir" in _run([str(venv / "bin" / "python"), "-m", "covidnet.serve.kserve_model", "--help"],
                                 empty).stdout
    assert not any(empty.glob("*.yaml")), "a command wrote into the working folder"
