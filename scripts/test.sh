#!/usr/bin/env bash
# `make test`: everything the suite needs, installed and started here, stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

install_debs postgresql redis-server curl prometheus nginx-light systemd   # CI runs as root on a fresh Debian 12 (promtool, nginx -t, systemd-analyze: tests/ops)
make --no-print-directory venv
# Throwaway test clusters need no durability.
PG_OPTS="-c fsync=off -c synchronous_commit=off" start_services test

echo "== ruff"
.venv/bin/ruff check .
echo "== test suite on PostgreSQL + Redis"
.venv/bin/pytest -p no:cacheprovider --ignore=tests/smoke "$@"
echo "== smoke test of the embedded default (SQLite, filesystem broker)"
env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL QXAAS_VAR_DIR="$TMP/var-embedded" \
  .venv/bin/pytest -p no:cacheprovider tests/smoke
