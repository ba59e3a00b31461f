#!/usr/bin/env bash
# Regenerate requirements.lock from requirements.in (needs network access to the package index).
# torch is installed separately (a CPU wheel, scripts/setup-env.sh), so it and the CUDA wheels
# a torch dependency would pull are kept out of the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q uv
python -m uv pip compile --quiet requirements.in --python-version 3.11 --no-header --no-annotate \
  --no-emit-package torch -o requirements.lock.tmp
grep -vE '^(nvidia-|cuda-|triton==)' requirements.lock.tmp > requirements.lock
rm requirements.lock.tmp
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) pins)"
