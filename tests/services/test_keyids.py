"""Sealed portal key IDs: they round-trip, reveal nothing of the batch, and made-up ones do not open."""

from __future__ import annotations

import uuid

from django.test import override_settings

from services import keyids


def test_key_ids_open_to_their_batch_and_index_and_are_uuid_strings():
    batch = keyids.new_batch()
    ids = keyids.seal(batch, 5)
    assert len(set(ids)) == 5 and all(str(uuid.UUID(k)) == k for k in ids)
    assert keyids.open_ids(ids) == [(batch, i) for i in range(5)]
    assert keyids.seal(batch, 2, first=3) == ids[3:]


def test_key_ids_are_rfc_9562_uuidv8_for_strict_validators():
    ids = keyids.seal(keyids.new_batch(), 64)
    for key_id in ids:
        parsed = uuid.UUID(key_id)
        assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
        assert key_id[14] == "8" and key_id[19] in "89ab"
    # the extremes of the payload still round-trip
    assert keyids.open_ids(keyids.seal(keyids.MAX_BATCH, 2, first=2**32 - 2)) == [
        (keyids.MAX_BATCH, 2**32 - 2), (keyids.MAX_BATCH, 2**32 - 1)]
    assert keyids.open_ids(keyids.seal(1, 1)) == [(1, 0)]


def test_ids_sealed_before_the_uuidv8_scheme_still_open():
    batch = keyids.new_batch()
    ids = [keyids.seal_legacy(batch, 7), keyids.seal_v1(batch, 8), keyids.seal(batch, 1)[0]]
    assert keyids.open_ids(ids) == [(batch, 7), (batch, 8), (batch, 0)]


@override_settings(KEY_ID_SECRETS={1: "a fixed secret"})  # deterministic: the check below is on fixed IDs
def test_consecutive_batches_and_indexes_give_unrelated_ids():
    ids = keyids.seal(1, 2) + keyids.seal(2, 1)
    # a pseudorandom permutation: neighbours share no visible structure (after the version digit, no common hex
    # prefix of 4 digits)
    assert {k[0] for k in ids} == {"1"} and len({k[1:5] for k in ids}) == 3


def test_made_up_altered_and_foreign_ids_do_not_open():
    key_id = keyids.seal(keyids.new_batch(), 1)[0]
    altered = key_id[:-1] + ("0" if key_id[-1] != "0" else "1")
    made_up_v8 = str(uuid.UUID(int=(uuid.uuid4().int & ~(0xF << 76)) | (0x8 << 76)))  # the right shape, not sealed
    assert keyids.open_ids([str(uuid.uuid4()), altered, made_up_v8]) == [None, None, None]
    with override_settings(KEY_ID_SECRETS={1: "another portal"}):
        assert keyids.open_ids([key_id]) == [None]


def test_backend_ids_pack_16_bytes_each_and_unpack_in_order():
    backend = [str(uuid.uuid4()) for _ in range(3)]
    packed = keyids.pack_backend_ids(",".join(backend))
    assert len(packed) == 48
    assert [keyids.backend_id(packed, i) for i in range(3)] == backend
