#!/usr/bin/env bash
# Runs deploy/alertmanager/alertmanager.yml in a real Alertmanager on loopback and checks what
# its inhibit rules do: a critical alert that explains a warning silences it (the runbooks send
# the reader to the cause), and nothing else is silenced. amtool check-config reads the syntax
# only; a misspelt alert name in a matcher passes it and silences nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=deploy/checks/lib.sh
. deploy/checks/lib.sh
AM=/usr/bin/prometheus-alertmanager
[ -x "$AM" ] || apt_get prometheus-alertmanager
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

# scenario NAME: a fresh Alertmanager gets the alerts on stdin ("alertname severity instance
# expected", one a line) and each must then be inhibited or active as expected. Fresh for each:
# an inhibition without `equal` reaches every instance, so causes are tried one at a time.
scenario() {
  local name=$1 alerts; alerts=$(cat)
  [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  rm -rf "${dir:?}/data"
  local port; port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # No cluster: a lone instance, nothing gossiped to a peer on the network.
  "$AM" --config.file=deploy/alertmanager/alertmanager.yml --storage.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= >"$dir/log" 2>&1 &
  pid=$!
  local am="http://127.0.0.1:$port"
  local ready=
  for _ in $(seq 300); do
    curl -fsS "$am/-/ready" >/dev/null 2>&1 && { ready=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$ready" ] || { echo "$name: Alertmanager did not start:" >&2; cat "$dir/log" >&2; exit 1; }
  printf '%s\n' "$alerts" | python3 -c '
import json, sys
print(json.dumps([{"labels": {"alertname": n, "severity": s, "instance": i}}
                  for n, s, i, _ in (line.split() for line in sys.stdin if line.strip())]))' |
    curl -fsS -XPOST -H 'content-type: application/json' --data-binary @- "$am/api/v2/alerts" >/dev/null
  # The inhibitor takes new alerts in a goroutine of its own: read until it agrees, or 30 s.
  local tries=300
  until curl -fsS "$am/api/v2/alerts" | python3 -c '
import json, sys
expected = {(n, i): e for n, _, i, e in (line.split() for line in sys.argv[2].splitlines() if line.strip())}
seen = {(a["labels"]["alertname"], a["labels"]["instance"]):
        "inhibited" if a["status"]["inhibitedBy"] else "active" for a in json.load(sys.stdin)}
wrong = [f"{n}@{i}: {seen.get((n, i))}, expected {e}" for (n, i), e in expected.items() if seen.get((n, i)) != e]
if wrong:
    sys.exit(sys.argv[1] + ": " + "; ".join(wrong))
' "$name" "$alerts" 2>"$dir/wrong"; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || { cat "$dir/wrong" >&2; exit 1; }
    sleep 0.1
  done
}

# Clicks wait in the streams while PostgreSQL is down (KurzPostgresDown, "Impact"); a pool at
# its limit and unpublished link states are other trouble.
scenario "PostgreSQL down" <<'ALERTS'
KurzPostgresDown critical db:9187 active
KurzClickLagGrowing warning api-1:9101 inhibited
KurzLinkStatesNotPublished warning api-1:9101 active
KurzDbPoolSaturated warning api-1:9101 active
ALERTS
# Clicks and link states both wait for Redis (KurzLinkStatesNotPublished, "Cause").
scenario "Redis down" <<'ALERTS'
KurzRedisDown critical redis:9121 active
KurzClickLagGrowing warning api-1:9101 inhibited
KurzLinkStatesNotPublished warning api-1:9101 inhibited
ALERTS
# Every upstream down on one edge explains one upstream down there, not on another edge.
scenario "upstreams down" <<'ALERTS'
KurzAllUpstreamsDown critical edge-1:9100 active
KurzUpstreamDown warning edge-1:9100 inhibited
KurzUpstreamDown warning edge-2:9100 active
ALERTS
scenario "no cause" <<'ALERTS'
KurzClickLagGrowing warning api-1:9101 active
KurzLinkStatesNotPublished warning api-1:9101 active
ALERTS
echo "alertmanager inhibitions ok"
