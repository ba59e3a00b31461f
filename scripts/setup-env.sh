#!/usr/bin/env bash
# Create or update ./.venv from requirements.lock (idempotent: a stamp skips a finished install).
# torch goes first and alone: `torch==2.13.0` resolves to the CPU wheel on our machines, while a
# torch pulled in as someone's dependency would be a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/pip.sh
. scripts/lib/pip.sh
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "setup-env: Python 3.11 is required, found $("$PY" --version 2>&1)" >&2; exit 1; }

stamp_of() { cat requirements.lock pyproject.toml scripts/setup-env.sh scripts/lib/pip.sh web/package-lock.json scripts/offline_plots.py \
  | sha256sum | cut -c1-16; }

# The page `dvc plots show` renders into, with vega inside it (it opens offline): from the npm
# packages pinned in web/package-lock.json. Without npm, DVC's own page (scripts from a CDN) is used.
offline_plots() {
  if command -v npm >/dev/null 2>&1; then
    npm ci --prefix web --no-audit --no-fund --ignore-scripts --silent >&2
    .venv/bin/python scripts/offline_plots.py
  else
    echo "setup-env: npm not found: dvc plots show keeps DVC's page, which loads vega from a CDN" >&2
  fi
}
want=$(stamp_of)
if [ -f .venv/.covidnet-stamp ] && [ "$(cat .venv/.covidnet-stamp)" = "$want" ]; then
  [ -f .dvc/plots/offline.html ] || offline_plots
  exit 0
fi
echo "setup-env: installing the environment into .venv (a few minutes the first time)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip==24.3.1"
pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
pip_quiet .venv/bin/python -m pip check
offline_plots
echo "$want" > .venv/.covidnet-stamp
