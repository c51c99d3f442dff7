"""The key gateway: the portal's HTTPS listener (``make run``: https://127.0.0.1:8443), asyncio + aiohttp.

It serves ETSI GS QKD 014 (``status``, ``enc_keys``, ``dec_keys``) itself and forwards every other path to
the web listener (Django), vouching for the verified client certificate (``services.authentication``).

Why not Django behind gunicorn, as before: a key request spends most of its time waiting (on the KME and the
database), and a WSGI worker thread per waiting request, plus Django's and DRF's per-request machinery, cost
10-25x the KME's own latency. Here the waits are asyncio's: the KME call is made on the event loop
(``AsyncKmeClient``, kept-alive connections), and only the database work runs in a small thread pool, through
the very functions the Django views use (``services.delivery``: the same rules, quota, metering and records).

Per request: TLS client certificate (or token) -> one job in the pool (caller, rate limit, the ETSI checks,
quota pre-check) -> the KME -> one job in the pool (metering, ledger and the delivery row, one transaction)
-> the key container. Key material is in this process's memory for the request only, never logged (the
access log has the request line, which never holds key material: ETSI 014 key IDs are not secret).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from django.conf import settings
from django.db import DatabaseError, connections

from portal.errors import ServiceUnavailable
from services import delivery, pki, registry
from services.authentication import (
    AUTHENTICATE_HEADER,
    SECRET_HEADER,
    SERIAL_HEADER,
    VOUCHER_HEADER,
    etsi_caller,
    make_voucher,
)
from services.etsi014 import dec_keys_ids, describe_etsi, enc_keys_params, parse_body, standard_status
from services.gateway import metrics as gateway_metrics
from services.sdqkd.client import AsyncKmeClient, DeliveredKey, KmeRejected, KmeUnavailable
from tenants.ratelimit import take

logger = logging.getLogger(__name__)
T = TypeVar("T")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}
SECRET_HEADERS = {SERIAL_HEADER.lower(), SECRET_HEADER.lower(), VOUCHER_HEADER.lower()}
FORWARD_SET = {"x-forwarded-proto", "x-forwarded-for"}  # set by the gateway, never the client's


def _forwardable(name: str) -> bool:
    """Not hop-by-hop, and not a spelling of the vouching headers (servers may read ``_`` as ``-``)."""
    lowered = name.lower()
    return lowered not in HOP_BY_HOP and lowered.replace("_", "-") not in SECRET_HEADERS


class Gateway:
    """The application's state: the database thread pool, one async KME client per node, the upstream."""

    def __init__(self, threads: int = 8, upstream: str | None = None) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-db")
        # ETSI status asks the KME (sync client) from its job: its own threads, so a slow KME cannot take the
        # database pool that every other request needs.
        self.status_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-status")
        self.upstream = upstream.rstrip("/") if upstream else None
        self.kmes: dict[tuple, AsyncKmeClient] = {}
        self.proxy_session: ClientSession | None = None

    async def run(self, fn: Callable[..., T], *args: Any, pool: ThreadPoolExecutor | None = None,
                  **kwargs: Any) -> T:
        """``fn`` in the database pool (Django connections are per thread, and stay open between jobs), in a copy
        of the request's context (its log lines keep the request ID and tenant)."""
        job = functools.partial(contextvars.copy_context().run, _job, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool or self.pool, job)

    def kme(self, node) -> AsyncKmeClient:
        key, endpoint = registry.endpoint_for(node)
        client = self.kmes.get(key)
        if client is None:
            # The node's endpoint changed (or is new): the client for its old endpoint goes.
            for old in [k for k in self.kmes if k[0] == key[0]]:
                asyncio.get_running_loop().create_task(self.kmes.pop(old).close())
            client = self.kmes[key] = AsyncKmeClient(endpoint)
        return client

    async def close(self) -> None:
        for client in self.kmes.values():
            await client.close()
        if self.proxy_session is not None:
            await self.proxy_session.close()
        self.pool.shutdown(wait=False)
        self.status_pool.shutdown(wait=False)


_RECYCLE_CHECK_S = 30.0
_checked = threading.local()


