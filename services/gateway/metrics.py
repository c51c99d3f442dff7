"""The key gateway's own metrics, ``/gateway/metrics`` on its listener, and its request IDs.

Restricted like the portal's ``/metrics`` (``portal.metrics.scrape_allowed``: ``METRICS_TOKEN`` or a direct
connection from ``METRICS_ALLOWED_NETWORKS``). Requests are counted by endpoint (``enc_keys``, ``dec_keys``,
``status``, ``forward`` for what goes to the web listener...), never by SAE or path. With ``--processes N``
each process counts its own; set ``PROMETHEUS_MULTIPROC_DIR`` (a folder of the gateway's own, not the web
listener's) and a scrape sums every process of the gateway.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable

from aiohttp import web
from aiohttp.web_log import AccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from portal import logs
from portal.metrics import LATENCY_BUCKETS, scrape_allowed

REQUESTS = Counter("qxaas_gateway_requests", "Requests answered by the key gateway, by endpoint and status.",
                   ["endpoint", "status"])
LATENCY = Histogram("qxaas_gateway_request_duration_seconds", "Time to answer a request (key gateway).",
                    ["endpoint"], buckets=LATENCY_BUCKETS)
ENDPOINTS = {"/api/v1/keys/{sae}/enc_keys": "enc_keys", "/api/v1/keys/{sae}/dec_keys": "dec_keys",
             "/api/v1/keys/{sae}/status": "status", "/gateway/healthz": "healthz", "/gateway/metrics": "metrics"}


def endpoint_of(request: web.Request) -> str:
    resource = request.match_info.route.resource if request.match_info.route else None
    return ENDPOINTS.get(resource.canonical, "forward") if resource is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """Request ID (header and log lines) and the request's count and latency."""
    start = time.perf_counter()
    rid = logs.new_request_id()
    status = 500
    with logs.scope(request_id=rid, edge_request_id=logs.edge_request_id(request.headers.get(logs.REQUEST_ID_HEADER)),
                    tenant=None, order_id=None):
        request["request_id"] = rid
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            # The tenant the request's credential decided (bound in its database job: Gateway.run), for the
            # access line, written after this scope ends. Forwarded requests: the web listener's lines have it.
            request["tenant"] = logs.current("tenant")
            endpoint = endpoint_of(request)
            REQUESTS.labels(endpoint, str(status)).inc()
            LATENCY.labels(endpoint).observe(time.perf_counter() - start)
    if not response.prepared:  # a forwarded, streamed answer carries the web listener's own request ID
        response.headers[logs.REQUEST_ID_HEADER] = rid
    return response


class ContextAccessLogger(AccessLogger):
    """aiohttp's access line with the request's ID and tenant (``LOG_FORMAT=json``: fields, as on the web
    listener's lines). The line is the client address, request line, status, size and time: no credential,
    no key material (ETSI 014 key IDs, the only request data in it, are not secret)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        with logs.scope(request_id=request.get("request_id"), tenant=request.get("tenant")):
            super().log(request, response, time)


class _State(Collector):
    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterable[Metric]:
        gateway = self.app["gateway"]
        queued = GaugeMetricFamily("qxaas_gateway_db_jobs_queued", "Database jobs waiting for a thread of the "
                                   "gateway process that answered this scrape.", labels=["pool"])
        for name, pool in (("db", gateway.pool), ("status", gateway.status_pool)):
            queued.add_metric([name], pool._work_queue.qsize())
        yield queued


class _Reuse(Collector):
    def __init__(self, metric: Collector) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return self.metric.collect()


class _Files(Collector):
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def collect(self) -> Iterable[Metric]:
        return MultiProcessCollector.merge(glob.glob(os.path.join(self.folder, "*.db")), accumulate=True)


async def metrics_view(request: web.Request) -> web.Response:
    proxied = "X-Forwarded-For" in request.headers or "X-Real-IP" in request.headers
    if not scrape_allowed(request.remote, request.headers.get("Authorization"), proxied):
        return web.json_response({"error": {"code": "forbidden", "message": "metrics are for the operator's "
                                            "scrapers", "details": None}}, status=403)
    registry = CollectorRegistry(auto_describe=False)
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        registry.register(_Files(folder))
    else:
        registry.register(_Reuse(REQUESTS))
        registry.register(_Reuse(LATENCY))
    registry.register(_State(request.app))
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def install(app: web.Application) -> None:
    """Add the middleware and the route (before the catch-all forward route)."""
    app.middlewares.append(observe)
    app.router.add_get("/gateway/metrics", metrics_view)
