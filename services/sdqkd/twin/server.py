"""HTTP(S) interface of one node: ETSI 014 and 004 for SAEs, entropy, node-to-node relay, admin and telemetry.

Who is calling comes from the verified client certificate (CN): an SAE ID, ``kme-node:<id>`` for another KME,
or ``qxaas-portal``, the trusted SAE proxy that names the SAE it acts for in ``X-SAE-ID``. With
``--insecure-http`` (loopback only, development) the headers ``X-SAE-ID`` / ``X-Twin-Node`` are trusted instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import BadRequest, TwinError, Unauthorized
from .etsi004 import KeyStreams
from .kme import KME
from .pki import NODE_CN_PREFIX, PORTAL_CN

if TYPE_CHECKING:
    from .network import Twin

log = logging.getLogger("twin.http")

MAX_ENTROPY_BYTES = 1 << 20


@dataclass(frozen=True)
class Identity:
    kind: str  # "sae" | "portal" | "node" | "anonymous" | "unknown"
    name: str | None = None
    on_behalf_of: str | None = None  # portal only: the SAE named in X-SAE-ID

    @property
    def sae(self) -> str | None:
        return self.name if self.kind == "sae" else self.on_behalf_of if self.kind == "portal" else None


def _common_name(peercert: dict | None) -> str | None:
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def identify(request: web.Request, twin: Twin) -> Identity:
    if twin.insecure:
        if request.headers.get("X-Twin-Node"):
            return Identity("node", request.headers["X-Twin-Node"])
        if request.headers.get("X-SAE-ID"):
            return Identity("sae", request.headers["X-SAE-ID"])
        return Identity("portal", PORTAL_CN)  # development mode: the local operator may administer
    cn = _common_name(request.transport.get_extra_info("peercert") if request.transport else None)
    if cn is None:
        return Identity("anonymous")
    if cn == PORTAL_CN:
        return Identity("portal", cn, request.headers.get("X-SAE-ID"))
    if cn.startswith(NODE_CN_PREFIX) and cn[len(NODE_CN_PREFIX):] in twin.topology.nodes:
        return Identity("node", cn[len(NODE_CN_PREFIX):])
    if cn in twin.topology.saes:
        return Identity("sae", cn)
    return Identity("unknown", cn)


def build_app(twin: Twin, node_id: str) -> web.Application:
    kme: KME = twin.kmes[node_id]
    streams: KeyStreams = twin.streams[node_id]

    @web.middleware
    async def errors_and_identity(request: web.Request, handler: Callable[[web.Request], Awaitable]) -> Any:
        request["identity"] = identify(request, twin)
        try:
            return await handler(request)
        except TwinError as exc:
            return web.json_response(exc.body(), status=exc.status)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return web.json_response({"message": exc.reason}, status=exc.status)
            raise
        except Exception:
            log.exception("node %s: %s %s failed", node_id, request.method, request.path)
            return web.json_response({"message": "server side error"}, status=503)

    def sae_of(request: web.Request) -> str:
        identity: Identity = request["identity"]
        if identity.sae is None:
            raise Unauthorized("an SAE client certificate is required")
        return identity.sae

    def node_of(request: web.Request) -> str:
        identity: Identity = request["identity"]
        if identity.kind != "node":
            raise Unauthorized("node-to-node interface: a KME node certificate is required")
        return identity.name or ""

    def require_authenticated(request: web.Request) -> None:
        if request["identity"].kind in ("anonymous", "unknown"):
            raise Unauthorized("a twin client certificate is required")

    def require_admin(request: web.Request) -> None:
        if request["identity"].kind != "portal":
            raise Unauthorized("the admin interface is for the portal certificate only")

    async def json_body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise BadRequest("the body is not valid JSON") from None

    def int_param(request: web.Request, name: str) -> int | None:
        value = request.query.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise BadRequest(f"{name} must be an integer", [{name: value}]) from None

    # -- ETSI GS QKD 014 ---------------------------------------------------------------------------------
    async def status(request: web.Request) -> web.Response:
        return web.json_response(kme.status(sae_of(request), request.match_info["slave"]))

    async def enc_keys(request: web.Request) -> web.Response:
        master = sae_of(request)
        if request.method == "GET":
            body: Any = {}
            for name in ("number", "size"):
                value = int_param(request, name)
                if value is not None:
                    body[name] = value
        else:
            body = await json_body(request)
        return web.json_response(await kme.enc_keys(master, request.match_info["slave"], body))

    async def dec_keys(request: web.Request) -> web.Response:
        slave = sae_of(request)
        if request.method == "GET":
            body: Any = {"key_IDs": [{"key_ID": value} for value in request.query.getall("key_ID", [])]}
        else:
            body = await json_body(request)
        return web.json_response(kme.dec_keys(slave, request.match_info["master"], body))

    # -- ETSI GS QKD 004 ---------------------------------------------------------------------------------
    async def open_connect(request: web.Request) -> web.Response:
        return web.json_response(await streams.open_connect(sae_of(request), await json_body(request)))

    async def get_key(request: web.Request) -> web.Response:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            params.update(await json_body(request))
        return web.json_response(await streams.get_key(sae_of(request), params))

    async def close(request: web.Request) -> web.Response:
        return web.json_response(await streams.close(sae_of(request), await json_body(request)))

    # -- simulated QRNG ----------------------------------------------------------------------------------
    async def entropy(request: web.Request) -> web.Response:
        require_authenticated(request)
        nbytes = int_param(request, "bytes")
        if nbytes is None or not 1 <= nbytes <= MAX_ENTROPY_BYTES:
            raise BadRequest(f"bytes must be 1..{MAX_ENTROPY_BYTES}", [{"bytes": request.query.get("bytes")}])
        return web.Response(
            body=kme.entropy(nbytes),
            content_type="application/octet-stream",
            headers={
                "X-Entropy-Source": "twin-simulated",
                "X-Entropy-Simulated": "true",
                "Cache-Control": "no-store",
            },
        )

    # -- node-to-node ------------------------------------------------------------------------------------
    def from_node(receive: Callable[[str, Any], Awaitable[dict[str, Any]]]) -> Callable:
        """A handler for a hop message: ``receive(previous node, JSON body)``."""

        async def handler(request: web.Request) -> web.Response:
            prev = node_of(request)
            return web.json_response(await receive(prev, await json_body(request)))

        return handler

    async def stream_event(request: web.Request) -> web.Response:
        node_of(request)
        body = await json_body(request)
        event = request.match_info["event"]
        try:
            if event == "open":
                return web.json_response(streams.peer_opened(body))
            if event == "joined":
                return web.json_response(streams.peer_joined(body))
            if event == "close":
                return web.json_response(streams.peer_closed(body))
            if event == "chunk":
                return web.json_response(await streams.make_chunk(str(body["Key_stream_ID"]), int(body["index"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest("malformed stream event", [{"error": str(exc)}]) from exc
        raise web.HTTPNotFound()

    async def link_block(request: web.Request) -> web.Response:
        sender = node_of(request)
        q = request.query
        cut = {k: q[k] for k in ("epoch", "offset", "nbytes")} if "epoch" in q else None
        twin.receive_block(node_id, sender, q["link"], int(q["seq"]), q["owner"], await request.read(), cut)
        return web.json_response({"ok": True})

    # -- node to node: the classical channel of protocol-mode blocks, and the ends' key buffers -----------
    qkd = twin.qkd_nodes[node_id]

    async def qkd_msg(request: web.Request) -> web.Response:
        sender = node_of(request)
        seq = int_param(request, "seq")
        await qkd.message(sender, request.query.get("session", ""), seq or 0, await request.read())
        return web.json_response({"ok": True})

    async def qkd_event(request: web.Request) -> web.Response:
        sender = node_of(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("expected a JSON object")
        event = request.match_info["event"]
        try:
            if event == "open":
                return web.json_response(await qkd.open(sender, body))
            if event == "result":
                return web.json_response(await qkd.result(sender, body))
            if event == "cancel":
                return web.json_response(await qkd.cancel(sender, body))
            if event == "commit":
                return web.json_response(qkd.commit(sender, body))
            if event == "discard":
                return web.json_response(qkd.discard(sender, body))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest("malformed protocol message", [{"error": str(exc)}]) from exc
        raise web.HTTPNotFound()

    async def link_admin_forwarded(request: web.Request) -> web.Response:
        node_of(request)
        body = await json_body(request)
        return web.json_response(
            await twin.admin_link(str(body.get("link")), str(body.get("action")), body.get("body"), forwarded=True)
        )

    # -- admin and telemetry -----------------------------------------------------------------------------
    async def admin_link(request: web.Request) -> web.Response:
        require_admin(request)
        body = await json_body(request) if request.can_read_body else {}
        return web.json_response(
            await twin.admin_link(request.match_info["link"], request.match_info["action"], body)
        )

    async def topology(request: web.Request) -> web.Response:
        require_authenticated(request)
        return web.json_response(twin.topology_view())

    async def link_blocks(request: web.Request) -> web.Response:
        require_authenticated(request)
        limit = int_param(request, "limit") or 32
        return web.json_response(twin.link_blocks(request.match_info["link"], max(1, min(limit, 256))))

    async def metrics(request: web.Request) -> web.Response:
        require_authenticated(request)
        return web.Response(text=twin.prometheus_text(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    # Protocol-mode messages carry a block's click indices and bases (several MB for a 1 Mbit block).
    app = web.Application(middlewares=[errors_and_identity], client_max_size=64 << 20)
    app.router.add_get("/api/v1/keys/{slave}/status", status)
    app.router.add_route("GET", "/api/v1/keys/{slave}/enc_keys", enc_keys)
    app.router.add_route("POST", "/api/v1/keys/{slave}/enc_keys", enc_keys)
    app.router.add_route("GET", "/api/v1/keys/{master}/dec_keys", dec_keys)
    app.router.add_route("POST", "/api/v1/keys/{master}/dec_keys", dec_keys)
    app.router.add_post("/api/open_connect", open_connect)
    app.router.add_route("GET", "/api/get_key", get_key)
    app.router.add_route("POST", "/api/get_key", get_key)
    app.router.add_post("/api/close", close)
    app.router.add_get("/api/v1/entropy", entropy)
    app.router.add_post("/twin/v1/transfer", from_node(kme.receive_transfer))
    app.router.add_post("/twin/v1/transfers", from_node(kme.receive_transfers))
    app.router.add_post("/twin/v1/abort", from_node(kme.receive_abort))
    app.router.add_post("/twin/v1/resolve", from_node(kme.receive_resolve))
    app.router.add_post("/twin/v1/streams/{event}", stream_event)
    app.router.add_post("/twin/v1/link-blocks", link_block)
    app.router.add_post("/twin/v1/link-admin", link_admin_forwarded)
    app.router.add_post("/twin/v1/qkd/msg", qkd_msg)
    app.router.add_post("/twin/v1/qkd/{event}", qkd_event)
    app.router.add_get("/api/v1/links/{link}/blocks", link_blocks)
    app.router.add_post("/api/v1/admin/links/{link}/{action}", admin_link)
    app.router.add_get("/api/v1/topology", topology)
    app.router.add_get("/metrics", metrics)
    return app
