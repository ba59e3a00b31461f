"""The cohort at a git revision, from a real git + DVC repository whose data live on moto's S3 server.

The repository holds a tiny SYNTHETIC cohort (real DICOM files and the manifest) at tag
``v1``, and at ``v2`` the same with one patient fewer in ``patients.csv``; both are ``dvc
push``ed to S3 on loopback and the repository's own cache is deleted, so every byte fetched
comes from the remote.
"""

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from covidnet.data.fetch import FetchError, RevisionError, check_revision, fetch_cohort, resolve_revision
from support import REPO


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def cohort_repo(tmp_path_factory, s3_server, git_env):
    """A git + DVC cohort repository, tags v1 and v2, data pushed to S3; returns (repo, {tag: patients.csv bytes}).

    The S3 credentials are in this process's environment while the module's tests run (dvc reads them there).
    """
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env.items():
            mp.setenv(key, value)
        yield _make_cohort_repo(tmp_path_factory.mktemp("cohort") / "cohort", s3_server, {**git_env, **s3_server.env})


def _make_cohort_repo(repo, s3_server, env):
    from covidnet.params import load_params
    from covidnet.paths import Paths
    from covidnet.synthetic.synth import run_synth

    repo.mkdir()
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run(["dvc", "init", "-q"], repo, env)
    params = load_params(REPO / "params.yaml", profile="tiny")
    run_synth(params, Paths.from_params(params, dicom=repo / "data/raw/dicom", manifest=repo / "data/raw/manifest"))
    _run(["dvc", "remote", "add", "-d", "storage", f"s3://{s3_server.bucket}/cohort"], repo, env)
    _run(["dvc", "remote", "modify", "storage", "endpointurl", s3_server.endpoint], repo, env)
    patients = repo / "data/raw/manifest/patients.csv"
    versions = {}
    for tag in ("v1", "v2"):
        if tag == "v2":
            lines = patients.read_text().splitlines()
            patients.write_text("\n".join(lines[:-1]) + "\n")  # one patient fewer
        _run(["dvc", "add", "-q", "data/raw/dicom", "data/raw/manifest"], repo, env)
        _run(["git", "add", "-A"], repo, env)
        _run(["git", "commit", "-qm", f"cohort {tag}"], repo, env)
        _run(["git", "tag", tag], repo, env)
        _run(["dvc", "push", "-q"], repo, env)
        versions[tag] = patients.read_bytes()
    shutil.rmtree(repo / ".dvc" / "cache")  # what is fetched must come from S3
    assert s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["KeyCount"] > 0
    return repo, versions


def _dicom_files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_fetch_cohort_component_gets_the_named_revision(cohort_repo, tmp_path):
    from covidnet.kfp.components.stages import fetch_cohort as component

    repo, versions = cohort_repo
    fetched = {}
    for tag in ("v1", "v2"):
        dicom, manifest = tmp_path / tag / "dicom", tmp_path / tag / "manifest"
        component.python_func(repo_url=str(repo), revision=tag, dicom=SimpleNamespace(path=str(dicom)),
                              manifest=SimpleNamespace(path=str(manifest)))
        assert (manifest / "patients.csv").read_bytes() == versions[tag]
        fetched[tag] = _dicom_files(dicom)
    assert versions["v1"] != versions["v2"]
    assert fetched["v1"] == fetched["v2"] == _dicom_files(repo / "data/raw/dicom") and fetched["v1"]
    import pydicom

    first = sorted((tmp_path / "v1" / "dicom").rglob("*.dcm"))[0]
    assert pydicom.dcmread(first).Modality == "CT"

    # A revision the repository does not have: a clear error naming it, and nothing written.
    dicom, manifest = tmp_path / "bad" / "dicom", tmp_path / "bad" / "manifest"
    with pytest.raises(Exception, match=r"fetch_cohort failed: FetchError: fetch_cohort: cannot get 'data/raw/dicom' "
                                        r"at revision 'v9' of .*cohort") as info:
        component.python_func(repo_url=str(repo), revision="v9", dicom=SimpleNamespace(path=str(dicom)),
                              manifest=SimpleNamespace(path=str(manifest)))
    assert isinstance(info.value.__cause__, FetchError)
    assert not dicom.exists() and not manifest.exists()
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())  # no temporary left either


