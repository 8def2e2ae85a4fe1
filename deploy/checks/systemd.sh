#!/usr/bin/env bash
# The systemd half of deploy/checks/systemd-compose.sh (kept for `deploy/dev test`).
exec "$(dirname "${BASH_SOURCE[0]}")/systemd-compose.sh" systemd
