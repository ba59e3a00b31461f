#!/usr/bin/env bash
# The project images, built with podman from nothing but this machine's apt mirror and its pip sources.
#
#   bash scripts/images.sh                 # base, wheelhouse, the CPU image, then the sizes (= all)
#   bash scripts/images.sh base            # the local Debian bookworm base (debootstrap + podman import), cached
#   bash scripts/images.sh wheelhouse      # wheels of torch + requirements.lock (+ build tools), cached by their hash
#   bash scripts/images.sh cpu             # Dockerfile -> pipeline.image.cpu of params.yaml
#   bash scripts/images.sh cuda            # Dockerfile.cuda -> pipeline.image.cuda (needs CUDA_BASE_IMAGE; see below)
#   bash scripts/images.sh sizes           # image sizes, their layers, the largest installed packages
#   bash scripts/images.sh names | base-name | wheelhouse-dir   # print what the others use
#
# Environment:
#   COVIDNET_CACHE   caches (default ${XDG_CACHE_HOME:-~/.cache}/covidnet): base/, wheelhouse/<hash>/, images.json
#   BASE_IMAGE       build on this image instead of the local base (e.g. python:3.11-slim where a registry answers)
#   CUDA_BASE_IMAGE  the CUDA image's base (default: Dockerfile.cuda's nvidia/cuda, which needs a registry)
#   MIRROR           the Debian mirror for debootstrap (default: the first bookworm URI of this machine's apt sources)
#   TORCH_INDEX_URL  cuda only: the wheel index of its (CUDA) torch; default PyPI
#
# Images are named by params.yaml (pipeline.image: one place), labelled with the git commit ("-dirty" when a
# file that goes into the image differs from it). Times of every step are printed and kept in images.json.
set -euo pipefail
trap 'echo "images: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

CACHE=${COVIDNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/covidnet}
SUITE=bookworm                                  # Debian 12: its python3 is 3.11
BASE_PACKAGES=python3,python3-venv,git,ca-certificates
LOCAL_BASE=localhost/covidnet-base:$SUITE
BASE_TRIM="usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/*"  # as python:3.11-slim: no docs
TORCH=torch==2.13.0
TOOLS=(pip==24.3.1 wheel==0.48.0)               # pip for the image's venv; wheel for building covidnet's wheel
REPORT="$CACHE/images.json"
mkdir -p "$CACHE"

say() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }

venv() {
  bash scripts/setup-env.sh >&2
  echo "$PWD/.venv/bin"
}

# Record step timings and facts in images.json (merged with earlier runs).
record() {  # record KEY JSON-VALUE
  python3 - "$REPORT" "$1" "$2" <<'EOF'
import json, sys
path, key, value = sys.argv[1:]
try:
    data = json.load(open(path))
except (OSError, ValueError):
    data = {}
data[key] = json.loads(value)
tmp = path + ".tmp"
json.dump(data, open(tmp, "w"), indent=1, sort_keys=True)
__import__("os").replace(tmp, path)
EOF
}

names() {
  "$(venv)/python" - <<'EOF'
from covidnet.kfp.params import pipeline_params
from covidnet.params import load_params

image = pipeline_params(load_params("params.yaml")).image
print(image.cpu)
print(image.cuda)
EOF
}

# --- base ---------------------------------------------------------------------------------------------

base_name() { echo "${BASE_IMAGE:-$LOCAL_BASE}"; }

mirror() {
  [ -n "${MIRROR:-}" ] && { echo "$MIRROR"; return; }
  local uri=""
  # deb822 sources: the first stanza whose Suites name the suite itself (not -updates, -security).
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri=$(awk -v s="$SUITE" 'BEGIN { RS = "" }
      { u = ""; ok = 0; n = split($0, L, "\n")
        for (i = 1; i <= n; i++) {
          if (L[i] ~ /^URIs:/) { split(L[i], a, " "); u = a[2] }
          if (L[i] ~ /^Suites:/) { m = split(L[i], b, " "); for (j = 2; j <= m; j++) if (b[j] == s) ok = 1 }
        }
        if (ok && u != "") { print u; exit } }' /etc/apt/sources.list.d/*.sources)
  fi
  if [ -z "$uri" ]; then  # one-line sources: deb [options] URI SUITE COMPONENTS
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk -v s="$SUITE" '$1 == "deb" { sub(/\[[^]]*\]/, ""); if ($3 == s) { print $2; exit } }')
  fi
  [ -n "$uri" ] || die "no '$SUITE' mirror in this machine's apt sources; set MIRROR=<Debian mirror URL>"
  echo "$uri"
}

