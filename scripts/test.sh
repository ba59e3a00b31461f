#!/usr/bin/env bash
# The test suite on a fresh clone: environment, then pytest. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
