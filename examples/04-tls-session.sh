#!/usr/bin/env bash
# A quantum-keyed TLS 1.3 session (QKD key as external PSK, X25519 kept) between two nodes, managed by the portal:
# plaintext in at A's endpoint, TLS between the nodes, plaintext out to the target. The target here is a small
# HTTP server this script starts on loopback.
. "$(dirname "$0")/lib.sh"
WORK=$(mktemp -d)
echo "hello over quantum-keyed TLS" > "$WORK/index.html"
TARGET_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$TARGET_PORT" --bind 127.0.0.1 --directory "$WORK" >/dev/null 2>&1 &
SERVER=$!
sid=""
cleanup() {
  [ -n "$sid" ] && api POST "/api/tls/sessions/$sid/close" >/dev/null 2>&1 || true
  kill "$SERVER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
target_up() { curl -s -o /dev/null "http://127.0.0.1:$TARGET_PORT/"; }
wait_for "the target HTTP server" target_up

step "open a session CAIT -> Rectorado to 127.0.0.1:$TARGET_PORT"
session=$(api POST /api/tls/sessions \
  "{\"node_a\": \"CAIT\", \"node_b\": \"Rectorado\", \"target\": \"127.0.0.1:$TARGET_PORT\", \"rotate_seconds\": 60}")
sid=$(json_get "$session" id)
echo "session $sid: $(json_get "$session" state)"
active() {
  session=$(api GET "/api/tls/sessions/$sid")
  state=$(json_get "$session" state)
  [ "$state" = active ] || { [ "$state" = failed ] && echo "failed: $(json_get "$session" reason)" >&2 && exit 1; false; }
}
wait_for "the session to be active" active
endpoint=$(json_get "$session" client_endpoint)
echo "active: connect to $endpoint (PSK identity $(json_get "$session" psk_identity))"

step "a request through the session"
body=$(curl -sS --max-time 10 "http://$endpoint/")
echo "$body"
[ "$body" = "hello over quantum-keyed TLS" ] || { echo "unexpected answer" >&2; exit 1; }

step "close"
api POST "/api/tls/sessions/$sid/close" >/dev/null
sid=""
echo "OK TLS session"
