"""The whole twin: PKI, per-node stores and KMEs, links and their generators, and one listener per node.

All nodes may live in one process (the default) or one node per process (``nodes=[...]``), as in a real
deployment. Either way KMEs talk to each other only over HTTP(S), through ``HttpPeers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from services.sdqkd.physics.analytical import PhysicsParameterError
from services.sdqkd.physics.attacks import AttackConfig

from .errors import BadRequest, TwinError
from .etsi004 import KeyStreams
from .files import private_dir
from .kme import KME, PeerError
from .link import LinkRuntime
from .parties import PartyPool
from .pki import TwinPKI
from .producer import AnalyticalBlockProducer, BlockProducer
from .server import build_app
from .simulated import PeerEnd, QkdNode, SimulatedBlockProducer
from .store import NodeStore
from .telemetry import prometheus_link_blocks
from .topology import MODES, Topology

log = logging.getLogger("twin")

ENDPOINTS_FILE = "endpoints.json"
ADMIN_ACTIONS = ("cut", "restore", "physics", "attack", "clear-attack", "drain")
PHYSICS_FIELDS_ADMIN = ("total_loss_db", "attenuation_db_per_km", "length_km", "extra_loss_db", "excess_noise",
                        "misalignment_error", "dark_count_probability", "detector_efficiency", "visibility")


class HttpPeers:
    """Node-to-node client of one node: HTTPS with that node's client certificate, keep-alive."""

    def __init__(self, node_id: str, urls: dict[str, str], ssl_context: ssl.SSLContext | None):
        self.node_id = node_id
        self.urls = urls
        headers = {"X-Twin-Node": node_id} if ssl_context is None else {}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else False, limit=200),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=15),
        )

    async def post(self, node_id: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.urls[node_id] + path, json=body) as response:
            data = await response.json(content_type=None)
            if response.status != 200:
                raise PeerError(response.status, data)
            return data

    async def post_bytes(self, node_id: str, path: str, params: dict[str, str], data: bytes) -> None:
        async with self.session.post(self.urls[node_id] + path, params=params, data=data) as response:
            if response.status != 200:
                raise PeerError(response.status, await response.text())

    async def close(self) -> None:
        await self.session.close()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address; '' and 0.0.0.0 / :: are not."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Twin:
    def __init__(
        self,
        topology: Topology,
        state_dir: Path,
        host: str = "127.0.0.1",
        base_port: int | None = None,
        insecure: bool = False,
        time_scale: float = 1.0,
        nodes: list[str] | None = None,
        protocol_workers: int = 2,
        protocol_cpu: float = 0.25,
        mode: str | None = None,
    ):
        if insecure and not is_loopback(host):
            raise ValueError("--insecure-http is only allowed on loopback")
        unknown = set(nodes or []) - set(topology.nodes)
        if unknown:
            raise ValueError(f"unknown node(s): {', '.join(sorted(unknown))}")
        self.topology = topology
        self.state_dir = Path(state_dir)
        self.host = host
        self.base_port = base_port
        self.insecure = insecure
        self.time_scale = time_scale
        self.local_nodes = list(nodes or topology.nodes)
        if insecure:  # header-trusted KMEs: every address this process will bind must be loopback, not just --host
            exposed = sorted({self._bind_host(n) for n in self.local_nodes if not is_loopback(self._bind_host(n))})
            if exposed:
                raise ValueError(f"--insecure-http is only allowed on loopback; the topology binds {exposed}")
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if protocol_workers < 0 or protocol_cpu < 0:
            raise ValueError("protocol workers and CPU budget must not be negative")
        self.mode_override = mode  # every link in this mode (tests, benchmarks), else each link's own
        self.protocol_workers = protocol_workers
        self.protocol_cpu = protocol_cpu  # cores the protocol workers may use in total, shared by the links
        self.pool = PartyPool(0)
        self.qkd_nodes: dict[str, QkdNode] = {}
        self.started_at = 0.0
        self.pki: TwinPKI | None = None
        self.stores: dict[str, NodeStore] = {}
        self.links: dict[str, LinkRuntime] = {}
        self.kmes: dict[str, KME] = {}
        self.streams: dict[str, KeyStreams] = {}
        self.peers: dict[str, HttpPeers] = {}
        self.urls: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []

    # -- bring-up ----------------------------------------------------------------------------------------
    def _bind_host(self, node_id: str) -> str:
        """The address a local node listens on: the topology's, or ``--host`` with ``--base-port``."""
        return self.topology.nodes[node_id].host if self.base_port is None else self.host

    def _bind(self, index: int, node_id: str) -> socket.socket:
        spec = self.topology.nodes[node_id]
        host = self._bind_host(node_id)
        port = spec.port if self.base_port is None else (self.base_port + index if self.base_port else 0)
        if len(self.local_nodes) < len(self.topology.nodes) and port == 0:
            raise ValueError("one node per process needs fixed ports (topology addresses or --base-port N)")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound = sock.getsockname()[0]
        if self.insecure and not is_loopback(bound):  # what was really bound (a name may resolve anywhere)
            sock.close()
            raise ValueError(f"--insecure-http is only allowed on loopback; {host!r} bound {bound}")
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    def _url(self, host: str, port: int) -> str:
        scheme = "http" if self.insecure else "https"
        return f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        self.started_at = time.monotonic()
        private_dir(self.state_dir)
        self.pki = TwinPKI(self.state_dir / "pki")
        self.pki.portal_client()
        for sae in self.topology.saes.values():
            self.pki.sae_client(sae.id)

        sockets = {}
        for index, node_id in enumerate(self.topology.nodes):
            if node_id in self.local_nodes:
                sockets[node_id] = self._bind(index, node_id)
                host, port = sockets[node_id].getsockname()[:2]
                self.urls[node_id] = self._url(host, port)
            else:
                spec = self.topology.nodes[node_id]
                port = self.base_port + index if self.base_port else spec.port
                self.urls[node_id] = self._url(spec.host if self.base_port is None else self.host, port)

        for node_id in self.local_nodes:
            self.stores[node_id] = NodeStore(self.state_dir / "nodes" / node_id / "store.sqlite", node_id)
            client_ctx = None if self.insecure else self.pki.client_context(self.pki.node_client(node_id))
            self.peers[node_id] = HttpPeers(node_id, self.urls, client_ctx)
        self._make_links()

        for node_id in self.local_nodes:
            self.kmes[node_id] = KME(node_id, self.topology, self.stores[node_id], self.links, self.peers[node_id])
            self.streams[node_id] = KeyStreams(self.kmes[node_id], self.time_scale)

        for node_id in self.local_nodes:
            # Shutdown waits at most 5 s for requests in flight (a protocol block's result, say), not 60.
            runner = web.AppRunner(build_app(self, node_id), access_log=None, handle_signals=False,
                                   shutdown_timeout=5.0)
            await runner.setup()
            server_ctx = None if self.insecure else self.pki.server_context(node_id)
            await web.SockSite(runner, sockets[node_id], ssl_context=server_ctx).start()
            self._runners.append(runner)
            self.kmes[node_id].start()

        self.pool.start()  # protocol workers start in the background: the first blocks are statistical
        for link in self.links.values():
            # The generator of a link runs where its first end lives (or where any end lives, all-in-one).
            if link.spec.endpoints[0] in self.stores:
                link.start()
        if self.insecure:
            log.warning("INSECURE: plain HTTP, SAE identity taken from the X-SAE-ID header (development only)")
        self._write_endpoints()
        log.info(
            "twin %s up: %s (%.0f ms)",
            self.topology.name,
            ", ".join(f"{n}={self.urls[n]}" for n in self.local_nodes),
            (time.monotonic() - self.started_at) * 1000,
        )

    def _make_links(self) -> None:
        """A runtime per link; a block producer per its mode. Links in mode protocol/statistical are driven by
        their first end (Alice), which must live in this process; elsewhere they get a placeholder."""
        specs = [dataclasses.replace(spec, mode=self.mode_override,
                                     protocol_fraction=spec.protocol_fraction if self.mode_override == "protocol"
                                     else None) if self.mode_override else spec
                 for spec in self.topology.links.values()]
        driven = [s for s in specs if s.mode != "analytical" and s.endpoints[0] in self.stores]
        protocol_links = [s for s in driven if s.mode == "protocol"]
        # Bob's end needs workers too: any local end of a protocol link.
        ends_protocol = any(s.mode == "protocol" and set(s.endpoints) & set(self.stores) for s in specs)
        self.pool = PartyPool(self.protocol_workers if ends_protocol else 0)
        for node_id in self.local_nodes:
            self.qkd_nodes[node_id] = QkdNode(node_id, self.topology.links, self.pool, self.peers[node_id])
        cpu_share = self.protocol_cpu / max(1, len(protocol_links))
        for spec in specs:
            local = {end: self.stores[end] for end in spec.endpoints if end in self.stores}
            producer: BlockProducer
            if spec in driven:
                a, b = spec.endpoints
                producer = SimulatedBlockProducer(
                    spec, node=self.qkd_nodes[a], peer=PeerEnd(spec.id, a, b, self.peers[a], self.qkd_nodes.get(b)),
                    time_scale=self.time_scale, cpu_share=cpu_share,
                )
            else:
                producer = AnalyticalBlockProducer(spec.params, spec.block_size_bits, self.time_scale)
            sink = self._remote_sink(spec.endpoints[0]) if local else None
            runtime = LinkRuntime(spec, producer, local, sink)
            if isinstance(producer, SimulatedBlockProducer):
                producer.is_up = runtime.is_up
            self.links[spec.id] = runtime

    def _remote_sink(self, producer_end: str):
        async def sink(link_id: str, seq: int, owner: str, key: bytes, cut: dict[str, Any] | None) -> None:
            link = self.topology.links[link_id]
            receiver = link.endpoints[1] if link.endpoints[0] in self.stores else link.endpoints[0]
            params = {"link": link_id, "seq": str(seq), "owner": owner}
            if cut is not None:  # the receiver cuts its own key from its buffer; no key bytes travel
                params.update({k: str(v) for k, v in cut.items()})
            await self.peers[producer_end].post_bytes(receiver, "/twin/v1/link-blocks", params, key)

        return sink

    def receive_block(self, node_id: str, sender: str, link_id: str, seq: int, owner: str, key: bytes,
                      cut: dict[str, Any] | None = None) -> None:
        link = self.topology.links.get(link_id)
        if link is None or {node_id, sender} != set(link.endpoints) or owner not in link.endpoints:
            raise BadRequest("not a link between these nodes")
        if cut is not None:
            if self.stores[node_id].has_block(link_id, seq):
                return  # a retransmission: the key was cut already
            key = self.qkd_nodes[node_id].cut(link_id, str(cut["epoch"]), int(cut["offset"]), int(cut["nbytes"]))
        self.stores[node_id].add_block(link_id, seq, owner, key)

    def _write_endpoints(self) -> None:
        assert self.pki is not None
        data = {
            "topology": self.topology.name,
            "pid": os.getpid(),
            "insecure": self.insecure,
            "time_scale": self.time_scale,
            "ca": str(self.pki.ca.cert),
            "nodes": {n: {"url": self.urls[n], "local": n in self.stores} for n in self.topology.nodes},
            "saes": {
                s.id: {"node": s.node, "cert": str(self.pki.sae_client(s.id).cert),
                       "key": str(self.pki.sae_client(s.id).key)}
                for s in self.topology.saes.values()
            },
            "portal": {"cert": str(self.pki.portal_client().cert), "key": str(self.pki.portal_client().key)},
            "ready": True,
        }
        name = ENDPOINTS_FILE if len(self.local_nodes) == len(self.topology.nodes) else \
            f"endpoints-{'-'.join(self.local_nodes)}.json"
        tmp = self.state_dir / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_dir / name)

    async def stop(self) -> None:
        for link in self.links.values():
            try:
                await asyncio.wait_for(link.stop(), 5)  # a protocol block in flight must not hold shutdown
            except TimeoutError:
                log.warning("link %s did not stop in time", link.id)
        for kme in self.kmes.values():
            await kme.stop()
        await self.pool.close()
        for runner in self._runners:
            await runner.cleanup()
        for peers in self.peers.values():
            await peers.close()
        for store in self.stores.values():
            store.close()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / ENDPOINTS_FILE).unlink()

    # -- admin -------------------------------------------------------------------------------------------
    async def admin_link(self, link_id: str, action: str, body: Any, forwarded: bool = False) -> dict[str, Any]:
        link = self.links.get(link_id)
        if link is None:
            raise TwinError("unknown link", [{"link": link_id}], status=404)
        if action == "cut":
            link.cut()
        elif action == "restore":
            link.restore()
        elif action == "physics":
            if not isinstance(body, dict) or not body:
                raise BadRequest("give physical parameters to change", [{"allowed": list(PHYSICS_FIELDS_ADMIN)}])
            try:
                link.set_physics(**body)
            except PhysicsParameterError as exc:
                raise BadRequest("invalid physical parameter", [{exc.field: exc.message}]) from exc
        elif action in ("attack", "clear-attack"):
            # Eve (or a fault) on the link: the whole attack configuration; {} or clear-attack removes it.
            if action == "attack" and not isinstance(body, dict):
                raise BadRequest("give the attack as an object", [{"allowed": list(AttackConfig().to_mapping())}])
            try:
                attack = AttackConfig.from_mapping(body if action == "attack" else {})
            except PhysicsParameterError as exc:
                raise BadRequest("invalid attack parameter", [{exc.field: exc.message}]) from exc
            link.set_attack(attack)
        elif action == "drain":
            for store in link.stores.values():
                with store.transaction() as tx:
                    tx.drain(link_id)
        else:
            raise TwinError("unknown action", [{"action": action, "allowed": list(ADMIN_ACTIONS)}], status=404)
        if not forwarded and len(self.stores) < len(self.topology.nodes):
            # One node per process: every node routes, so every node hears of the change (a drain only matters
            # to the link's ends).
            targets = [n for n in self.topology.nodes if n not in self.stores]
            if action == "drain":
                targets = [n for n in targets if n in link.spec.endpoints]
            sender = self.peers[next(iter(self.peers))]
            for node in targets:
                with contextlib.suppress(PeerError, aiohttp.ClientError):
                    await sender.post(node, "/twin/v1/link-admin", {"link": link_id, "action": action, "body": body})
        return link.telemetry()

    # -- telemetry ---------------------------------------------------------------------------------------
    def topology_view(self) -> dict[str, Any]:
        nodes = []
        for node_id, spec in self.topology.nodes.items():
            store = self.stores.get(node_id)
            nodes.append({
                "id": node_id,
                "site": spec.site,
                "kme_url": self.urls.get(node_id),
                "saes": [s.id for s in self.topology.saes_of(node_id)],
                "local": store is not None,
                "keys_delivered": store.counters["keys_delivered"] if store else None,
                "keys_received": store.counters["keys_received"] if store else None,
                "relay_hops": store.counters["relay_hops"] if store else None,
                "transfers_aborted": store.counters["transfers_aborted"] if store else None,
            })
        return {
            "name": self.topology.name,
            "description": self.topology.description,
            "simulated": True,
            "time_scale": self.time_scale,
            "uptime_s": time.monotonic() - self.started_at,
            "nodes": nodes,
            "links": [link.telemetry() for link in self.links.values()],
        }

    def prometheus_text(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{label_text}}} {value:.10g}")

        views = [link.telemetry() for link in self.links.values() if link.stores]
        by = [({"link": v["id"], "technology": v["technology"]}, v) for v in views]
        family("qkd_link_secret_key_rate_bps", "gauge", "Secret key rate of the link (0 when cut), bit/s.",
               [(lab, v["secret_key_rate_bps"]) for lab, v in by])
        family("qkd_link_qber", "gauge", "Quantum bit error rate of the link.", [(lab, v["qber"]) for lab, v in by])
        family("qkd_link_up", "gauge", "1 when the link is up, 0 when cut.",
               [(lab, 1.0 if v["state"] == "up" else 0.0) for lab, v in by])
        family("qkd_link_key_store_fill_bits", "gauge", "Key held in the link's key stores, bits.",
               [(lab, v["key_store_fill_bits"]) for lab, v in by])
        family("qkd_link_key_store_capacity_bits", "gauge", "Capacity of the link's key stores, bits.",
               [(lab, v["key_store_capacity_bits"]) for lab, v in by])
        family("qkd_link_keys_consumed_bits_total", "counter", "Link key consumed by key delivery and relay, bits.",
               [(lab, v["keys_consumed_bits"]) for lab, v in by])
        stores = self.stores.items()
        family("qkd_node_keys_delivered_total", "counter", "Keys delivered to SAEs by the node's KME.",
               [({"node": n}, s.counters["keys_delivered"]) for n, s in stores])
        family("qkd_node_relay_hops_total", "counter", "Key transfers relayed through the node (trusted node).",
               [({"node": n}, s.counters["relay_hops"]) for n, s in stores])
        prometheus_link_blocks(family, views)
        family("qkd_node_protocol_messages_received_total", "counter",
               "Classical post-processing messages received from other nodes (protocol mode).",
               [({"node": n}, q.counters["classical_messages_received"]) for n, q in self.qkd_nodes.items()])
        return "\n".join(lines) + "\n"

    def link_blocks(self, link_id: str, limit: int) -> dict[str, Any]:
        """The recent post-processing blocks of a link, newest last (mode protocol/statistical)."""
        link = self.links.get(link_id)
        if link is None:
            raise TwinError("unknown link", [{"link": link_id}], status=404)
        producer = link.producer
        if not isinstance(producer, SimulatedBlockProducer) or not link.stores:
            return {"link": link_id, "mode": link.spec.mode, "blocks": []}
        return {"link": link_id, "mode": producer.mode, "blocks": list(producer.history)[-limit:]}


async def run_until_signalled(twin: Twin, stop: asyncio.Event) -> None:
    await twin.start()
    try:
        await stop.wait()
    finally:
        await twin.stop()
