#!/usr/bin/env bash
# A real PACS for the PACS loop's demo and tests: Debian's Orthanc with its DICOMweb plugin.
#
#   bash scripts/orthanc.sh install   # apt-get install orthanc orthanc-dicomweb chromium (as root), if missing
#   bash scripts/orthanc.sh start     # Orthanc on 127.0.0.1 (HTTP port of pacs.url, DICOM 4242) with a throwaway storage
#   bash scripts/orthanc.sh status    # is it answering?
#   bash scripts/orthanc.sh stop      # stop it and remove its storage
#
# `start` reads params.yaml's pacs section: the HTTP port from pacs.url, and a DicomModalities entry
# `covidnet` for `covidnet pacs listen` (pacs.listen.ae_title at 127.0.0.1:pacs.listen.port). Its
# folder (config, storage, log, pid) is $ORTHANC_DIR (default ${TMPDIR:-/tmp}/covidnet-orthanc).
# `install` returns at once when everything is there (CI calls it before the tests); Chromium is for
# the worklist page's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${ORTHANC_DIR:-${TMPDIR:-/tmp}/covidnet-orthanc}"
DICOM_PORT="${ORTHANC_DICOM_PORT:-4242}"
PLUGIN_DIRS="/usr/share/orthanc/plugins /usr/lib/orthanc"

plugin() { for d in $PLUGIN_DIRS; do ls "$d"/libOrthancDicomWeb.so* 2>/dev/null | head -n1; done | head -n1; }
have_all() { command -v Orthanc >/dev/null 2>&1 && [ -n "$(plugin)" ] && command -v chromium >/dev/null 2>&1; }

install() {
  if have_all; then
    echo "orthanc.sh: Orthanc $(Orthanc --version 2>/dev/null | head -n1 | awk '{print $2}'), its DICOMweb plugin and chromium are installed"
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "orthanc.sh: install needs root (apt-get)" >&2; exit 1; }
    sudo="sudo"
  fi
  # No service is started by the packages here; Orthanc runs from `start` or the tests' own config.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    orthanc orthanc-dicomweb chromium >/dev/null
  have_all || { echo "orthanc.sh: installed, but Orthanc, its DICOMweb plugin or chromium is still missing" >&2; exit 1; }
  echo "orthanc.sh: installed Orthanc, orthanc-dicomweb and chromium"
}

pacs_settings() {  # prints: HTTP_PORT LISTEN_AET LISTEN_PORT (from params.yaml)
  local py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python
  "$py" - <<'EOF'
import urllib.parse, yaml
p = yaml.safe_load(open("params.yaml"))["pacs"]
print(urllib.parse.urlsplit(p["url"]).port or 80, p["listen"]["ae_title"], p["listen"]["port"])
EOF
}

url() { echo "http://127.0.0.1:$1"; }

start() {
  command -v Orthanc >/dev/null 2>&1 && [ -n "$(plugin)" ] || { echo "orthanc.sh: run 'bash scripts/orthanc.sh install' first" >&2; exit 1; }
  read -r http_port aet listen_port < <(pacs_settings)
  if curl -sf "$(url "$http_port")/system" >/dev/null 2>&1; then
    echo "orthanc.sh: something already answers on $(url "$http_port") (bash scripts/orthanc.sh stop?)"; return 0
  fi
  mkdir -p "$DIR/db"
  cat > "$DIR/orthanc.json" <<EOF
{"Name": "covidnet-demo", "StorageDirectory": "$DIR/db", "IndexDirectory": "$DIR/db",
 "HttpPort": $http_port, "HttpBindAddress": "127.0.0.1", "DicomPort": $DICOM_PORT, "DicomBindAddress": "127.0.0.1",
 "DicomAet": "ORTHANC", "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
 "Plugins": ["$(plugin)"], "DicomWeb": {"Enable": true, "Root": "/dicom-web/"},
 "DicomModalities": {"covidnet": ["$aet", "127.0.0.1", $listen_port]}}
EOF
  nohup Orthanc "$DIR/orthanc.json" > "$DIR/orthanc.log" 2>&1 &
  echo $! > "$DIR/orthanc.pid"
  for _ in $(seq 300); do
    if curl -sf "$(url "$http_port")/system" >/dev/null 2>&1; then
      echo "orthanc.sh: Orthanc on $(url "$http_port") (DICOMweb $(url "$http_port")/dicom-web, DICOM ORTHANC@127.0.0.1:$DICOM_PORT), storage $DIR/db"
      return 0
    fi
    kill -0 "$(cat "$DIR/orthanc.pid")" 2>/dev/null || break
    sleep 0.1
  done
  echo "orthanc.sh: Orthanc did not start; its log:" >&2; tail -n 20 "$DIR/orthanc.log" >&2; exit 1
}

stop() {
  if [ -f "$DIR/orthanc.pid" ] && kill -0 "$(cat "$DIR/orthanc.pid")" 2>/dev/null; then
    kill "$(cat "$DIR/orthanc.pid")"
    while kill -0 "$(cat "$DIR/orthanc.pid")" 2>/dev/null; do sleep 0.1; done
    echo "orthanc.sh: stopped"
  else
    echo "orthanc.sh: not running (no live $DIR/orthanc.pid)"
  fi
  if [ -f "$DIR/orthanc.json" ]; then rm -rf "$DIR"; fi  # only a folder this script made
}

status() {
  read -r http_port _ _ < <(pacs_settings)
  if curl -sf "$(url "$http_port")/system"; then echo; else echo "orthanc.sh: nothing answers on $(url "$http_port")"; exit 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: bash scripts/orthanc.sh install|start|stop|status" >&2; exit 2 ;;
esac
