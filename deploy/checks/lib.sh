# shellcheck shell=bash
# Shared by the deploy checks (sourced): installing what a check needs on a fresh machine.

# apt_get PACKAGE...: as root, or through sudo for a user (a rustup setup), as deploy/dev does.
apt_get() {
  local su=(); [ "$(id -u)" = 0 ] || su=(sudo)
  "${su[@]}" apt-get update -qq &&
    "${su[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# pip_tools PACKAGE...: installs into a virtualenv of the checks' own and puts it first on PATH
# (its python3 then has them too). Debian's own Python refuses installs into itself (PEP 668),
# and a bare `pip` may not exist at all.
pip_tools() {
  local venv="$HOME/.cache/kurz/venv-checks"
  # Each step returns its failure: callers test this function in `||`, where set -e is off.
  if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_get python3-venv && python3 -m venv "$venv"; } || return 1
  fi
  "$venv/bin/pip" install -q "$@" >/dev/null || return 1
  export PATH="$venv/bin:$PATH"
}
