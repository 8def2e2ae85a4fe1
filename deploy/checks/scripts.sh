#!/usr/bin/env bash
# Checks the repository's shell scripts (deploy/dev, these checks, the bench drivers, .ci/run)
# with shellcheck at error severity: syntax and the mistakes that break a run. (Its warnings are
# style this code base has not adopted yet; they do not fail the check.)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
command -v shellcheck >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null; }
scripts=(deploy/dev deploy/checks/*.sh bench/run bench/consumer bench/ab .ci/run api/openapi/check.sh)
shellcheck -S error "${scripts[@]}"
echo "shell scripts ok: ${scripts[*]}"
