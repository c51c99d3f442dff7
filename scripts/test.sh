#!/usr/bin/env bash
# `make test`: everything the suite needs, installed and started here, stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

# CI runs as root on a fresh Debian 12: everything the suite needs, installed here
install_debs postgresql redis-server curl
# the IPsec lab (tests/ipsec): charon with kernel-libipsec, swanctl tools, namespaces, ping and tcpdump
install_debs strongswan-charon libcharon-extra-plugins strongswan-swanctl iproute2 iputils-ping tcpdump
install_debs stunnel4 openssl          # TLS sessions (tests/tls)
install_debs poppler-utils             # pdftotext reads invoice PDFs back (tests/billing)
install_debs prometheus nginx-light systemd   # promtool, nginx -t, systemd-analyze (tests/ops)
install_debs chromium chromium-driver  # headless browser tests (tests/browser, Selenium + axe-core)
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
