#!/usr/bin/env bash
# Checks the repository's shell scripts (deploy/dev, these checks, the bench drivers, .ci/run)
# with shellcheck at error severity: syntax and the mistakes that break a run. (Its warnings are
# style this code base has not adopted yet; they do not fail the check.)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=deploy/checks/lib.sh
. deploy/checks/lib.sh
command -v shellcheck >/dev/null || apt_get shellcheck
scripts=(deploy/dev deploy/checks/*.sh bench/run bench/consumer bench/ab .ci/run api/openapi/check.sh)
shellcheck -S error "${scripts[@]}"
echo "shell scripts ok: ${scripts[*]}"

# deploy/dev signals only the processes its pidfiles started: a pid the kernel has since given
# to another process (after a reboot) is left alone, in a directory of this check's own.
dev=$(mktemp -d)
sleep 300 &
foreign=$!
sleep 300 &
ours=$!
trap 'kill "$foreign" "$ours" 2>/dev/null; rm -rf "$dev"' EXIT
field() { awk -v n="$2" '{ sub(/.*\) /, ""); print $(n - 2) }' "/proc/$1/stat" 2>/dev/null; }
echo "$foreign 1" >"$dev/api-1.pid"
echo "$ours $(field "$ours" 22)" >"$dev/api-2.pid"
# An older deploy/dev's pidfile (the pid alone) naming a process that is not ours.
echo "$foreign" >"$dev/api-3.pid"
KURZ_DEV_DIR=$dev deploy/dev down >/dev/null
[ "$(field "$foreign" 3)" = S ] || { echo "deploy/dev down signalled a process it did not start" >&2; exit 1; }
case "$(field "$ours" 3)" in
  ''|Z) ;;
  *) echo "deploy/dev down left a process it started running" >&2; exit 1 ;;
esac
echo "deploy/dev pidfiles ok: a reused pid is left alone, its own process stopped"
