#!/usr/bin/env bash
# Containers on this machine: Debian's podman (no Docker daemon, no image registry), configured as
# DESIGN.md section 9 says, its Docker-compatible API socket, and the project images (scripts/images.sh).
#
#   bash scripts/containers.sh ci        # everything CI needs before the tests: install, configure, images, socket;
#                                        # where containers cannot run here it says why and exits 0 (the tests skip)
#   bash scripts/containers.sh install   # apt-get podman, buildah, runc, debootstrap; write the podman settings
#   bash scripts/containers.sh check     # can this machine run a container? (exit 1 with the reason)
#   bash scripts/containers.sh socket    # start `podman system service` on $COVIDNET_PODMAN_SOCKET (idempotent)
#   bash scripts/containers.sh stop      # stop the service this script started
#
# The tests (tests/e2e/test_containers.py) find the socket at $COVIDNET_PODMAN_SOCKET (default
# /run/podman/podman.sock, podman's own place for root) or start a service of their own; they read
# the reason written by `ci` when containers were not possible, and skip saying it.
set -euo pipefail
trap 'echo "containers: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

CACHE=${COVIDNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/covidnet}
SOCKET=${COVIDNET_PODMAN_SOCKET:-/run/podman/podman.sock}
SKIP_FILE="$CACHE/containers-skipped.txt"   # why containers are not possible here (read by the tests)
CONF_DIR=/etc/containers/containers.conf.d
CONF="$CONF_DIR/covidnet.conf"
# iptables: netavark sets up a published port (-p) with it ("netavark: No such file or directory" without)
PACKAGES=(podman buildah runc debootstrap uidmap catatonit netavark aardvark-dns iptables)

say() { echo "containers: $*" >&2; }

# runc, not crun (crun refuses this kind of machine's mixed cgroup v1/v2 setup); ulimits lower than the
# machine's (the default "unlimited" nofile is refused); cgroupfs and a file event log (no systemd here).
write_conf() {
  mkdir -p "$CONF_DIR"
  cat > "$CONF.tmp" <<'EOF'
# Written by scripts/containers.sh (COVIDNet): podman on a machine without systemd and with mixed cgroups.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  mv "$CONF.tmp" "$CONF"
}

install() {
  local missing=()
  for cmd in podman buildah runc debootstrap iptables; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "not root: cannot apt-get ${missing[*]}"; return 1; }
    command -v apt-get >/dev/null 2>&1 || { echo "no apt-get to install ${missing[*]}"; return 1; }
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || { echo "apt-get update failed"; return 1; }
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null \
      || { echo "apt-get install ${PACKAGES[*]} failed"; return 1; }
  fi
  if [ "$(id -u)" = 0 ]; then
    write_conf
  else
    say "not root: $CONF not written (rootless podman keeps its own settings)"
  fi
  local runtime out
  out=$(podman version --format '{{.Client.Version}}' 2>&1) || { echo "podman version failed: ${out##*$'\n'}"; return 1; }
  runtime=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>&1) || { echo "podman info failed: ${runtime##*$'\n'}"; return 1; }
  [ "$runtime" = runc ] || { echo "podman uses the runtime '$runtime', not runc ($CONF is not read?)"; return 1; }
}

# A container really runs: the base image (scripts/images.sh base) with `true`.
check() {
  local base out
  base=$(bash scripts/images.sh base-name)
  podman image exists "$base" || { echo "no base image $base yet (bash scripts/images.sh base)"; return 1; }
  out=$(podman run --rm --network none "$base" true 2>&1) || { echo "podman run failed: ${out##*$'\n'}"; return 1; }
}

socket_up() { curl -sf --max-time 5 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; }

socket() {
  if socket_up; then say "podman API already answers on $SOCKET"; return 0; fi
  mkdir -p "$(dirname "$SOCKET")" "$CACHE"
  rm -f "$SOCKET"
  # --time=0: no idle timeout, the tests come later; its log beside the cache.
  setsid podman system service --time=0 "unix://$SOCKET" >"$CACHE/podman-service.log" 2>&1 < /dev/null &
  echo $! > "$CACHE/podman-service.pid"
  for _ in $(seq 1 50); do socket_up && { say "podman API on $SOCKET (pid $(cat "$CACHE/podman-service.pid"))"; return 0; }; sleep 0.2; done
  echo "podman system service did not answer on $SOCKET: $(tail -3 "$CACHE/podman-service.log")"
  return 1
}

stop() {
  local pid_file="$CACHE/podman-service.pid"
  [ -f "$pid_file" ] || { say "no service started by this script"; return 0; }
  kill "$(cat "$pid_file")" 2>/dev/null || true
  rm -f "$pid_file"
}

# Not possible here: say why, leave the reason for the tests, exit 0.
skip() {
  mkdir -p "$CACHE"
  echo "$1" > "$SKIP_FILE"
  say "SKIPPED: containers are not possible on this machine: $1"
  say "the container tests (tests/e2e/test_containers.py) will skip with this reason"
  exit 0
}

ci() {
  local t0=$SECONDS t why cpu cuda
  mkdir -p "$CACHE"
  rm -f "$SKIP_FILE"
  t=$SECONDS; why=$(install) || skip "${why:-install failed}"
  say "install: podman $(podman version --format '{{.Client.Version}}') with runc, in $((SECONDS - t)) s"
  if ! bash scripts/images.sh base 2> "$CACHE/images-base.log"; then
    cat "$CACHE/images-base.log" >&2
    why=$(tail -1 "$CACHE/images-base.log"); skip "the base image could not be made: ${why#images: }"
  fi
  cat "$CACHE/images-base.log" >&2
  why=$(check) || skip "$why"
  # From here on a failure fails CI: podman runs here, so a wheelhouse or an image that does not build is a bug.
  bash scripts/images.sh wheelhouse cpu
  why=$(socket 2>&1) || skip "$why"
  echo "$why" >&2
  cpu=$(bash scripts/images.sh names | sed -n 1p); cuda=$(bash scripts/images.sh names | sed -n 2p)
  say "ready in $((SECONDS - t0)) s: built $cpu; not built $cuda (no CUDA base image and no GPU here:" \
      "Dockerfile.cuda is for a machine with a registry); API unix://$SOCKET"
}

case "${1:-ci}" in
  ci) ci ;;
  install) out=$(install 2>&1) || { echo "containers: install: $out" >&2; exit 1; } ;;
  check) out=$(check 2>&1) || { echo "containers: check: $out" >&2; exit 1; }; say "a container runs here" ;;
  socket) socket ;;
  stop) stop ;;
  *) echo "usage: bash scripts/containers.sh [ci|install|check|socket|stop]" >&2; exit 2 ;;
esac
