# Sourced by setup-env.sh and images.sh.
# pip, without the warnings about this machine's on-disk indexes that lack a package (pip's config
# names them; one line per package and index, hundreds per install). pip's own status is returned.
pip_quiet() {
  local status
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
  status=${PIPESTATUS[0]}
  return "$status"
}
