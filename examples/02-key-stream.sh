#!/usr/bin/env bash
# An ETSI GS QKD 004 key stream: open it with QoS at one SAE, connect the peer SAE, read chunks on both sides (the
# same bits, index by index), close it (the key_streams quota slot is given back).
. "$(dirname "$0")/lib.sh"
MASTER="${MASTER:-demo-cait}" SLAVE="${SLAVE:-demo-rect}"
QOS='{"Key_chunk_size": 32, "Max_bps": 8192, "Min_bps": 256, "TTL": 600}'

step "open_connect at $MASTER"
opened=$(api POST /api/etsi004/open_connect \
  "{\"source\": \"sae://$MASTER\", \"destination\": \"sae://$SLAVE\", \"QoS\": $QOS}" -H "X-SAE-ID: $MASTER")
ksid=$(json_get "$opened" Key_stream_ID)
echo "Key_stream_ID $ksid (status $(json_get "$opened" status))"
trap 'api POST /api/etsi004/close "{\"Key_stream_ID\": \"$ksid\"}" -H "X-SAE-ID: $MASTER" >/dev/null 2>&1 || true' EXIT

step "the peer $SLAVE connects"
api POST /api/etsi004/open_connect \
  "{\"source\": \"sae://$SLAVE\", \"destination\": \"sae://$MASTER\", \"Key_stream_ID\": \"$ksid\"}" \
  -H "X-SAE-ID: $SLAVE" >/dev/null

step "read chunks 0 and 1 on both sides"
for index in 0 1; do
  a=""; b=""
  read_chunk() { a=$(api GET "/api/etsi004/get_key?Key_stream_ID=$ksid&index=$index" "" -H "X-SAE-ID: $MASTER" 2>/dev/null); }
  wait_for "chunk $index (it is made at the stream's rate)" read_chunk
  b=$(api GET "/api/etsi004/get_key?Key_stream_ID=$ksid&index=$index" "" -H "X-SAE-ID: $SLAVE")
  [ "$(json_get "$a" key_buffer)" = "$(json_get "$b" key_buffer)" ] || { echo "chunk $index differs" >&2; exit 1; }
  echo "chunk $index: the same $(( $(json_get "$a" key_buffer | base64 -d | wc -c) * 8 )) bits on both sides"
done

step "your streams"
api GET "/api/qkd/streams?state=connected" | python3 -c 'import json,sys; d=json.load(sys.stdin); rows=d.get("results", d); print(len(rows), "connected stream(s)")'

step "close"
closed=$(api POST /api/etsi004/close "{\"Key_stream_ID\": \"$ksid\"}" -H "X-SAE-ID: $MASTER")
trap - EXIT
echo "closed (status $(json_get "$closed" status))"
echo "OK key stream"
