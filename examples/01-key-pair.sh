#!/usr/bin/env bash
# A QKD key pair end to end: the master SAE takes a key (simple REST, then ETSI GS QKD 014), the peer SAE fetches
# its copy by key ID, and both copies are the same bits. Multi-hop relay (CAIT -> CCS -> Rectorado) is transparent.
. "$(dirname "$0")/lib.sh"
SRC="${SRC:-CAIT}" DST="${DST:-Rectorado}"
MASTER="${MASTER:-demo-cait}" SLAVE="${SLAVE:-demo-rect}"

step "1. simple REST: a key from $SRC to $DST"
key=$(api GET "/api/qkd/keys?src=$SRC&dst=$DST")
key_id=$(json_get "$key" key_ID)
echo "key_ID $key_id, $(json_get "$key" size) bits over $(json_get "$key" hops) hop(s)"
peer=$(api GET "/api/qkd/keys/$key_id")
[ "$(json_get "$key" key)" = "$(json_get "$peer" key)" ] || { echo "the peer's copy differs" >&2; exit 1; }
echo "the peer's copy is the same key"

step "2. ETSI GS QKD 014: $MASTER asks for 2 keys for $SLAVE, $SLAVE gets them by key ID"
status=$(api GET "/api/v1/keys/$SLAVE/status" "" -H "X-SAE-ID: $MASTER")
echo "status: key_size $(json_get "$status" key_size), max_key_count $(json_get "$status" max_key_count)"
enc=$(api POST "/api/v1/keys/$SLAVE/enc_keys" '{"number": 2, "size": 256}' -H "X-SAE-ID: $MASTER")
ids=$(python3 -c 'import json,sys; print(json.dumps({"key_IDs": [{"key_ID": k["key_ID"]} for k in json.loads(sys.argv[1])["keys"]]}))' "$enc")
dec=$(api POST "/api/v1/keys/$MASTER/dec_keys" "$ids" -H "X-SAE-ID: $SLAVE")
python3 -c '
import json, sys
enc, dec = json.loads(sys.argv[1])["keys"], json.loads(sys.argv[2])["keys"]
assert [k["key"] for k in enc] == [k["key"] for k in dec], "the copies differ"
print(f"{len(enc)} keys, the same on both sides:", ", ".join(k["key_ID"] for k in enc))' "$enc" "$dec"
echo "OK key pair"
