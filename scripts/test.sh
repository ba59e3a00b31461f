#!/usr/bin/env bash
# The test suite on a fresh clone: environment, the system parts the end-to-end tests use (Orthanc
# and Chromium from Debian, podman and the project images), then pytest. Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m "not slow"`.
#
# COVIDNET_SYSTEM_SETUP=0 skips the system parts (apt-get, image builds): their tests then skip,
# saying why. Each step prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
  local start=$SECONDS
  "$@"
  echo "test.sh: $* took $((SECONDS - start)) s" >&2
}
step bash scripts/setup-env.sh
if [ "${COVIDNET_SYSTEM_SETUP:-1}" != 0 ]; then
  step bash scripts/orthanc.sh install
  step bash scripts/containers.sh ci
fi
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
