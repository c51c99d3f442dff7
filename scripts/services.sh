# Sourced by test.sh and bench.sh: install the Debian packages the project needs when missing, and start
# PostgreSQL (socket only) and Redis (loopback) in a temporary directory, stopped on exit.
# Sets DATABASE_URL, REDIS_URL, QXAAS_VAR_DIR and TMP. PG_OPTS adds server options.

install_debs() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [ "$(id -u)" = 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "== missing Debian packages (run as root to install): ${missing[*]}" >&2
  fi
}

start_services() {
  TMP=$(mktemp -d /tmp/qxaas-"${1:-run}".XXXXXX)
  chmod 755 "$TMP"
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  trap stop_services EXIT
  mkdir -p "$TMP/pg" "$TMP/run"
  if [ "$(id -u)" = 0 ]; then chown postgres "$TMP/pg" "$TMP/run"; fi
  as_pg "$PGBIN/initdb" -D "$TMP/pg" -A trust -U postgres >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg/server.log" -w \
    -o "-k $TMP/run -c listen_addresses='' -c max_connections=200 ${PG_OPTS:-}" start >/dev/null
  REDIS_PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --pidfile "$TMP/redis.pid" --dir "$TMP" \
    --save '' --appendonly no >/dev/null
  DATABASE_URL="postgres://postgres@$(.venv/bin/python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$TMP/run")/qxaas"
  export DATABASE_URL
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  export QXAAS_VAR_DIR="$TMP/var"
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_services() {
  [ -f "$TMP/redis.pid" ] && kill "$(cat "$TMP/redis.pid")" 2>/dev/null || true
  [ -d "$TMP/pg" ] && as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
