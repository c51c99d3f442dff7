"""Consistency across restarts: keys delivered to a master survive a kill -9 of the twin on both ends."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import uuid

import requests


def test_kill_9_between_enc_keys_and_dec_keys(twin_factory):
    twin = twin_factory("madqci", time_scale=50.0)
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=10)
    relayed = twin.enc_keys("sae-cait-1", "sae-rectorado-1", number=5).json()["keys"]
    direct = twin.enc_keys("sae-cait-1", "sae-ccs-1", number=5).json()["keys"]

    twin.kill()
    twin.start()  # same state directory

    for slave, keys in (("sae-rectorado-1", relayed), ("sae-ccs-1", direct)):
        got = twin.dec_keys(slave, "sae-cait-1", [k["key_ID"] for k in keys])
        assert got.status_code == 200, got.text
        assert [k["key"] for k in got.json()["keys"]] == [k["key"] for k in keys]
        assert twin.dec_keys(slave, "sae-cait-1", [keys[0]["key_ID"]]).status_code == 400
    # The stores kept their link key too, and generation resumes.
    assert twin.wait_for_key("sae-cait-1", "sae-rectorado-1")["stored_key_count"] > 0


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_unconfirmed_transfers_are_resolved_with_the_next_node_after_a_crash(twin_factory):
    """Reproduce what kill -9 can leave in CAIT's store, then restart:

    (a) a transfer CCS stored but CAIT had not yet marked confirmed -> it stands, the slave gets its keys;
    (b) a transfer CAIT committed (link key taken) but never sent -> CCS tombstones it and frees that link key.
    """
    twin = twin_factory("madqci", time_scale=50.0)
    twin.wait_for_key("sae-cait-1", "sae-ccs-1", count=20)
    keys = twin.enc_keys("sae-cait-1", "sae-ccs-1", number=3).json()["keys"]
    twin.kill()

    cait = sqlite3.connect(twin.state_dir / "nodes" / "CAIT" / "store.sqlite")
    with cait:
        (sent,) = cait.execute("SELECT transfer_id FROM outbox ORDER BY created DESC LIMIT 1").fetchone()
        cait.execute("UPDATE outbox SET state = 'sending' WHERE transfer_id = ?", (sent,))
        # (b): take 96 bytes of CAIT's own cait-ccs key, as deliver() does, and "die" before sending.
        seq, used = cait.execute(
            "SELECT seq, used FROM link_blocks WHERE link_id = 'cait-ccs' AND owner = 'CAIT' AND used + 96 <= size "
            "ORDER BY seq LIMIT 1"
        ).fetchone()
        cait.execute("UPDATE link_blocks SET used = used + 96 WHERE link_id = 'cait-ccs' AND seq = ?", (seq,))
        lost = str(uuid.uuid4())
        cait.execute(
            "INSERT INTO outbox (transfer_id, next_node, link_id, refs, state, created) "
            "VALUES (?, 'CCS', 'cait-ccs', ?, 'sending', 0)",
            (lost, json.dumps([[seq, used, 96]])),
        )
    cait.close()

    twin.start()
    ccs_view = lambda: next(n for n in twin.topology_view()["nodes"] if n["id"] == "CCS")  # noqa: E731
    assert wait_until(lambda: ccs_view()["transfers_aborted"] == 1)
    got = twin.dec_keys("sae-ccs-1", "sae-cait-1", [k["key_ID"] for k in keys])
    assert got.status_code == 200 and [k["key"] for k in got.json()["keys"]] == [k["key"] for k in keys]

    twin.stop()
    ccs = sqlite3.connect(twin.state_dir / "nodes" / "CCS" / "store.sqlite")
    assert ccs.execute("SELECT state FROM inbox WHERE transfer_id = ?", (lost,)).fetchone() == ("aborted",)
    assert ccs.execute("SELECT state FROM inbox WHERE transfer_id = ?", (sent,)).fetchone() == ("received",)
    # CCS consumed the same 96 bytes CAIT took: the two ends of cait-ccs hold the same unconsumed ranges.
    (ccs_used,) = ccs.execute("SELECT used FROM link_blocks WHERE link_id = 'cait-ccs' AND seq = ?", (seq,)).fetchone()
    assert ccs_used >= used + 96
    cait = sqlite3.connect(twin.state_dir / "nodes" / "CAIT" / "store.sqlite")
    states = dict(cait.execute("SELECT transfer_id, state FROM outbox WHERE transfer_id IN (?, ?)", (sent, lost)))
    assert states == {sent: "done"}


def test_key_material_never_reaches_the_log(twin_factory):
    twin = twin_factory("madqci", time_scale=50.0, extra_args=("--log-level", "DEBUG"))
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1")
    keys = twin.enc_keys("sae-cait-1", "sae-rectorado-1", number=3).json()["keys"]
    twin.dec_keys("sae-rectorado-1", "sae-cait-1", [k["key_ID"] for k in keys])
    twin.admin("ccs-rectorado", "cut")  # a failing relay logs its error
    assert twin.enc_keys("sae-cait-1", "sae-rectorado-1").status_code == 503
    twin.stop()
    log = twin.log_path.read_text()
    for key in keys:
        assert key["key"] not in log
        assert base64.b64decode(key["key"]).hex() not in log


def test_kill_9_under_concurrent_traffic_loses_no_delivered_key(twin_factory):
    """Masters keep asking (direct and relayed) while the twin is killed: every key a master got must be
    fetchable, identical, by its slave after the restart; the links go on working (no end out of step)."""
    import threading

    twin = twin_factory("madqci", time_scale=50.0)
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=100)
    delivered: list[tuple[str, dict]] = []
    stop = threading.Event()

    def master(slave: str) -> None:
        with twin.session("sae-cait-1") as s:
            for _ in range(10_000):
                if stop.is_set():
                    return
                try:
                    r = s.post(f"{twin.url('CAIT')}/api/v1/keys/{slave}/enc_keys", json={"number": 2}, timeout=5)
                except requests.RequestException:
                    return  # the twin is gone
                if r.status_code == 200:
                    delivered.extend((slave, key) for key in r.json()["keys"])

    threads = [threading.Thread(target=master, args=(slave,)) for slave in ("sae-ccs-1", "sae-rectorado-1") * 2]
    for t in threads:
        t.start()
    # Kill once traffic is flowing (on a loaded machine the first requests may take a while; no timing assumed).
    deadline = time.monotonic() + 20
    while len(delivered) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    twin.kill()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(delivered) > 20

    twin.start()
    for slave in ("sae-ccs-1", "sae-rectorado-1"):
        keys = [key for s, key in delivered if s == slave]
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            got = twin.dec_keys(slave, "sae-cait-1", [k["key_ID"] for k in chunk])
            assert got.status_code == 200, got.text
            assert [k["key"] for k in got.json()["keys"]] == [k["key"] for k in chunk]
    for _ in range(20):  # both links still deliver: no block or range out of step between the two ends
        for slave in ("sae-ccs-1", "sae-rectorado-1"):
            keys = twin.enc_keys("sae-cait-1", slave, number=8).json()["keys"]
            got = twin.dec_keys(slave, "sae-cait-1", [k["key_ID"] for k in keys]).json()["keys"]
            assert [k["key"] for k in got] == [k["key"] for k in keys]


def test_private_keys_are_owner_only(twin_factory):
    twin = twin_factory("madqci")
    keys = list((twin.state_dir / "pki").glob("*.key"))
    assert len(keys) >= 1 + 3 + 5 + 1  # CA, KMEs, SAEs, portal
    for path in keys:
        assert path.stat().st_mode & 0o777 == 0o600, path
