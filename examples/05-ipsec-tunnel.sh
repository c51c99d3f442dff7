#!/usr/bin/env bash
# A quantum-keyed IPsec tunnel (strongSwan, RFC 8784 PPK from a QKD key) between two nodes' gateways: order it,
# wait until it is up, probe it, close it. IPsec needs the lab make run builds as root with strongSwan; without
# it the portal says why (HTTP 503 with the fix) and this script exits 3.
. "$(dirname "$0")/lib.sh"
tid=""
trap '[ -n "$tid" ] && api POST "/api/tunnels/$tid/close/" >/dev/null 2>&1 || true' EXIT

step "order a tunnel CAIT <-> Rectorado"
body='{"node_a": "CAIT", "node_b": "Rectorado", "subnet_a": "10.100.1.0/24", "subnet_b": "10.102.1.0/24", "esp_proposal": "aes256-sha256"}'
out=$(mktemp)
status=$(curl -sS -o "$out" -w '%{http_code}' -H "$AUTH" -H 'Content-Type: application/json' -d "$body" "$BASE/api/tunnels/")
if [ "$status" = 503 ]; then
  echo "IPsec is unavailable here: $(json_get "$(cat "$out")" error.message)"
  exit 3
fi
[ "$status" -lt 400 ] || { echo "HTTP $status: $(cat "$out")" >&2; exit 1; }
tunnel=$(cat "$out")
tid=$(json_get "$tunnel" id)
echo "tunnel $tid: $(json_get "$tunnel" state)"
up() {
  tunnel=$(api GET "/api/tunnels/$tid/")
  state=$(json_get "$tunnel" state)
  [ "$state" = up ] || { [ "$state" = failed ] && echo "failed: $(json_get "$tunnel" reason)" >&2 && exit 1; false; }
}
wait_for "the tunnel to be up" up
echo "up"

step "probe between the tenant hosts"
api POST "/api/tunnels/$tid/probe/" | python3 -m json.tool | head -20

step "close"
api POST "/api/tunnels/$tid/close/" >/dev/null
tid=""
echo "OK IPsec tunnel"
