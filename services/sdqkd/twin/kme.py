"""A node's KME: ETSI GS QKD 014 key delivery and trusted-node key relay between KMEs.

Key delivery to a slave SAE at another node is a *transfer*: the master's KME sends the keys towards the
slave's KME along a path of QKD links. On each hop the sender takes fresh link key it owns (see store.py):
32 bytes as a one-time HMAC-SHA256 key, and as many bytes as the keys as a one-time pad. A direct neighbour
gets the link key itself (nothing but key IDs and block references travel); a relayed key is a fresh key from
the entropy source, XOR-encrypted hop by hop. Every node on the path sees the key (trusted nodes).

Commit order (crash safety): a sender commits [link key taken + outbox row 'sending'] before it sends; the
receiver commits [link key consumed + key stored or forwarded + inbox row] before it answers. Nothing else is
needed on the fast path: the sender marks its row 'done' lazily, in batches. After a crash, every row still
'sending' is *resolved* with the next node: if that node has the transfer, it stands ('done'); if not, the
next node records a tombstone (a late copy is refused) and frees the named link key, and the row goes. A
transfer that fails while running is *aborted*: the abort goes down the path, each node deletes what it stored
and leaves a tombstone. Both ends of every hop therefore agree on every key ID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .. import etsi014_spec as etsi014
from .errors import BadRequest, KeyUnavailable, TwinError, Unauthorized
from .keyids import derived_batch_id, key_ids, new_batch_id, split_key_id
from .link import LinkRuntime
from .routing import Path, find_path
from .store import NodeStore, StoreInconsistency
from .topology import Topology

log = logging.getLogger("twin.kme")

MAC_BYTES = 32  # one-time HMAC-SHA256 key taken from the link key on every hop
LOCAL_KEY_REQUESTS = 64  # same-node pairs: stored_key_count announced as this many full requests
SUPPORTED_MANDATORY_EXTENSIONS: frozenset[str] = frozenset()


class PeerError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"peer answered {status}: {body}")
        self.status = status
        self.body = body


class Peers(Protocol):
    """Node-to-node interface (HTTPS with node certificates)."""

    async def post(self, node_id: str, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class KeyRequest:
    number: int
    size_bits: int
    additional_slaves: list[str]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _mac(key: bytes, header: Mapping[str, Any], refs: list, ciphertext: bytes) -> bytes:
    data = json.dumps([header, refs], sort_keys=True, separators=(",", ":")).encode() + ciphertext
    return hmac.new(key, data, hashlib.sha256).digest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def chunk_batch_id(stream_id: str, index: int) -> bytes:
    """The batch (of one key) holding chunk ``index`` of an ETSI 004 key stream: the same at both peers."""
    return derived_batch_id(stream_id, f"chunk-{index}")


def chunk_key_id(stream_id: str, index: int) -> str:
    return key_ids(chunk_batch_id(stream_id, index), 1)[0]


class HopChannel:
    """Transfers to one neighbour KME. Messages that queue up while a request is in flight go together in the
    next request (``POST /twin/v1/transfers``): under load one HTTPS exchange carries many transfers; alone, a
    transfer goes at once."""

    MAX_IN_FLIGHT = 2
    MAX_BATCH = 256

    def __init__(self, peers: Peers, node_id: str):
        self.peers = peers
        self.node_id = node_id
        self.queue: list[tuple[dict[str, Any], asyncio.Future]] = []
        self.in_flight = 0

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((message, future))
        if self.in_flight < self.MAX_IN_FLIGHT:
            self.in_flight += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[: self.MAX_BATCH], self.queue[self.MAX_BATCH :]
                try:
                    answer = await self.peers.post(
                        self.node_id, "/twin/v1/transfers", {"transfers": [message for message, _ in batch]}
                    )
                    results = answer["results"]
                    if len(results) != len(batch):
                        raise PeerError(502, "result count mismatch")
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if result["status"] == 200:
                        future.set_result(result["body"])
                    else:
                        future.set_exception(PeerError(result["status"], result["body"]))
        finally:
            self.in_flight -= 1


class KME:
    def __init__(
        self,
        node_id: str,
        topology: Topology,
        store: NodeStore,
        links: Mapping[str, LinkRuntime],
        peers: Peers,
    ):
        self.id = node_id
        self.topology = topology
        self.store = store
        self.links = links
        self.peers = peers
        self.limits = topology.kme
        self._reconcile_wake = asyncio.Event()
        self._completed: list[str] = []  # transfers confirmed by the next node, to be marked 'done' in a batch
        self._reconcile_task: asyncio.Task | None = None
        self._hops: dict[str, HopChannel] = {}

    def _hop(self, next_node: str) -> HopChannel:
        channel = self._hops.get(next_node)
        if channel is None:
            channel = self._hops[next_node] = HopChannel(self.peers, next_node)
        return channel

    # -- identities --------------------------------------------------------------------------------------
    def require_local_sae(self, sae_id: str | None) -> str:
        sae = self.topology.saes.get(sae_id or "")
        if sae is None or sae.node != self.id:
            raise Unauthorized("the caller is not an SAE of this KME", [{"SAE_ID": sae_id}])
        return sae.id

    def _known_sae(self, sae_id: str, field: str) -> str:
        if sae_id not in self.topology.saes:
            raise BadRequest(f"unknown {field}", [{field: sae_id}])
        return sae_id

    def _check_master_slave(self, master_sae: str, slave_sae: str) -> None:
        """ETSI 014 master side: the caller is a local SAE, the slave a different known one."""
        self.require_local_sae(master_sae)
        self._known_sae(slave_sae, "slave_SAE_ID")
        if slave_sae == master_sae:
            raise BadRequest("master and slave SAE must differ", [{"slave_SAE_ID": slave_sae}])

    # -- ETSI 014: status --------------------------------------------------------------------------------
    def status(self, master_sae: str, slave_sae: str) -> dict[str, Any]:
        self._check_master_slave(master_sae, slave_sae)
        slave_node = self.topology.saes[slave_sae].node
        key_size = self.limits["key_size"]
        if slave_node == self.id:
            # Both SAEs on this node: keys come from the entropy source, no link store bounds them.
            stored = max_count = self.limits["max_key_per_request"] * LOCAL_KEY_REQUESTS
        else:
            path = find_path(self.links, self.id, slave_node, key_size + 8 * MAC_BYTES)
            stored = self._path_key_count(path, key_size) if path else 0
            links = path.links if path else [link.id for link in self.topology.links_of(self.id)]
            # A sender owns at most about half of a link's store (see store.py).
            max_count = min((self.links[link].capacity_bits() // 2 for link in links), default=0) // key_size
        return {
            "source_KME_ID": self.id,
            "target_KME_ID": slave_node,
            "master_SAE_ID": master_sae,
            "slave_SAE_ID": slave_sae,
            "key_size": key_size,
            "stored_key_count": stored,
            "max_key_count": max_count,
            "max_key_per_request": self.limits["max_key_per_request"],
            "max_key_size": self.limits["max_key_size"],
            "min_key_size": self.limits["min_key_size"],
            "max_SAE_ID_count": self.limits["max_SAE_ID_count"],
        }

    def _path_key_count(self, path: Path, key_size: int) -> int:
        counts = []
        for sender, link_id in zip(path.nodes, path.links, strict=False):
            available = self.links[link_id].available_bits(sender)
            if available is not None:
                counts.append(max(0, available - 8 * MAC_BYTES) // key_size)
        return min(counts) if counts else 0

    # -- ETSI 014: request validation --------------------------------------------------------------------
    def parse_key_request(self, body: Any, master_sae: str, slave_sae: str) -> KeyRequest:
        try:
            fields = etsi014.key_request_fields(body)
        except etsi014.Etsi014Error as exc:
            raise BadRequest(exc.message, exc.details) from None
        number = 1 if fields.number is None else fields.number
        size = self.limits["key_size"] if fields.size is None else fields.size
        if _is_int(size) and size % 8:
            raise BadRequest(etsi014.SIZE_NOT_MULTIPLE_OF_8, [{"size": size}])
        unsupported = etsi014.unsupported_mandatory(fields.extension_mandatory, SUPPORTED_MANDATORY_EXTENSIONS)
        if unsupported:
            raise BadRequest(etsi014.EXTENSION_UNSUPPORTED, [{etsi014.EXTENSION_UNSUPPORTED_KEY: unsupported}])
        details: list[dict[str, Any]] = []
        if not _is_int(number) or not 1 <= number <= self.limits["max_key_per_request"]:
            details.append({"number": number, "reason": f"must be 1..{self.limits['max_key_per_request']}"})
        if not _is_int(size):
            details.append({"size": size, "reason": "must be an integer number of bits"})
        elif not self.limits["min_key_size"] <= size <= self.limits["max_key_size"]:
            details.append(
                {"size": size, "reason": f"must be {self.limits['min_key_size']}..{self.limits['max_key_size']} bits"}
            )
        additional = fields.additional_slave_SAE_IDs
        if len(additional) > self.limits["max_SAE_ID_count"]:
            details.append(
                {"additional_slave_SAE_IDs": additional, "reason": f"at most {self.limits['max_SAE_ID_count']}"}
            )
        else:
            for sae in additional:
                if sae not in self.topology.saes:
                    details.append({"additional_slave_SAE_IDs": sae, "reason": "unknown SAE"})
            if len({slave_sae, *additional}) != len(additional) + 1 or master_sae in additional:
                details.append({"additional_slave_SAE_IDs": additional, "reason": "duplicate or master SAE"})
        if details:
            raise BadRequest("invalid key request", details)
        return KeyRequest(number, size, list(additional))

    # -- ETSI 014: enc_keys (master side) ----------------------------------------------------------------
    async def enc_keys(self, master_sae: str, slave_sae: str, body: Any) -> dict[str, Any]:
        self._check_master_slave(master_sae, slave_sae)
        request = self.parse_key_request(body, master_sae, slave_sae)
        batch_id = new_batch_id()
        key_bytes = request.size_bits // 8
        secret, extension = await self.deliver(
            master_sae, [slave_sae, *request.additional_slaves], batch_id, request.number, key_bytes
        )
        b64 = base64.b64encode
        return {
            "keys": [
                {"key_ID": kid, "key": b64(secret[i * key_bytes : (i + 1) * key_bytes]).decode(),
                 "key_ID_extension": extension}
                for i, kid in enumerate(key_ids(batch_id, request.number))
            ]
        }

    async def deliver(
        self, master_sae: str, slaves: list[str], batch_id: bytes, count: int, key_bytes: int
    ) -> tuple[bytes, dict[str, Any]]:
        """Make a batch of ``count`` keys known to the master and at every slave's KME; returns the keys (one
        bytes string) and the key_ID_extension. Raises 503 (KeyUnavailable) when it cannot."""
        by_node: dict[str, list[str]] = defaultdict(list)
        for sae in slaves:
            by_node[self.topology.saes[sae].node].append(sae)
        total = key_bytes * count
        remote = [node for node in by_node if node != self.id]
        paths: dict[str, Path] = {}
        for node in remote:
            path = find_path(self.links, self.id, node, 8 * (total + MAC_BYTES))
            if path is None:
                raise KeyUnavailable(
                    "no path with enough key to the slave SAE's KME",
                    [{"target_KME_ID": node, "key_bits_needed": 8 * total}],
                )
            paths[node] = path
        # A single direct neighbour gets the link key itself; otherwise a fresh key is relayed.
        direct = len(by_node) == 1 and len(remote) == 1 and paths[remote[0]].hops == 1
        secret = b"" if direct else self.entropy(total)  # relayed: a fresh key from the node's QRNG
        extension = self._route_extension(paths)
        outgoing = []
        try:
            with self.store.transaction() as tx:
                for node in remote:
                    path = paths[node]
                    material, refs = tx.allocate(path.links[0], MAC_BYTES + total)
                    if direct:
                        secret = material[MAC_BYTES:]
                    transfer_id = str(uuid.uuid4())
                    tx.add_outbox(transfer_id, path.nodes[1], path.links[0], refs)
                    header = {
                        "transfer_id": transfer_id,
                        "path": list(path.nodes),
                        "links": list(path.links),
                        "hop": 0,
                        "master_SAE_ID": master_sae,
                        "slave_SAE_IDs": by_node[node],
                        "batch_id": batch_id.hex(),
                        "count": count,
                        "key_bytes": key_bytes,
                        "mode": "link" if direct else "otp",
                    }
                    ciphertext = b"" if direct else _xor(secret, material[MAC_BYTES:])
                    message = {
                        "header": header,
                        "refs": refs,
                        "ciphertext": base64.b64encode(ciphertext).decode(),
                        "mac": base64.b64encode(_mac(material[:MAC_BYTES], header, refs, ciphertext)).decode(),
                    }
                    outgoing.append((transfer_id, path, message))
                local_transfer = str(uuid.uuid4())
                if self.id in by_node:
                    tx.put_batch(batch_id, local_transfer, master_sae, by_node[self.id], key_bytes, secret, extension)
                tx.bump("keys_delivered", count)
        except LookupError as exc:
            raise KeyUnavailable("not enough key on the first hop", [{"reason": str(exc)}]) from exc
        for _, path, _ in outgoing:
            self.links[path.links[0]].note_consumed(MAC_BYTES + total)

        results = await asyncio.gather(
            *(self._hop(path.nodes[1]).send(msg) for _, path, msg in outgoing),
            return_exceptions=True,
        )
        failures = [(path, r) for (_, path, _), r in zip(outgoing, results, strict=True) if isinstance(r, Exception)]
        if failures:
            with self.store.transaction() as tx:
                for transfer_id, _, _ in outgoing:
                    tx.set_outbox_state(transfer_id, "aborting")
                tx.delete_transfer_keys(local_transfer)
                tx.bump("keys_delivered", -count)
            self._reconcile_wake.set()
            for path, exc in failures:
                log.warning("transfer along %s failed: %s", "-".join(path.nodes), exc)
            raise KeyUnavailable(
                "key relay failed",
                [{"path": list(path.nodes), "error": getattr(exc, "body", str(exc))} for path, exc in failures],
            )
        self._completed.extend(transfer_id for transfer_id, _, _ in outgoing)
        return secret, extension

    @staticmethod
    def _route_extension(paths: Mapping[str, Path]) -> dict[str, Any]:
        if not paths:
            return {"hops": 0, "path": []}
        if len(paths) == 1:
            (path,) = paths.values()
            return {"hops": path.hops, "path": list(path.nodes)}
        return {
            "hops": max(p.hops for p in paths.values()),
            "paths": {node: list(p.nodes) for node, p in paths.items()},
        }

    # -- ETSI 014: dec_keys (slave side) -----------------------------------------------------------------
    @staticmethod
    def parse_key_ids(body: Any, limit: int) -> list[str]:
        if not isinstance(body, dict) or not isinstance(body.get("key_IDs"), list) or not body["key_IDs"]:
            raise BadRequest("key_IDs must be a non-empty list of {key_ID}")
        if len(body["key_IDs"]) > limit:
            raise BadRequest("too many key IDs", [{"max_key_per_request": limit}])
        ids = []
        for item in body["key_IDs"]:
            key_id = item.get("key_ID") if isinstance(item, dict) else None
            try:
                ids.append(str(uuid.UUID(key_id)))
            except (TypeError, ValueError, AttributeError):
                raise BadRequest("key_ID is not a UUID", [{"key_ID": key_id}]) from None
        if len(set(ids)) != len(ids):
            raise BadRequest("duplicate key_ID in request")
        return ids

    def dec_keys(self, slave_sae: str, master_sae: str, body: Any) -> dict[str, Any]:
        self.require_local_sae(slave_sae)
        self._known_sae(master_sae, "master_SAE_ID")
        requested = self.parse_key_ids(body, self.limits["max_key_per_request"])
        wanted = [(key_id, *split_key_id(key_id)) for key_id in requested]
        with self.store.transaction() as tx:
            batches = tx.get_batches({batch_id for _, batch_id, _ in wanted})
            not_found, not_yours = [], []
            for key_id, batch_id, index in wanted:
                batch = batches.get(batch_id)
                if batch is None or batch.master_sae != master_sae or index >= batch.count:
                    not_found.append({"key_ID": key_id, "reason": "unknown or already delivered"})
                elif slave_sae not in batch.slaves:
                    not_yours.append({"key_ID": key_id, "reason": "not issued for this SAE"})
                elif batch.was_fetched(slave_sae, index):
                    not_found.append({"key_ID": key_id, "reason": "already delivered to this SAE"})
            if not_yours:
                raise Unauthorized("key not issued for the calling SAE", not_yours)
            if not_found:
                raise BadRequest(etsi014.KEYS_NOT_FOUND, not_found)
            for _, batch_id, index in wanted:
                batches[batch_id].mark_fetched(slave_sae, index)
            for batch_id, batch in batches.items():
                tx.save_batch(batch_id, batch)
            tx.bump("keys_delivered", len(wanted))
        out = []
        for key_id, batch_id, index in wanted:
            batch = batches[batch_id]
            entry: dict[str, Any] = {"key_ID": key_id, "key": base64.b64encode(batch.key(index)).decode()}
            if batch.extension is not None:
                entry["key_ID_extension"] = batch.extension
            out.append(entry)
        return {"keys": out}

    # -- node-to-node: transfers -------------------------------------------------------------------------
    async def receive_transfer(self, prev_node: str, message: dict[str, Any]) -> dict[str, Any]:
        try:
            header = message["header"]
            transfer_id = str(uuid.UUID(header["transfer_id"]))
            hop = int(header["hop"])
            path, links = header["path"], header["links"]
            refs = [tuple(int(x) for x in r) for r in message["refs"]]
            ciphertext = base64.b64decode(message["ciphertext"])
            mac = base64.b64decode(message["mac"])
            key_bytes = int(header["key_bytes"])
            count = int(header["count"])
            batch_id = bytes.fromhex(header["batch_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest("malformed transfer", [{"error": str(exc)}]) from exc
        if not (0 <= hop < len(links) and len(path) == len(links) + 1 and path[hop] == prev_node
                and path[hop + 1] == self.id):
            raise BadRequest("transfer not addressed to this hop")
        link_in = self.links.get(links[hop])
        if link_in is None or set(link_in.spec.endpoints) != {prev_node, self.id}:
            raise BadRequest("no such link between these nodes")
        if self.store.inbox_state(transfer_id) is not None:
            raise BadRequest("transfer already seen (replayed or aborted)", [{"transfer_id": transfer_id}])
        is_destination = hop + 1 == len(links)
        payload_bytes = key_bytes * count
        try:
            with self.store.transaction() as tx:
                material = tx.consume(link_in.id, refs)
                if len(material) != MAC_BYTES + payload_bytes or len(ciphertext) not in (0, payload_bytes):
                    raise BadRequest("transfer size mismatch")
                if not hmac.compare_digest(_mac(material[:MAC_BYTES], header, message["refs"], ciphertext), mac):
                    raise Unauthorized("hop authentication failed")
                pad = material[MAC_BYTES:]
                secret = pad if header["mode"] == "link" else _xor(ciphertext, pad)
                if is_destination:
                    extension = {"hops": len(links), "path": list(path)}
                    tx.put_batch(batch_id, transfer_id, header["master_SAE_ID"], list(header["slave_SAE_IDs"]),
                                 key_bytes, secret, extension)
                    tx.set_inbox(transfer_id, prev_node, "received")
                    tx.bump("keys_received", count)
                    return {"transfer_id": transfer_id, "stored": count}
                next_node, link_out = path[hop + 2], links[hop + 1]
                if link_out not in self.links or not self.links[link_out].is_up():
                    raise KeyUnavailable("next hop link is down", [{"link": link_out}])
                material_out, refs_out = tx.allocate(link_out, MAC_BYTES + payload_bytes)
                tx.add_outbox(transfer_id, next_node, link_out, refs_out)
                tx.set_inbox(transfer_id, prev_node, "received", next_node)
                tx.bump("relay_hops")
        except LookupError as exc:
            raise KeyUnavailable("not enough key on the next hop", [{"reason": str(exc)}]) from exc
        except StoreInconsistency as exc:
            raise KeyUnavailable("link key out of step", [{"reason": str(exc)}]) from exc
        except sqlite3.IntegrityError as exc:
            raise BadRequest("batch already stored here", [{"batch_id": batch_id.hex()}]) from exc
        self.links[link_out].note_consumed(MAC_BYTES + payload_bytes)
        forward_header = {**header, "hop": hop + 1}
        forward_ct = _xor(secret, material_out[MAC_BYTES:])
        forward_refs = [list(r) for r in refs_out]
        forward = {
            "header": forward_header,
            "refs": forward_refs,
            "ciphertext": base64.b64encode(forward_ct).decode(),
            "mac": base64.b64encode(_mac(material_out[:MAC_BYTES], forward_header, forward_refs, forward_ct)).decode(),
        }
        try:
            result = await self._hop(next_node).send(forward)
        except Exception as exc:
            with self.store.transaction() as tx:
                tx.set_outbox_state(transfer_id, "aborting")
                # Dead here too: a later abort from upstream is a no-op, a resolve answers "not kept".
                tx.set_inbox(transfer_id, prev_node, "aborted")
            self._reconcile_wake.set()
            error = getattr(exc, "body", str(exc))
            raise KeyUnavailable("relay to the next node failed", [{"node": next_node, "error": error}]) from exc
        self._completed.append(transfer_id)
        return result

    async def receive_transfers(self, prev_node: str, body: Any) -> dict[str, Any]:
        """A batch of hop messages from one neighbour; each succeeds or fails on its own."""
        messages = body.get("transfers") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            raise BadRequest("transfers must be a non-empty list")

        async def one(message: Any) -> dict[str, Any]:
            try:
                return {"status": 200, "body": await self.receive_transfer(prev_node, message)}
            except TwinError as exc:
                return {"status": exc.status, "body": exc.body()}
            except Exception as exc:
                log.exception("node %s: transfer from %s failed", self.id, prev_node)
                return {"status": 503, "body": {"message": f"server side error: {type(exc).__name__}"}}

        return {"results": list(await asyncio.gather(*(one(m) for m in messages)))}

    @staticmethod
    def _parse_settle(message: Any, what: str) -> tuple[str, str, list]:
        """(transfer_id, link_id, refs) of an abort or resolve message."""
        try:
            return (
                str(uuid.UUID(message["transfer_id"])),
                str(message["link_id"]),
                [tuple(int(x) for x in r) for r in message["refs"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"malformed {what}", [{"error": str(exc)}]) from exc

    async def receive_abort(self, prev_node: str, message: dict[str, Any]) -> dict[str, Any]:
        transfer_id, link_id, refs = self._parse_settle(message, "abort")
        state = self.store.inbox_state(transfer_id)
        with self.store.transaction() as tx:
            if state is None:
                # Never arrived (or arrived and rolled back): forget those link bits, refuse a late copy.
                tx.release(link_id, refs)
                tx.set_inbox(transfer_id, prev_node, "aborted")
                tx.bump("transfers_aborted")
            elif state[0] == "received":
                removed = tx.delete_transfer_keys(transfer_id)
                tx.set_inbox(transfer_id, prev_node, "aborted")
                tx.bump("transfers_aborted")
                if removed:
                    tx.bump("keys_received", -removed)
                if state[1] is not None:  # this node forwarded it: pass the abort on
                    tx.db.execute(
                        "UPDATE outbox SET state = 'aborting' WHERE transfer_id = ? "
                        "AND state IN ('sending', 'done', 'resolving')",
                        (transfer_id,),
                    )
        self._reconcile_wake.set()
        return {"transfer_id": transfer_id, "aborted": True}

    async def receive_resolve(self, prev_node: str, message: dict[str, Any]) -> dict[str, Any]:
        """The previous node restarted with this transfer unconfirmed: keep it if it arrived, else tombstone it."""
        transfer_id, link_id, refs = self._parse_settle(message, "resolve")
        with self.store.transaction() as tx:
            state = tx.inbox_state(transfer_id)
            if state is None:
                tx.release(link_id, refs)
                tx.set_inbox(transfer_id, prev_node, "aborted")
                tx.bump("transfers_aborted")
                return {"transfer_id": transfer_id, "kept": False}
        return {"transfer_id": transfer_id, "kept": state[0] == "received"}

    # -- background: resolve, abort, mark done ----------------------------------------------------------------------
    def start(self) -> None:
        recovered = self.store.recover_after_restart()
        if recovered:
            log.warning("node %s: %d transfer(s) interrupted by a restart will be aborted", self.id, recovered)
        self._reconcile_task = asyncio.create_task(self._reconcile_loop(), name=f"reconcile-{self.id}")

    async def stop(self) -> None:
        self.flush_completed()
        if self._reconcile_task:
            self._reconcile_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconcile_task

    def flush_completed(self) -> None:
        if self._completed:
            done, self._completed = self._completed, []
            with self.store.transaction() as tx:
                tx.mark_done(done)

    async def _reconcile_loop(self) -> None:
        next_cleanup = time.monotonic() + 3600
        while True:
            self.flush_completed()
            if time.monotonic() > next_cleanup:
                self.store.forget_settled_transfers()
                next_cleanup = time.monotonic() + 3600
            for transfer_id, next_node, link_id, refs, state in self.store.outbox_to_settle():
                body = {"transfer_id": transfer_id, "link_id": link_id, "refs": [list(r) for r in refs]}
                try:
                    if state == "aborting":
                        await self.peers.post(next_node, "/twin/v1/abort", body)
                        with self.store.transaction() as tx:
                            tx.remove_outbox(transfer_id)
                    else:
                        kept = (await self.peers.post(next_node, "/twin/v1/resolve", body))["kept"]
                        with self.store.transaction() as tx:
                            if kept:
                                tx.db.execute(
                                    "UPDATE outbox SET state = 'done' WHERE transfer_id = ? AND state = 'resolving'",
                                    (transfer_id,),
                                )
                            else:
                                tx.remove_outbox(transfer_id)
                except Exception as exc:  # the neighbour is down: retry later
                    log.info("%s of %s at %s pending: %s", state, transfer_id, next_node, exc)
            self._reconcile_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_wake.wait(), 0.2)

    # -- entropy -----------------------------------------------------------------------------------------
    @staticmethod
    def entropy(nbytes: int) -> bytes:
        """The twin's simulated QRNG (os.urandom), labelled simulated wherever it is served."""
        return os.urandom(nbytes)


__all__ = ["KME", "PeerError", "Peers", "TwinError", "chunk_batch_id", "chunk_key_id"]
