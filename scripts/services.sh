# Sourced by test.sh and bench.sh: install the Debian packages the project needs when missing, and start
# PostgreSQL and Redis in a temporary directory, stopped on exit: both on unix sockets only, each socket in a
# 0700 directory, Redis behind an ACL user with a fresh password.
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
  chmod 700 "$TMP/run"  # PostgreSQL's socket: its owner's only (root, which runs the suite, passes anyway)
  if [ "$(id -u)" = 0 ]; then chown postgres "$TMP/pg" "$TMP/run"; fi
  as_pg "$PGBIN/initdb" -D "$TMP/pg" -A trust -U postgres >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg/server.log" -w \
    -o "-k $TMP/run -c listen_addresses='' -c max_connections=200 ${PG_OPTS:-}" start >/dev/null
  # Redis: a unix socket in a 0700 directory (no TCP port another local user could reach), and an ACL user
  # with a fresh password (the default user off), so the suite runs through Redis AUTH as production does.
  mkdir -p "$TMP/redis" && chmod 700 "$TMP/redis"
  local redis_password
  redis_password=$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))')
  (umask 077 && printf 'user default off\nuser qxaas on >%s ~* &* +@all\n' "$redis_password" >"$TMP/redis/users.acl")
  redis-server --port 0 --unixsocket "$TMP/redis/redis.sock" --unixsocketperm 600 --aclfile "$TMP/redis/users.acl" \
    --daemonize yes --pidfile "$TMP/redis/redis.pid" --dir "$TMP/redis" --save '' --appendonly no >/dev/null
  DATABASE_URL="postgres://postgres@$(.venv/bin/python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$TMP/run")/qxaas"
  export DATABASE_URL
  export REDIS_URL="unix://qxaas:$redis_password@$TMP/redis/redis.sock?db=0"
  local i; for i in $(seq 100); do [ -S "$TMP/redis/redis.sock" ] && break; sleep 0.05; done
  export QXAAS_VAR_DIR="$TMP/var"
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_services() {
  [ -f "$TMP/redis/redis.pid" ] && kill "$(cat "$TMP/redis/redis.pid")" 2>/dev/null || true
  [ -d "$TMP/pg" ] && as_pg "$PGBIN/pg_ctl" -D "$TMP/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
