"""A DVC-versioned cohort at a git revision: fetch it (``dvc get``), or check the revision exists.

:func:`fetch_cohort` is what the pipeline's first task runs: the DICOM tree and the manifest
as they were at ``revision`` of the cohort's git + DVC repository, pulled from its DVC remote
(S3 through dvc-s3; the remote's credentials come from the environment). Each output is
written beside its target and renamed, so a failed fetch leaves nothing half-written.

:func:`check_revision` is what ``covidnet pipeline submit`` runs before sending a run:
``git ls-remote`` says whether the revision (a branch, a tag or a full commit hash) is in
the repository, when the repository can be reached from here.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from covidnet.atomic import atomic_path
from covidnet.errors import CovidnetError

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,39}$")


class FetchError(CovidnetError, RuntimeError):
    """The cohort could not be fetched; the message names the repository, the path and the revision."""


class RevisionError(CovidnetError, ValueError):
    """The cohort revision is not in the repository."""


def fetch_cohort(repo_url: str, revision: str, outputs: dict[str, Path | str], timeout_s: float | None = None) -> None:
    """``dvc get REPO PATH --rev REVISION`` for each ``{path in the repo: output path}``.

    Args:
        repo_url: the cohort's git + DVC repository (URL or local path).
        revision: a branch, tag or commit of that repository.
        outputs: what to fetch and where to put it (file or folder, as in the repository).
        timeout_s: per ``dvc get``; ``None``: no limit.

    Raises:
        FetchError: naming the repository, the path, the revision and DVC's own message
            (an unknown revision, a path not in the repository, an unreachable remote).
    """
    if not repo_url.strip() or not revision.strip():
        raise FetchError(f"fetch_cohort: repository {repo_url!r} and revision {revision!r} must both be given")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}
    for path, out in outputs.items():
        out = Path(out)
        with atomic_path(out) as tmp:
            tmp.unlink()  # dvc get creates the file or folder itself
            cmd = [sys.executable, "-m", "dvc", "get", repo_url, path, "--rev", revision, "-o", str(tmp)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise FetchError(f"fetch_cohort: dvc get {repo_url} {path} --rev {revision}: no answer within "
                                 f"{timeout_s} s") from exc
            if proc.returncode != 0:
                message = (proc.stderr.strip() or proc.stdout.strip()).replace("\n", " ")
                raise FetchError(f"fetch_cohort: cannot get {path!r} at revision {revision!r} of {repo_url} "
                                 f"(dvc get exited with {proc.returncode}): {message}")
            if not tmp.exists():
                raise FetchError(f"fetch_cohort: dvc get {repo_url} {path} --rev {revision} wrote nothing")
        log.info("fetched %s at %s of %s -> %s", path, revision, repo_url, out)


@dataclass(frozen=True)
class RevisionCheck:
    """What :func:`check_revision` found: ``checked`` False when the repository could not be asked.

    ``commit`` is the 40-character hash the revision names (a tag's commit, not the tag
    object), when found.
    """

    checked: bool
    detail: str
    commit: str | None = None


def check_revision(repo_url: str, revision: str, timeout_s: float = 30) -> RevisionCheck:
    """Ask the repository (``git ls-remote``) whether ``revision`` is one of its branches, tags or commits.

    A full 40-character commit hash that is no branch or tag tip is looked for with a
    shallow ``git fetch`` of that commit into a temporary repository.

    Returns:
        ``RevisionCheck(True, ...)`` when found; ``RevisionCheck(False, why)`` when the
        repository could not be reached or read (no network, credentials): not an error,
        the run's first task will tell.

    Raises:
        RevisionError: the repository answered and has no such revision.
    """
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}

    def git(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, env=env, timeout=timeout_s, cwd=cwd)

    try:
        proc = git("ls-remote", repo_url)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return RevisionCheck(False, f"git ls-remote {repo_url}: {exc}")
    if proc.returncode != 0:
        return RevisionCheck(False, f"git ls-remote {repo_url} failed: {proc.stderr.strip()}")
    refs = {}
    for line in proc.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref.removesuffix("^{}")] = sha
    # A name: the branch first, then the tag (git's own order); a tag's peeled line (^{}) came last, so
    # refs holds its commit.
    for name in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
        if name in refs:
            return RevisionCheck(True, f"{revision} found in {repo_url} (commit {refs[name]})", refs[name])
    if revision in refs.values():
        return RevisionCheck(True, f"commit {revision} found in {repo_url}", revision)
    if _SHA.match(revision):
        with tempfile.TemporaryDirectory(prefix="covidnet-revcheck-") as tmp:
            try:
                git("init", "-q", tmp)
                got = git("fetch", "-q", "--depth=1", repo_url, revision, cwd=tmp)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return RevisionCheck(False, f"git fetch {repo_url} {revision}: {exc}")
        if got.returncode == 0:
            return RevisionCheck(True, f"commit {revision} found in {repo_url}", revision)
        raise RevisionError(f"cohort revision {revision!r}: no such commit in {repo_url} "
                            f"({got.stderr.strip() or 'git fetch failed'})")
    if _SHORT_SHA.match(revision):
        return RevisionCheck(False, f"{revision!r} looks like an abbreviated commit hash, which a remote cannot be "
                                    "asked about; give the full 40-character hash to have it checked")
    heads = sorted(r.removeprefix("refs/heads/") for r in refs if r.startswith("refs/heads/"))
    tags = sorted(r.removeprefix("refs/tags/") for r in refs if r.startswith("refs/tags/"))
    raise RevisionError(f"cohort revision {revision!r} is not a branch, tag or full commit hash of {repo_url} "
                        f"(branches: {', '.join(heads[:10]) or 'none'}; tags: {', '.join(tags[:10]) or 'none'})")


def resolve_revision(repo_url: str, revision: str, timeout_s: float = 30) -> str:
    """The commit a branch, tag or commit hash of ``repo_url`` names now (40 hex digits).

    What a pipeline fetches by: a moving name (``main``) becomes the commit it points at
    when the run starts, so a cached fetch is reused only for the same commit.

    Raises:
        RevisionError: the repository has no such revision.
        FetchError: the repository could not be asked (network, credentials), or the
            revision is an abbreviated hash.
    """
    found = check_revision(repo_url, revision, timeout_s=timeout_s)
    if not found.checked or found.commit is None:
        raise FetchError(f"resolve_revision: {found.detail}")
    return found.commit
