#!/usr/bin/env bash
# Checks deploy/systemd/*.service with `systemd-analyze verify` (syntax, directives, paths).
#
# verify insists that ExecStart's binary exists: the units are checked on copies whose
# /usr/local/bin/kurz-* point at the binaries this checkout built (CARGO_TARGET_DIR/debug, built
# by `deploy/dev test` before this runs), and `kurz-api@.service` as its instance `kurz-api@1`.
# Any warning or error fails the check.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/kurz/target}/debug"
command -v systemd-analyze >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }
for b in kurz-proxy kurz-api; do
  [ -x "$BIN/$b" ] || { echo "systemd check: $BIN/$b is not built (cargo build first)" >&2; exit 1; }
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
copy() { sed "s|/usr/local/bin/|$BIN/|g" "$ROOT/deploy/systemd/$1" >"$tmp/$2"; }
copy kurz-edge.service kurz-edge.service
copy kurz-api@.service kurz-api@.service
ln -s "kurz-api@.service" "$tmp/kurz-api@1.service"
out=$(cd "$tmp" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
  "$tmp/kurz-edge.service" "$tmp/kurz-api@1.service" 2>&1 || true)
# verify also reports on units it pulls in from the host (the container has no systemd as PID 1):
# keep only what concerns ours.
ours=$(printf '%s\n' "$out" | grep -E 'kurz-(edge|api)' || true)
if [ -n "$ours" ]; then
  printf 'systemd-analyze verify:\n%s\n' "$ours" >&2
  exit 1
fi
echo "systemd units ok: kurz-edge.service, kurz-api@.service"
