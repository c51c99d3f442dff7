"""ETSI GS QKD 004 V2.1.1 key streams, exposed as REST the way the Madrid SD-QKD stack does it:
``POST /api/open_connect``, ``GET /api/get_key``, ``POST /api/close``.

The initiating application's KME owns the stream: it makes every chunk, as a key transfer (see kme.py) to the
peer application's KME, under a key ID derived from (Key_stream_ID, index). So both peers asking for the same
index get the same bytes, whichever asks first. Streams live in memory; chunks already made are persisted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .. import etsi004_spec as spec
from ..etsi004_spec import (
    INSUFFICIENT_KEY,
    KSID_IN_USE,
    METADATA_TOO_SMALL,
    NO_QKD_CONNECTION,
    PEER_NOT_CONNECTED,
    PEER_NOT_YET_CONNECTED,
    QOS_NOT_MET,
    SUCCESSFUL,
    TIMEOUT,
)
from .errors import BadRequest, KeyUnavailable, Unauthorized
from .kme import KME, PeerError, chunk_batch_id, chunk_key_id
from .routing import find_path

log = logging.getLogger("twin.etsi004")

CLOSED_REMEMBERED = 10_000  # ended streams whose applications still get status 4 (oldest forgotten first)
LOCAL_CAPACITY_BPS = 1e9  # both applications on one node: key comes from the entropy source


def sae_from_uri(uri: Any, field: str = "source") -> str:
    try:
        return spec.sae_from_uri(uri, field)
    except spec.Etsi004Error as exc:
        raise BadRequest(exc.message, exc.details) from None


def read(body: Any, fields: tuple[str, ...], call: str) -> dict[str, Any]:
    try:
        return spec.read_call(body, fields, call)
    except spec.Etsi004Error as exc:
        raise BadRequest(exc.message, exc.details) from None


@dataclass
class KeyStream:
    id: str
    source_sae: str  # the initiating application
    destination_sae: str
    owner_node: str  # KME of the initiator; makes the chunks
    qos: dict[str, Any]
    expires: float
    joined: bool = False
    next_index: dict[str, int] = field(default_factory=dict)  # per application
    made: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KeyStreams:
    def __init__(self, kme: KME, time_scale: float):
        self.kme = kme
        self.time_scale = time_scale
        self.streams: dict[str, KeyStream] = {}
        # Ended streams (closed, TTL passed) -> their two applications, so a late call gets status 4, not a 400.
        self.ended: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def _end(self, stream: KeyStream) -> None:
        self.streams.pop(stream.id, None)
        self.ended[stream.id] = (stream.source_sae, stream.destination_sae)
        while len(self.ended) > CLOSED_REMEMBERED:
            self.ended.popitem(last=False)

    def _ended_answer(self, caller: str, ksid: Any) -> dict[str, Any]:
        """A call naming a stream that is not open here: status 4 to its applications, 401 to other SAEs that
        name an ended stream, 400 for an unknown ID."""
        members = self.ended.get(str(ksid))
        if members is None:
            raise BadRequest("unknown Key_stream_ID", [{"Key_stream_ID": ksid}])
        if caller not in members:
            raise Unauthorized("the caller is not an application of this key stream")
        return {"status": spec.STREAM_GONE, "Key_stream_ID": str(ksid), "message": "key stream closed"}

    # -- QoS ---------------------------------------------------------------------------------------------
    def path_capacity_bps(self, destination_node: str) -> float | None:
        """Secret key rate the best path delivers (slowest hop), or None when no path is up."""
        if destination_node == self.kme.id:
            return LOCAL_CAPACITY_BPS
        path = find_path(self.kme.links, self.kme.id, destination_node, 0)
        if path is None:
            return None
        return min(
            self.kme.links[link].producer.performance().secret_key_rate_bps * self.time_scale for link in path.links
        )

    @staticmethod
    def _qos(raw: Any) -> dict[str, Any]:
        try:
            return spec.validate_qos(raw)
        except spec.Etsi004Error as exc:
            raise BadRequest(exc.message, exc.details) from None

    # -- OPEN_CONNECT ------------------------------------------------------------------------------------
    async def open_connect(self, caller: str, body: Any) -> dict[str, Any]:
        body = read(body, spec.OPEN_CONNECT_FIELDS, "open_connect")
        source = sae_from_uri(body.get("source"))
        destination = sae_from_uri(body.get("destination"), "destination")
        if source != caller:
            raise Unauthorized("source must be the calling SAE", [{"source": source}])
        self.kme.require_local_sae(caller)
        if destination not in self.kme.topology.saes or destination == source:
            raise BadRequest("unknown destination SAE", [{"destination": destination}])
        ksid = body.get("Key_stream_ID")
        if ksid is not None:
            try:
                ksid = str(uuid.UUID(str(ksid)))
            except ValueError:
                raise BadRequest("Key_stream_ID must be a UUID") from None
        existing = self.streams.get(ksid) if ksid else None
        if existing is not None:
            return await self._join(existing, caller, destination)
        if ksid in self.ended:
            return {"status": spec.STREAM_GONE, "Key_stream_ID": ksid, "message": "key stream closed"}
        qos = self._qos(body.get("QoS"))
        offer = spec.counter_proposal(qos)
        if offer is not None:
            return {"status": QOS_NOT_MET, "Key_stream_ID": None, "QoS": offer}
        destination_node = self.kme.topology.saes[destination].node
        capacity = self.path_capacity_bps(destination_node)
        if capacity is None:
            return {"status": NO_QKD_CONNECTION, "Key_stream_ID": None, "QoS": qos}
        if qos["Min_bps"] > capacity:
            offer = math.floor(capacity)
            return {"status": QOS_NOT_MET, "Key_stream_ID": None, "QoS": {**qos, "Max_bps": offer, "Min_bps": offer}}
        qos["Max_bps"] = min(qos["Max_bps"], math.floor(capacity))
        stream = KeyStream(
            id=ksid or str(uuid.uuid4()),
            source_sae=source,
            destination_sae=destination,
            owner_node=self.kme.id,
            qos=qos,
            expires=time.time() + qos["TTL"],
        )
        announcement = self._describe(stream)
        if destination_node != self.kme.id:
            await self.kme.peers.post(destination_node, "/twin/v1/streams/open", announcement)
        self.streams[stream.id] = stream
        return {"status": PEER_NOT_CONNECTED, "Key_stream_ID": stream.id, "QoS": qos}

    async def _join(self, stream: KeyStream, caller: str, destination: str) -> dict[str, Any]:
        if stream.joined or caller != stream.destination_sae or destination != stream.source_sae:
            return {"status": KSID_IN_USE, "Key_stream_ID": stream.id, "QoS": stream.qos}
        if stream.owner_node != self.kme.id:
            await self.kme.peers.post(stream.owner_node, "/twin/v1/streams/joined", {"Key_stream_ID": stream.id})
        stream.joined = True
        return {"status": SUCCESSFUL, "Key_stream_ID": stream.id, "QoS": stream.qos}

    @staticmethod
    def _describe(stream: KeyStream) -> dict[str, Any]:
        return {
            "Key_stream_ID": stream.id,
            "source": stream.source_sae,
            "destination": stream.destination_sae,
            "owner_node": stream.owner_node,
            "QoS": stream.qos,
            "expires": stream.expires,
        }

    # -- node-to-node ------------------------------------------------------------------------------------
    def peer_opened(self, body: dict[str, Any]) -> dict[str, Any]:
        ksid = str(uuid.UUID(body["Key_stream_ID"]))
        if ksid in self.streams:
            raise BadRequest("Key_stream_ID already in use")
        self.streams[ksid] = KeyStream(
            id=ksid,
            source_sae=body["source"],
            destination_sae=body["destination"],
            owner_node=body["owner_node"],
            qos=dict(body["QoS"]),
            expires=float(body["expires"]),
        )
        return {"ok": True}

    def peer_joined(self, body: dict[str, Any]) -> dict[str, Any]:
        stream = self.streams.get(str(body.get("Key_stream_ID")))
        if stream is None:
            raise BadRequest("unknown Key_stream_ID")
        stream.joined = True
        return {"ok": True}

    def peer_closed(self, body: dict[str, Any]) -> dict[str, Any]:
        stream = self.streams.get(str(body.get("Key_stream_ID")))
        if stream is not None:
            self._end(stream)
        return {"ok": True}

    async def make_chunk(self, ksid: str, index: int) -> dict[str, Any]:
        """On the owner's KME: make chunk ``index`` known at both ends (idempotent)."""
        stream = self.streams.get(ksid)
        if stream is None or stream.owner_node != self.kme.id:
            raise BadRequest("unknown Key_stream_ID")
        async with stream.lock:
            if index in stream.made:
                return {"index": index}
            await self.kme.deliver(
                stream.source_sae,
                [stream.destination_sae, stream.source_sae],
                chunk_batch_id(ksid, index),
                1,
                int(stream.qos["Key_chunk_size"]),
            )
            stream.made.add(index)
        return {"index": index}

    # -- GET_KEY -----------------------------------------------------------------------------------------
    async def get_key(self, caller: str, params: dict[str, Any]) -> dict[str, Any]:
        self.kme.require_local_sae(caller)
        params = read(params, spec.GET_KEY_FIELDS, "get_key")
        ksid = params.get("Key_stream_ID")
        stream = self.streams.get(str(ksid))
        if stream is None:
            return self._ended_answer(caller, ksid)
        if caller not in (stream.source_sae, stream.destination_sae):
            raise Unauthorized("the caller is not an application of this key stream")
        if time.time() > stream.expires:
            self._end(stream)
            return {"status": spec.STREAM_GONE, "Key_stream_ID": stream.id, "message": "key stream TTL expired"}
        if not stream.joined:
            return {"status": PEER_NOT_YET_CONNECTED, "Key_stream_ID": stream.id}
        try:
            index = int(params["index"]) if params.get("index") not in (None, "") else stream.next_index.get(caller, 0)
            metadata_size = int(params["metadata_size"]) if params.get("metadata_size") not in (None, "") else None
        except ValueError:
            raise BadRequest("index and metadata_size must be integers") from None
        if index < 0 or index > max(stream.made, default=0) + 100_000:
            raise BadRequest("index out of range", [{"index": index}])
        key_id = chunk_key_id(stream.id, index)
        deadline = time.monotonic() + min(spec.MAX_TIMEOUT_MS, stream.qos["Timeout"]) / 1000
        while True:
            try:
                if stream.owner_node == self.kme.id:
                    await self.make_chunk(stream.id, index)
                elif not self.kme.store.has_batch(chunk_batch_id(stream.id, index)):
                    await self.kme.peers.post(
                        stream.owner_node, "/twin/v1/streams/chunk", {"Key_stream_ID": stream.id, "index": index}
                    )
                break
            except PeerError as exc:
                if exc.status < 500:  # the owner's KME refused (stream closed there): nothing to wait for
                    raise BadRequest("the key stream is not open at the initiator's KME", [{"error": exc.body}]) \
                        from exc
                if time.monotonic() >= deadline:
                    return self._timed_out(stream, index)
                await asyncio.sleep(0.05)
            except (KeyUnavailable, aiohttp.ClientError):  # not enough key yet: wait up to the QoS Timeout
                if time.monotonic() >= deadline:
                    return self._timed_out(stream, index)
                await asyncio.sleep(0.05)
        metadata = {"index": index, "Key_stream_ID": stream.id, "mimetype": stream.qos["Metadata_mimetype"]}
        metadata.update(self._route(stream, index))
        if metadata_size is not None and metadata_size < spec.metadata_size(metadata):
            return {"status": METADATA_TOO_SMALL, "Key_stream_ID": stream.id, "index": index,
                    "metadata_size_needed": spec.metadata_size(metadata)}
        try:
            container = self.kme.dec_keys(caller, stream.source_sae, {"key_IDs": [{"key_ID": key_id}]})
        except (BadRequest, Unauthorized):
            return {"status": INSUFFICIENT_KEY, "Key_stream_ID": stream.id, "index": index,
                    "message": "chunk already delivered to this application"}
        entry = container["keys"][0]
        metadata.update(entry.get("key_ID_extension") or {})
        stream.next_index[caller] = max(stream.next_index.get(caller, 0), index + 1)
        return {
            "status": SUCCESSFUL,
            "Key_stream_ID": stream.id,
            "index": index,
            "key_buffer": entry["key"],
            "Metadata": metadata,
        }

    @staticmethod
    def _timed_out(stream: KeyStream, index: int) -> dict[str, Any]:
        return {"status": TIMEOUT, "Key_stream_ID": stream.id, "index": index,
                "message": "no key for the chunk within the QoS Timeout"}

    def _route(self, stream: KeyStream, index: int) -> dict[str, Any]:
        """The route fields (hops, path) the chunk's Metadata will carry, read without handing the chunk out."""
        with self.kme.store.transaction() as tx:
            batch = tx.get_batches({chunk_batch_id(stream.id, index)}).get(chunk_batch_id(stream.id, index))
        return dict(batch.extension or {}) if batch is not None else {}

    # -- CLOSE -------------------------------------------------------------------------------------------
    async def close(self, caller: str, body: Any) -> dict[str, Any]:
        self.kme.require_local_sae(caller)
        ksid = read(body, spec.CLOSE_FIELDS, "close").get("Key_stream_ID")
        stream = self.streams.get(str(ksid))
        if stream is None:
            ended = self._ended_answer(caller, ksid)  # 400 unknown / 401 not an application
            return {**ended, "status": SUCCESSFUL, "message": "already closed"}  # closing an ended stream: done
        if caller not in (stream.source_sae, stream.destination_sae):
            raise Unauthorized("the caller is not an application of this key stream")
        self._end(stream)
        other_node = {
            self.kme.topology.saes[stream.source_sae].node, self.kme.topology.saes[stream.destination_sae].node
        } - {self.kme.id}
        for node in other_node:
            try:
                await self.kme.peers.post(node, "/twin/v1/streams/close", {"Key_stream_ID": stream.id})
            except Exception as exc:  # the peer's side then expires with its TTL
                log.info("closing key stream %s at %s failed: %s", stream.id, node, exc)
        return {"status": SUCCESSFUL, "Key_stream_ID": stream.id}
