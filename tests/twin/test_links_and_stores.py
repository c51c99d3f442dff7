"""Block producer, link generator, key stores and path choice, exercised in-process on real SQLite stores."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.sdqkd.physics.analytical import LinkParams, performance
from services.sdqkd.twin.keyids import key_ids, new_batch_id, split_key_id
from services.sdqkd.twin.link import LinkRuntime
from services.sdqkd.twin.producer import AnalyticalBlockProducer
from services.sdqkd.twin.routing import find_path
from services.sdqkd.twin.store import NodeStore, StoreInconsistency
from services.sdqkd.twin.topology import LinkSpec

PARAMS = LinkParams.from_mapping({"technology": "dv-bb84-decoy", "length_km": 20.0})


def spec(link_id="a-b", a="A", b="B", capacity=1 << 20, block=8192) -> LinkSpec:
    return LinkSpec(link_id, (a, b), "dv-bb84-decoy", PARAMS, capacity, block)


def test_producer_follows_the_model_rate_and_time_scale():
    producer = AnalyticalBlockProducer(PARAMS, 8192, time_scale=10.0)
    skr = performance(PARAMS).secret_key_rate_bps
    assert producer.seconds_per_block() == pytest.approx(8192 / (skr * 10.0))
    block = producer.next_block()
    assert len(block.key) == 1024 and block.telemetry["qber"] == performance(PARAMS).qber
    assert producer.next_block().key != block.key
    producer.set_params(PARAMS.with_changes(total_loss_db=30.0))
    assert producer.seconds_per_block() > 10 * 8192 / (skr * 10.0)
    producer.set_params(PARAMS.with_changes(total_loss_db=150.0))  # beyond the cut-off: no key at all
    assert producer.seconds_per_block() == float("inf")


def run_link(tmp_path, capacity, seconds, time_scale=1000.0):
    stores = {n: NodeStore(tmp_path / f"{n}.sqlite", n) for n in ("A", "B")}

    async def main():
        link = LinkRuntime(spec(capacity=capacity), AnalyticalBlockProducer(PARAMS, 8192, time_scale), stores)
        link.start()
        await asyncio.sleep(seconds)
        await link.stop()
        return link

    return asyncio.run(main()), stores


def test_both_ends_get_identical_blocks_up_to_capacity(tmp_path):
    link, stores = run_link(tmp_path, capacity=64 * 8192, seconds=0.5)
    query = "SELECT seq, owner, key FROM link_blocks ORDER BY seq"
    rows = {n: s.db.execute(query).fetchall() for n, s in stores.items()}
    assert rows["A"] == rows["B"] and len(rows["A"]) == 64 == link.blocks_produced  # full: generation paused
    assert {owner for _, owner, _ in rows["A"]} == {"A", "B"}  # blocks alternate between the ends
    assert stores["A"].fill_bytes("a-b") * 8 == 64 * 8192
    assert stores["A"].available_bytes("a-b") == stores["B"].available_bytes("a-b") == 32 * 1024


def test_allocate_at_the_owner_matches_consume_at_the_other_end(tmp_path):
    _, stores = run_link(tmp_path, capacity=16 * 8192, seconds=0.3)
    a, b = stores["A"], stores["B"]
    with a.transaction() as tx:
        sent, refs = tx.allocate("a-b", 1500)  # spans two blocks of 1024 bytes
    assert len(refs) == 2 and a.available_bytes("a-b") == 8 * 1024 - 1500
    with b.transaction() as tx:
        assert tx.consume("a-b", refs) == sent
    with pytest.raises(LookupError), a.transaction() as tx:
        tx.allocate("a-b", 8 * 1024)
    assert a.available_bytes("a-b") == 8 * 1024 - 1500  # the failed transaction changed nothing
    with b.transaction() as tx:  # B never consumes its own blocks' ranges as if they were the peer's
        own = tx.allocate("a-b", 10)[1]
    with pytest.raises(StoreInconsistency), b.transaction() as tx:
        tx.consume("a-b", own)
    with a.transaction() as tx:
        tx.drain("a-b")
    assert a.fill_bytes("a-b") == 0


def test_stores_survive_reopening(tmp_path):
    _, stores = run_link(tmp_path, capacity=16 * 8192, seconds=0.3)
    before = stores["A"].available_bytes("a-b")
    batch_id = new_batch_id()
    with stores["A"].transaction() as tx:
        tx.put_batch(batch_id, "t1", "sae-a", ["sae-b"], 32, b"\x01" * 32 + b"\x02" * 32, {"hops": 1})
        tx.bump("keys_delivered", 2)
    stores["A"].close()
    reopened = NodeStore(tmp_path / "A.sqlite", "A")
    assert reopened.available_bytes("a-b") == before and reopened.counters["keys_delivered"] == 2
    with reopened.transaction() as tx:
        batch = tx.get_batches({batch_id})[batch_id]
        assert (batch.count, batch.key(1), batch.extension) == (2, b"\x02" * 32, {"hops": 1})
        batch.mark_fetched("sae-b", 0)
        tx.save_batch(batch_id, batch)
    with reopened.transaction() as tx:
        batch = tx.get_batches({batch_id})[batch_id]
        assert batch.was_fetched("sae-b", 0) and not batch.was_fetched("sae-b", 1)
        batch.mark_fetched("sae-b", 1)
        tx.save_batch(batch_id, batch)  # every key delivered to every slave: the batch goes
    assert not reopened.has_batch(batch_id)


def test_key_ids_are_uuids_derived_from_the_batch():
    batch_id = new_batch_id()
    ids = key_ids(batch_id, 3)
    assert len(set(ids)) == 3
    for index, key_id in enumerate(ids):
        parsed = uuid.UUID(key_id)
        assert str(parsed) == key_id and parsed.version == 8 and parsed.variant == uuid.RFC_4122
        assert split_key_id(key_id) == (batch_id, index)
    assert new_batch_id() != batch_id


class FakeLink(LinkRuntime):
    """Routing only reads state and availability; real stores are not needed to rank paths."""

    def __init__(self, link_id, a, b, available, up=True, capacity=1 << 20):
        self.spec = spec(link_id, a, b, capacity=capacity)
        self.id = link_id
        self.state = "up" if up else "cut"
        self._available = available

    def available_bits(self, sender):
        return self._available


def test_path_prefers_fewest_hops_then_more_key_and_skips_cut_or_empty_links():
    links = {
        "a-b": FakeLink("a-b", "A", "B", 1000),
        "b-d": FakeLink("b-d", "B", "D", 1000),
        "a-c": FakeLink("a-c", "A", "C", 900_000),
        "c-d": FakeLink("c-d", "C", "D", 900_000),
        "a-d": FakeLink("a-d", "A", "D", 10, up=True),
    }
    assert find_path(links, "A", "D", 8).nodes == ("A", "D")  # direct wins even when nearly empty
    assert find_path(links, "A", "D", 512).nodes == ("A", "C", "D")  # fuller of two 2-hop paths
    links["a-c"].state = "cut"
    assert find_path(links, "A", "D", 512).links == ("a-b", "b-d")
    assert find_path(links, "A", "D", 5000) is None