base() {
  if [ -n "${BASE_IMAGE:-}" ]; then say "base: $BASE_IMAGE (given; not made here)"; return; fi
  local t0=$SECONDS key have tar rootfs how
  key=$(echo "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE; $BASE_TRIM" | sha256sum | cut -c1-16)
  have=$(podman image inspect --format '{{index .Labels "org.covidnet.base.key"}}' "$LOCAL_BASE" 2>/dev/null || true)
  if [ "$have" = "$key" ]; then
    say "base: $LOCAL_BASE (cached)"; record base "{\"seconds\": 0, \"how\": \"cached\"}"; return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (bash scripts/containers.sh install)"
  mkdir -p "$CACHE/base"
  tar="$CACHE/base/$SUITE-minbase-$key.tar"
  find "$CACHE/base" -name "$SUITE-minbase-*.tar" ! -name "${tar##*/}" -delete  # an older recipe's
  if [ -f "$tar" ]; then
    how="imported from $tar"
  else
    local url
    url=$(mirror)
    rootfs=$(mktemp -d "$CACHE/base/rootfs.XXXXXX")
    say "base: debootstrap $SUITE from this machine's mirror (about a minute)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$url" > "$CACHE/base/debootstrap.log" 2>&1 \
      || { tail -5 "$CACHE/base/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed (log: $CACHE/base/debootstrap.log)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    [ -d "$rootfs/usr/share" ] && (cd "$rootfs" && rm -rf $BASE_TRIM)
    tar -C "$rootfs" --numeric-owner -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$rootfs"
    how="debootstrap"
  fi
  podman import --change "LABEL org.covidnet.base.key=$key" --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["/bin/bash"]' "$tar" "$LOCAL_BASE" >/dev/null
  say "base: $LOCAL_BASE ($how) in $((SECONDS - t0)) s"
  record base "{\"seconds\": $((SECONDS - t0)), \"how\": \"$how\"}"
}

# --- wheelhouse ----------------------------------------------------------------------------------------

wheelhouse_dir() {
  local key
  key=$( { cat requirements.lock; echo "$TORCH ${TOOLS[*]} cp311 $(uname -m)"; } | sha256sum | cut -c1-16)
  echo "$CACHE/wheelhouse/$key"
}

# shellcheck source=lib/pip.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/pip.sh"

wheelhouse() {
  local t0=$SECONDS dir tmp bin
  dir=$(wheelhouse_dir)
  if [ -f "$dir/.complete" ]; then
    say "wheelhouse: $dir (cached, $(du -sh "$dir" | cut -f1))"; record wheelhouse '{"seconds": 0, "how": "cached"}'; return
  fi
  bin=$(venv)
  tmp="$dir.partial"
  rm -rf "$tmp"; mkdir -p "$tmp"
  say "wheelhouse: $TORCH, requirements.lock and ${TOOLS[*]} into $dir (a few minutes the first time)"
  # --no-deps: the lock is complete, so every wheel is exactly its pin; torch's own dependencies are in the lock.
  pip_quiet "$bin/pip" wheel -q --no-deps --wheel-dir "$tmp" "$TORCH" "${TOOLS[@]}"
  pip_quiet "$bin/pip" wheel -q --no-deps --wheel-dir "$tmp" -r requirements.lock
  ls "$tmp"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 || die "the wheelhouse's torch is not the CPU wheel: $(ls "$tmp"/torch-*)"
  # Everything resolves from the wheelhouse alone, as it will inside the build.
  pip_quiet "$bin/pip" install -q --dry-run --ignore-installed --no-index --find-links "$tmp" "$TORCH" \
    -r requirements.lock || die "the wheelhouse is incomplete (above)"
  touch "$tmp/.complete"
  rm -rf "$dir"; mv "$tmp" "$dir"
  find "$CACHE/wheelhouse" -mindepth 1 -maxdepth 1 ! -name "${dir##*/}" -exec rm -rf {} +  # another lock's
  say "wheelhouse: $dir ($(ls "$dir" | wc -l) wheels, $(du -sh "$dir" | cut -f1)) in $((SECONDS - t0)) s"
  record wheelhouse "{\"seconds\": $((SECONDS - t0)), \"how\": \"pip wheel\", \"mb\": $(du -sm "$dir" | cut -f1)}"
}

# --- images --------------------------------------------------------------------------------------------

commit() {
  local c
  c=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain -- "$@" 2>/dev/null)" ]; then c="$c-dirty"; fi
  echo "$c"
}