def _job(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # What Django does at each request's start and end, here every half minute per thread: a connection older
    # than DB_CONN_MAX_AGE (or left unusable) is closed, and the next query opens a new one.
    now, last = time.monotonic(), getattr(_checked, "at", None)
    if last is not None and now - last >= _RECYCLE_CHECK_S:
        for conn in connections.all(initialized_only=True):
            conn.close_if_unusable_or_obsolete()
    if last is None or now - last >= _RECYCLE_CHECK_S:
        _checked.at = now
    try:
        return fn(*args, **kwargs)
    except DatabaseError:
        # A broken connection must not stay in this thread for the next job: drop it (a new one next time).
        for conn in connections.all(initialized_only=True):
            conn.close()
        logger.exception("database error in the key gateway")
        # Not "nothing was charged": a COMMIT that failed on the way back may have committed.
        raise ServiceUnavailable("the portal's database is unavailable") from None


# --- ETSI 014 ----------------------------------------------------------------------------------------------
def _credentials(request: web.Request) -> tuple[str | None, str | None, str | None]:
    """(verified certificate serial, Authorization header, X-SAE-ID header)."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return (pki.serial_of(der) if der else None, request.headers.get("Authorization"),
            request.headers.get("X-SAE-ID"))


def _caller(credentials: tuple, scope: str):
    sae, ident = etsi_caller(*credentials, scope=scope)
    return sae, take("keys", ident)


def _json(body: Any, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store", **headers})


def etsi_error(exc: Exception, headers: dict[str, str] | None = None) -> web.Response:
    """The ETSI 014 error body ``{"message", "details"}`` for the portal's errors (as ``EtsiView``)."""
    status, body, extra = describe_etsi(exc)
    if status == 401:
        extra.setdefault("WWW-Authenticate", AUTHENTICATE_HEADER)
    return _json(body, {**(headers or {}), **extra}, status)


def etsi_view(scope: str):
    """An ETSI 014 handler: errors in the ETSI format with the rate-limit headers of the request."""
    def wrap(handler):
        @functools.wraps(handler)
        async def view(request: web.Request) -> web.Response:
            state = {"headers": {}}
            try:
                return await handler(request, request.app["gateway"], scope, state)
            except web.HTTPException as exc:  # aiohttp's own refusals (a body over the size limit: 413)
                status, headers = standard_status(exc.status, state["headers"])
                return _json({"message": exc.reason}, headers, status)
            except Exception as exc:  # describe() re-raises what is not the portal's error
                try:
                    return etsi_error(exc, state["headers"])
                except Exception:
                    logger.exception("unexpected error in the key gateway")
                    return _json({"message": "internal error"}, {}, 500)
        return view
    return wrap


def _status(credentials: tuple, scope: str, slave: str) -> tuple[dict, dict]:
    master, headers = _caller(credentials, scope)
    return delivery.status(master, slave), headers


@etsi_view("keys:read")
async def status_view(request: web.Request, gateway: Gateway, scope: str, state: dict) -> web.Response:
    body, state["headers"] = await gateway.run(_status, _credentials(request), scope, request.match_info["sae"],
                                               pool=gateway.status_pool)
    return _json(body, state["headers"])


def _order(credentials: tuple, scope: str, slave: str, query: dict[str, str], raw: bytes | None):
    master, headers = _caller(credentials, scope)
    # The body is parsed here, after authentication: no credentials is a 401 before a bad body's 400.
    body = None if raw is None else parse_body(raw)
    return delivery.order_keys(master, slave, **enc_keys_params(query, body)), headers


async def _raw_body(request: web.Request) -> bytes | None:
    return None if request.method == "GET" else await request.read()


@etsi_view("keys:write")
async def enc_keys_view(request: web.Request, gateway: Gateway, scope: str, state: dict) -> web.Response:
    order, state["headers"] = await gateway.run(_order, _credentials(request), scope, request.match_info["sae"],
                                                dict(request.query), await _raw_body(request))
    node = order.pair.master_node
    try:
        keys = await gateway.kme(node).enc_keys(order.pair.slave_sae, **order.ask())
    except (KmeRejected, KmeUnavailable) as exc:
        await gateway.run(delivery.abandon, order)  # the held bits back to the tenant
        raise delivery.backend_error(exc, node) from None
    except Exception:
        await gateway.run(delivery.abandon, order)
        raise
    return _json(await gateway.run(delivery.deliver, order, keys), state["headers"])


def _fetch(credentials: tuple, scope: str, master: str, query: Mapping[str, str], raw: bytes | None):
    slave, headers = _caller(credentials, scope)
    body = None if raw is None else parse_body(raw)
    return delivery.fetch_order(slave, master, dec_keys_ids(query, body)), headers


@etsi_view("keys:read")
async def dec_keys_view(request: web.Request, gateway: Gateway, scope: str, state: dict) -> web.Response:
    fetch, state["headers"] = await gateway.run(_fetch, _credentials(request), scope, request.match_info["sae"],
                                                request.query, await _raw_body(request))
    keys: list[DeliveredKey] = []
    try:
        for backend_slave, ids in fetch.by_backend.items():
            keys += await gateway.kme(fetch.slave.node).dec_keys(fetch.pair.master_sae, ids, acting_as=backend_slave)
    except (KmeRejected, KmeUnavailable) as exc:
        raise fetch.failed(exc) from None
    return _json(await gateway.run(delivery.fetched, fetch, keys), state["headers"])


# --- everything else: the web listener ---------------------------------------------------------------------
async def forward(request: web.Request) -> web.StreamResponse:
    """Any other path, to the web listener, with the verified client certificate vouched for."""
    gateway: Gateway = request.app["gateway"]
    if gateway.upstream is None:
        return _json({"error": {"code": "not_found", "message": "this listener serves ETSI GS QKD 014 only "
                                "(/api/v1/keys/...); use the web listener for the rest of the API"}}, {}, 404)
    if gateway.proxy_session is None:
        # No total: a long entropy download may take minutes; but the web listener must answer and keep
        # answering (sock_read: the longest silence), or the request is given up and its resources go.
        gateway.proxy_session = ClientSession(
            connector=TCPConnector(limit=100), trust_env=False, auto_decompress=False,
            timeout=ClientTimeout(total=None, connect=settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S,
                                  sock_connect=settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S,
                                  sock_read=settings.GATEWAY_UPSTREAM_READ_TIMEOUT_S))
    serial, _auth, _sae = _credentials(request)
    # Repeated headers stay repeated (a list of pairs, not a dict); the vouching headers are the gateway's own.
    headers = [(k, v) for k, v in request.headers.items() if _forwardable(k) and k.lower() not in FORWARD_SET]
    headers += [("X-Forwarded-Proto", "https"), ("X-Forwarded-For", request.remote or ""), ("Host", request.host)]
    if serial:
        # vouches for this certificate on this one request (method and target as forwarded), for a few seconds
        headers += [(SERIAL_HEADER, serial),
                    (VOUCHER_HEADER, make_voucher(serial, request.method, request.rel_url.raw_path_qs))]
    try:
        async with gateway.proxy_session.request(request.method, gateway.upstream + request.rel_url.raw_path_qs,
                                                 headers=headers, data=await request.read(),
                                                 allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():  # every Set-Cookie, not the last one
                if k.lower() not in HOP_BY_HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            write_timeout = settings.GATEWAY_CLIENT_WRITE_TIMEOUT_S
            try:
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    # A client that does not take the chunk in time is cut: the answer is not read further, so
                    # the web listener's thread is not held by it.
                    await asyncio.wait_for(response.write(chunk), write_timeout)
                await asyncio.wait_for(response.write_eof(), write_timeout)
            except (TimeoutError, OSError, ClientError) as exc:
                # Headers are sent: a body shorter than its Content-Length (or no final chunk) tells the client.
                logger.info("forwarded answer cut after its headers: %s", type(exc).__name__)
                if request.transport is not None:
                    request.transport.close()
            return response
    except TimeoutError:
        logger.warning("the web listener %s did not answer in time", gateway.upstream)
        return _json({"error": {"code": "service_unavailable", "message": "the portal's web listener did not "
                                "answer in time"}}, {"Retry-After": "5"}, 503)
    except (OSError, ClientError) as exc:
        logger.warning("the web listener %s is unreachable: %s", gateway.upstream, type(exc).__name__)
        return _json({"error": {"code": "service_unavailable", "message": "the portal's web listener is "
                                "unavailable"}}, {}, 503)


async def healthz(_request: web.Request) -> web.Response:
    """The gateway's own liveness (a load balancer's check; the web listener has its own /healthz)."""
    return _json({"status": "ok", "listener": "key gateway"}, {})


def build_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=4 << 20)
    app["gateway"] = gateway
    app.router.add_get("/gateway/healthz", healthz)
    gateway_metrics.install(app)  # /gateway/metrics, request counts and latency, X-Request-ID
    for method in ("GET", "POST"):
        app.router.add_route(method, "/api/v1/keys/{sae}/status", status_view)
        app.router.add_route(method, "/api/v1/keys/{sae}/enc_keys", enc_keys_view)
        app.router.add_route(method, "/api/v1/keys/{sae}/dec_keys", dec_keys_view)
    app.router.add_route("*", "/{tail:.*}", forward)

    async def close(_app: web.Application) -> None:
        await gateway.close()

    app.on_cleanup.append(close)
    return app
