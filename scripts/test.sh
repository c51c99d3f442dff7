#!/usr/bin/env bash
# `make test`: everything the suite needs, installed and started here, stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- Debian packages (CI runs as root on a fresh Debian 12) -------------------------------------------
DEBS=(postgresql redis-server curl)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "== missing Debian packages (run as root to install): ${missing[*]}" >&2
  fi
fi

# --- Python environment --------------------------------------------------------------------------------
make --no-print-directory venv

# --- PostgreSQL and Redis in a temporary directory, loopback/socket only ----------------------------------
TMP=$(mktemp -d /tmp/qxaas-test.XXXXXX)
chmod 755 "$TMP"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  [ -f "$TMP/redis.pid" ] && kill "$(cat "$TMP/redis.pid")" 2>/dev/null || true
  [ -d "$TMP/pg" ] && as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
mkdir -p "$TMP/pg" "$TMP/run"
if [ "$(id -u)" = 0 ]; then chown postgres "$TMP/pg" "$TMP/run"; fi
as_pg "$PGBIN/initdb" -D "$TMP/pg" -A trust -U postgres >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg/server.log" -w \
  -o "-k $TMP/run -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c max_connections=200" start >/dev/null
REDIS_PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --pidfile "$TMP/redis.pid" --dir "$TMP" \
  --save '' --appendonly no >/dev/null

export DATABASE_URL="postgres://postgres@$(.venv/bin/python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$TMP/run")/qxaas"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export QXAAS_VAR_DIR="$TMP/var"

echo "== ruff"
.venv/bin/ruff check .
echo "== test suite on PostgreSQL + Redis"
.venv/bin/pytest -p no:cacheprovider --ignore=tests/smoke "$@"
echo "== smoke test of the embedded default (SQLite, filesystem broker)"
env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL QXAAS_VAR_DIR="$TMP/var-embedded" \
  .venv/bin/pytest -p no:cacheprovider tests/smoke
