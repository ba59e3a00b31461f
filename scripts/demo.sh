#!/usr/bin/env bash
# The main job on a fresh clone: environment, then `dvc repro` on the default synthetic cohort,
# then a summary of what was produced and where.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"
# DVC needs a git repository with at least one commit (exp run); a tarball checkout gets one.
if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  echo "demo: not a git checkout with a commit; run this from a clone of the repository" >&2
  exit 1
fi
dvc repro "$@"
python scripts/summary.py