@pytest.mark.slow
def test_fetch_cohort_in_a_kfp_local_run(cohort_repo, tmp_path):
    """The same component as a kfp.local task (a subprocess, as on a cluster), at the second revision."""
    import kfp.local

    from covidnet.kfp.components.stages import fetch_cohort as component

    repo, versions = cohort_repo
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   raise_on_error=True)
    task = component(repo_url=str(repo), revision="v2")
    assert (Path(task.outputs["manifest"].path) / "patients.csv").read_bytes() == versions["v2"]
    assert _dicom_files(Path(task.outputs["dicom"].path)) == _dicom_files(repo / "data/raw/dicom")


def test_fetch_refuses_empty_arguments(tmp_path):
    with pytest.raises(FetchError, match="repository '' and revision 'v1' must both be given"):
        fetch_cohort("", "v1", {"data": tmp_path / "out"})


def test_check_revision_against_a_real_repository(tmp_path, git_env):
    env = git_env
    repo = tmp_path / "cohort"
    _run(["git", "init", "-q", "-b", "main", str(repo)], tmp_path, env)
    _run(["git", "commit", "-q", "--allow-empty", "-m", "one"], repo, env)
    first = _run(["git", "rev-parse", "HEAD"], repo, env)
    _run(["git", "tag", "v1"], repo, env)
    _run(["git", "commit", "-q", "--allow-empty", "-m", "two"], repo, env)
    _run(["git", "branch", "next"], repo, env)
    for revision in ("main", "next", "v1", "refs/tags/v1", first):
        assert check_revision(str(repo), revision).checked, revision
    with pytest.raises(RevisionError, match=r"'v2' is not a branch, tag or full commit hash .*\(branches: main, next; "
                                            r"tags: v1"):
        check_revision(str(repo), "v2")
    with pytest.raises(RevisionError, match="no such commit"):
        check_revision(str(repo), "0" * 40)
    short = check_revision(str(repo), first[:8])
    assert not short.checked and "abbreviated commit hash" in short.detail
    unreachable = check_revision(str(tmp_path / "nowhere"), "main")
    assert not unreachable.checked and "git ls-remote" in unreachable.detail


def test_resolve_revision_follows_a_moving_branch(tmp_path, git_env):
    """A branch resolves to the commit it points at now; a tag (annotated too) to its commit; a hash to itself."""
    repo = tmp_path / "cohort"
    _run(["git", "init", "-q", "-b", "main", str(repo)], tmp_path, git_env)
    _run(["git", "commit", "-q", "--allow-empty", "-m", "one"], repo, git_env)
    first = _run(["git", "rev-parse", "HEAD"], repo, git_env)
    _run(["git", "tag", "-a", "v1", "-m", "cohort v1"], repo, git_env)
    assert resolve_revision(str(repo), "main") == first
    _run(["git", "commit", "-q", "--allow-empty", "-m", "two"], repo, git_env)
    second = _run(["git", "rev-parse", "HEAD"], repo, git_env)
    assert second != first and resolve_revision(str(repo), "main") == second  # main moved
    assert resolve_revision(str(repo), "v1") == resolve_revision(str(repo), "refs/tags/v1") == first
    assert resolve_revision(str(repo), first) == first
    with pytest.raises(RevisionError, match="'v2' is not a branch, tag or full commit hash"):
        resolve_revision(str(repo), "v2")
    with pytest.raises(FetchError, match="resolve_revision: .*abbreviated commit hash"):
        resolve_revision(str(repo), first[:8])
    with pytest.raises(FetchError, match="resolve_revision: git ls-remote"):
        resolve_revision(str(tmp_path / "nowhere"), "main")


def test_resolve_component_in_a_kfp_local_run(tmp_path, git_env):
    """The pipeline's first task (never cached) as a kfp.local subprocess: its output is the commit."""
    import kfp.local

    from covidnet.kfp.components.stages import resolve_cohort_revision

    repo = tmp_path / "cohort"
    _run(["git", "init", "-q", "-b", "main", str(repo)], tmp_path, git_env)
    _run(["git", "commit", "-q", "--allow-empty", "-m", "one"], repo, git_env)
    head = _run(["git", "rev-parse", "HEAD"], repo, git_env)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
                   raise_on_error=True)
    assert resolve_cohort_revision(repo_url=str(repo), revision="main").output == head