build() {  # build DOCKERFILE NAME BASE KEY
  local file=$1 name=$2 from=$3 key=$4 t0=$SECONDS wh version offline=() previous
  previous=$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  wh=$(wheelhouse_dir)
  [ -f "$wh/.complete" ] || die "no wheelhouse (bash scripts/images.sh wheelhouse)"
  version=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
  # On the local base everything is in the base or the wheelhouse: the build runs without a network.
  if [ "$from" = "$LOCAL_BASE" ] && [ "$key" = cpu ]; then offline=(--network none); fi
  say "$key: podman build -f $file -t $name (base $from; Python packages from the wheelhouse${offline:+, no network})"
  podman build --format docker --layers "${offline[@]}" -f "$file" -t "$name" \
    --build-arg BASE_IMAGE="$from" --build-arg WHEELHOUSE=/wheelhouse -v "$wh:/wheelhouse:ro" \
    --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL:-}" \
    --build-arg GIT_COMMIT="$(commit "$file" .dockerignore pyproject.toml README.md params.yaml requirements.lock src)" \
    --build-arg VERSION="$version" . > "$CACHE/build-$key.log" 2>&1 \
    || { tail -40 "$CACHE/build-$key.log" >&2; die "$key: podman build failed (whole log: $CACHE/build-$key.log)"; }
  local id size
  id=$(podman image inspect --format '{{.Id}}' "$name")
  # The image this one replaces, untagged now: removed (its layers shared with the build cache stay).
  if [ -n "$previous" ] && [ "$previous" != "$id" ]; then podman rmi "$previous" >/dev/null 2>&1 || true; fi
  size=$(podman image inspect --format '{{.Size}}' "$name")
  say "$key: $name ${id:0:12}, $((size / 1000000)) MB, in $((SECONDS - t0)) s (log: $CACHE/build-$key.log)"
  record "$key" "{\"seconds\": $((SECONDS - t0)), \"image\": \"$name\", \"id\": \"$id\", \"mb\": $((size / 1000000))}"
}

cpu() {
  local cpu_name
  cpu_name=$(names | sed -n 1p)
  podman image exists "$(base_name)" || base
  [ -f "$(wheelhouse_dir)/.complete" ] || wheelhouse
  build Dockerfile "$cpu_name" "$(base_name)" cpu
}

cuda() {
  local cuda_name
  cuda_name=$(names | sed -n 2p)
  # torch comes from an index (a CUDA build; the wheelhouse holds the CPU one): the build needs PyPI or TORCH_INDEX_URL.
  [ -n "${CUDA_BASE_IMAGE:-}" ] || die "cuda: not built: set CUDA_BASE_IMAGE to a CUDA runtime image this machine has or can pull (Dockerfile.cuda's default, nvidia/cuda, comes from Docker Hub, which is not reachable here)"
  [ -f "$(wheelhouse_dir)/.complete" ] || wheelhouse
  build Dockerfile.cuda "$cuda_name" "$CUDA_BASE_IMAGE" cuda
}

sizes() {
  local name
  for name in $(names); do
    podman image exists "$name" || { say "$name: not built"; continue; }
    echo "== $name: $(( $(podman image inspect --format '{{.Size}}' "$name") / 1000000 )) MB, layers (largest first):"
    podman history --format json "$name" | python3 -c '
import json, sys
for layer in sorted(json.load(sys.stdin), key=lambda layer: -layer["size"])[:6]:
    print("%7.0f MB  %s" % (layer["size"] / 1e6, layer["CreatedBy"].replace("/bin/sh -c ", "")[:120]))'
    echo "== the largest installed Python packages (MB):"
    podman run --rm --network none --entrypoint sh "$name" -c \
      'cd /opt/venv/lib/python3.11/site-packages && du -sm -- * | sort -rn | head -12'
  done
}

all() {
  local t0=$SECONDS
  base; wheelhouse; cpu; sizes
  say "all: $((SECONDS - t0)) s"
}

case "${1:-all}" in
  all) all ;;
  names) names ;;
  base-name) base_name ;;
  wheelhouse-dir) wheelhouse_dir ;;
  *) for step in "$@"; do
       case "$step" in
         base|wheelhouse|cpu|cuda|sizes) "$step" ;;
         *) die "unknown step '$step' (all, base, wheelhouse, cpu, cuda, sizes, names, base-name, wheelhouse-dir)" ;;
       esac
     done ;;
esac
