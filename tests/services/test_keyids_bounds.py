"""Key-ID edges the mutation run (make mutate) found untested: batch numbers at both ends of the PostgreSQL
bigint, and containers larger than a handful of keys (the numpy paths work on whole arrays)."""

from __future__ import annotations

import uuid

from django.test import override_settings

from services import keyids


def test_batch_numbers_span_exactly_1_to_the_largest_bigint(monkeypatch):
    assert keyids.MAX_BATCH == 2**63 - 1  # the batch column is a PostgreSQL bigint
    drawn = []

    def randbelow(n: int) -> int:
        drawn.append(n)
        return (0, n - 1)[len(drawn) - 1]

    monkeypatch.setattr(keyids.secrets, "randbelow", randbelow)
    lowest, highest = keyids.new_batch(), keyids.new_batch()
    assert (lowest, highest) == (1, keyids.MAX_BATCH) and drawn == [keyids.MAX_BATCH] * 2
    assert type(lowest) is int and type(highest) is int
    for batch in (lowest, highest):
        assert keyids.open_ids(keyids.seal(batch, 2)) == [(batch, 0), (batch, 1)]


def test_a_full_container_of_ids_round_trips_and_every_backend_id_unpacks():
    batch = keyids.new_batch()
    ids = keyids.seal(batch, 1024)
    assert len(ids) == len(set(ids)) == 1024 and all(str(uuid.UUID(k)) == k for k in ids)
    assert keyids.open_ids(ids) == [(batch, i) for i in range(1024)]
    assert keyids.seal(batch, 40, first=984) == ids[984:]
    backend = [str(uuid.uuid4()) for _ in range(40)]
    packed = keyids.pack_backend_ids(",".join(backend))
    assert [keyids.backend_id(packed, i) for i in range(40)] == backend


@override_settings(KEY_ID_SECRETS={1: "a fixed secret"})
def test_known_answers_keep_ids_already_handed_out_openable():
    """Fixed vectors: a change of the permutation (rounds, round-function input, bit layout) would make every ID
    a tenant holds unopenable, so its slave could no longer fetch keys its master was charged for."""
    known = {  # the versioned scheme: the first hex digit is the secret's version (1)
        (123456789, 7): "1987e7d2-7945-8182-8ce3-edc4178da1be",
        (123456789, 8): "1a22f28d-942f-8c37-84c1-e81aaed56145",
        (keyids.MAX_BATCH, 2**32 - 1): "19496018-1769-860b-8b5a-b9d99ea5e3a5",
    }
    assert keyids.seal(123456789, 2, first=7) == [known[(123456789, 7)], known[(123456789, 8)]]
    assert keyids.seal(keyids.MAX_BATCH, 1, first=2**32 - 1) == [known[(keyids.MAX_BATCH, 2**32 - 1)]]
    assert keyids.open_ids(list(known.values())) == list(known)
    unversioned = {  # sealed by the scheme before versions (KEY_ID_SECRET="a fixed secret"): they still open
        (123456789, 7): "3ea03005-a682-82fd-82d2-e5023d403831",
        (123456789, 8): "d984a95c-6af5-8b3f-8b42-9431b6b7af02",
        (keyids.MAX_BATCH, 2**32 - 1): "4c3b377a-2eef-8840-9fb4-04a30c0c6d98",
    }
    assert [keyids.seal_v1(*pair) for pair in unversioned] == list(unversioned.values())
    assert keyids.open_ids(list(unversioned.values())) == list(unversioned)


@override_settings(KEY_ID_SECRETS={1: "a fixed secret"})
def test_an_id_with_another_version_digit_does_not_open():
    key_id = keyids.seal(123456789, 1)[0]
    assert key_id[14] == "8"  # UUIDv8
    for digit in "04679acf":
        assert keyids.open_ids([key_id[:14] + digit + key_id[15:]]) == [None], digit
    # nor one whose variant is not RFC 9562's (the first hex digit of the fourth group: 8-b)
    assert key_id[19] in "89ab"
    for digit in "0357cdef":
        assert keyids.open_ids([key_id[:19] + digit + key_id[20:]]) == [None], digit
