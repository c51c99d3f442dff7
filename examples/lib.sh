# Shared by the example scripts: where the portal is, the token, and small helpers. Needs bash, curl, python3.
# BASE: the portal (default make run's http://127.0.0.1:8000); TOKEN: an API token (default make run's demo token).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VAR="${QXAAS_VAR_DIR:-$HERE/../var}"
BASE="${BASE:-http://127.0.0.1:8000}"
TOKEN="${TOKEN:-$(cat "$VAR/demo-token" 2>/dev/null || true)}"
[ -n "$TOKEN" ] || { echo "no token: set TOKEN, or run make run (it writes var/demo-token)" >&2; exit 2; }
AUTH="Authorization: Bearer $TOKEN"
BOUND_S="${BOUND_S:-60}"  # the longest any wait below lasts

# api METHOD PATH [JSON BODY] [extra curl args...]: the JSON answer on stdout; an HTTP error is shown in words
# (the portal's {"error": {"message"}}) and ends the script.
api() {
  local method=$1 path=$2 body=${3:-} out status
  shift $(( $# > 2 ? 3 : 2 ))
  out=$(mktemp)
  if [ -n "$body" ]; then
    status=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "$AUTH" -H 'Content-Type: application/json' \
             -d "$body" "$@" "$BASE$path")
  else
    status=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "$AUTH" "$@" "$BASE$path")
  fi
  if [ "$status" -ge 400 ]; then
    echo "$method $path -> HTTP $status: $(json_get "$(cat "$out")" error.message 2>/dev/null || cat "$out")" >&2
    rm -f "$out"
    return 1
  fi
  cat "$out"
  rm -f "$out"
}

# json_get JSON DOTTED.PATH: one field of a JSON document (list indexes are numbers: links.0.id).
json_get() {
  python3 -c '
import json, sys
value = json.loads(sys.argv[1])
for part in sys.argv[2].split("."):
    value = value[int(part)] if isinstance(value, list) else value[part]
print(value if not isinstance(value, (dict, list)) else json.dumps(value))' "$1" "$2"
}

# wait_for DESCRIPTION COMMAND...: run COMMAND every half second until it succeeds, at most BOUND_S seconds.
wait_for() {
  local what=$1 deadline=$((SECONDS + BOUND_S))
  shift
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "gave up after ${BOUND_S}s waiting for $what" >&2; return 1; fi
    sleep 0.5
  done
}

step() { printf '\n== %s\n' "$*"; }
