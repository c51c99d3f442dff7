"""``/metrics``: the portal's Prometheus endpoint (text format 0.0.4), for operators' scrapers only.

Two kinds of series:

- **Event series** counted where they happen: HTTP requests and latency (``MetricsMiddleware``), Celery task
  outcomes and durations (Celery signals). gunicorn and Celery run several processes, so with
  ``PROMETHEUS_MULTIPROC_DIR`` set each process writes its values to memory-mapped files there and a scrape
  sums the files (prometheus_client's multiprocess mode); ``METRICS_EXTRA_DIRS`` adds other processes' folders on
  the same host (the Celery worker's), so one scrape of the web listener covers web and workers.
- **State series** computed at scrape time by the apps that own the state (registered with
  ``register_collector`` in their ``ready()``, as readiness checks are with ``portal.health``), so no process
  keeps shared counters that could drift: ``tenants.metrics`` (quota use and limits), ``services.metrics``
  (service orders by kind and state, per tenant; the QKD links' series re-exported from the KMEs with a ``node``
  label), ``qrng.metrics`` (health-test failures, pool level); and here the Celery queue depth (Redis).

Cardinality is bounded: labels are tenants, meters, order kinds and states, links, nodes, sources, routes
(URL patterns, not paths), task names; never a key, stream, request or order ID.

Access (``scrape_allowed``): a ``Bearer`` token equal to ``METRICS_TOKEN``, or a direct connection from an
address in ``METRICS_ALLOWED_NETWORKS`` (default loopback only). A request that came through a proxy (it has
``X-Forwarded-For``) is judged by the token alone: the proxy's own address says nothing about the client.
"""

from __future__ import annotations

import glob
import hmac
import inspect
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}

HTTP_REQUESTS = Counter("qxaas_http_requests", "HTTP requests answered by the web listener.",
                        ["method", "route", "group", "status"])
HTTP_LATENCY = Histogram("qxaas_http_request_duration_seconds", "Time to answer an HTTP request (web listener).",
                         ["group", "route"], buckets=LATENCY_BUCKETS)
TASKS = Counter("qxaas_celery_tasks", "Celery tasks finished, by outcome (success, failure, retry, ...).",
                ["task", "outcome"])
TASK_LATENCY = Histogram("qxaas_celery_task_duration_seconds", "Run time of Celery tasks.", ["task"],
                         buckets=TASK_BUCKETS)


# -- access ---------------------------------------------------------------------------------------------------
def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    raw = getattr(settings, "METRICS_ALLOWED_NETWORKS", None) or ["127.0.0.1/32", "::1/128"]
    return [ipaddress.ip_network(n.strip(), strict=False) for n in raw if n.strip()]


def scrape_allowed(remote_addr: str | None, authorization: str | None, proxied: bool) -> bool:
    """The metrics token, or a direct connection from an allowed network."""
    token = getattr(settings, "METRICS_TOKEN", "")
    if (token and authorization and authorization.startswith("Bearer ")
            and hmac.compare_digest(authorization[7:].strip().encode(), token.encode())):
        return True
    if proxied or not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in _networks())


def refused() -> JsonResponse:
    return JsonResponse({"error": {"code": "forbidden", "message": "metrics are for the operator's scrapers: "
                                   "METRICS_TOKEN or an address in METRICS_ALLOWED_NETWORKS", "details": None}},
                        status=403)


# -- HTTP requests ----------------------------------------------------------------------------------------------
def route_group(route: str) -> str:
    """A few groups the SLOs are written for (key delivery is the one the error budget is about)."""
    if any(part in route for part in ("enc_keys", "dec_keys", "etsi004", "qkd/keys")):
        return "key_delivery"
    if route.startswith("api/entropy"):
        return "entropy"
    if route in ("metrics", "healthz", "readyz"):
        return "ops"
    if route.startswith("api/"):
        return "api"
    return "web"


class MetricsMiddleware:
    """Counts and times every request by URL pattern (``api/v1/keys/<str:sae>/enc_keys``), never by path."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.route or match.view_name or "unnamed") if match else "unmatched"
        group = route_group(route)
        method = request.method if request.method in METHODS else "OTHER"
        HTTP_REQUESTS.labels(method, route, group, str(response.status_code)).inc()
        HTTP_LATENCY.labels(group, route).observe(time.perf_counter() - start)
        return response


# -- Celery tasks -------------------------------------------------------------------------------------------------
_task_started: dict[str, float] = {}
REQUEST_ID_TASK_HEADER = "qxaas_request_id"


def connect_celery_signals() -> None:
    """Task outcome and duration metrics; the request ID travels with the task and tags its log lines."""
    from celery import signals

    from portal import logs

    @signals.before_task_publish.connect(weak=False)
    def _publish(headers=None, **_kwargs):
        rid = logs.current("request_id")
        if rid and headers is not None:
            headers.setdefault(REQUEST_ID_TASK_HEADER, rid)

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id=None, task=None, args=None, kwargs=None, **_kwargs):
        _task_started[task_id] = time.perf_counter()
        order_id = _order_argument(task, args or (), kwargs or {})
        logs.bind(task=getattr(task, "name", None), order_id=order_id, tenant=None,
                  request_id=getattr(getattr(task, "request", None), REQUEST_ID_TASK_HEADER, None))

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id=None, task=None, state=None, **_kwargs):
        started = _task_started.pop(task_id, None)
        name = getattr(task, "name", "unknown")
        if started is not None:
            TASK_LATENCY.labels(name).observe(time.perf_counter() - started)
        TASKS.labels(name, (state or "unknown").lower()).inc()
        logs.bind(task=None, order_id=None, tenant=None, request_id=None)


ORDER_ARGUMENTS = ("order_id", "order_uuid", "session_uuid", "stream_uuid", "tunnel_uuid")


def _order_argument(task: Any, args: tuple, kwargs: dict) -> str | None:
    """The service order a task works on, when one of its parameters names it (by keyword or position)."""
    for name in ORDER_ARGUMENTS:
        if kwargs.get(name):
            return str(kwargs[name])
    try:
        bound = inspect.signature(task.run).bind_partial(*args, **kwargs).arguments
    except (AttributeError, TypeError, ValueError):
        return None
    return next((str(bound[name]) for name in ORDER_ARGUMENTS if bound.get(name)), None)


# -- state computed at scrape time ---------------------------------------------------------------------------------
# Apps register the series they own, computed at scrape time (as they register readiness checks in portal.health):
# tenants (quotas), services (orders, the QKD network), qrng (health tests, pool). {name: () -> families}
STATE_COLLECTORS: dict[str, Callable[[], Iterable[Metric]]] = {}


def register_collector(name: str, collect: Callable[[], Iterable[Metric]]) -> None:
    """Add ``collect`` to every scrape of ``/metrics``; a failure is reported in ``qxaas_metrics_collector_up``."""
    STATE_COLLECTORS[name] = collect


def gauge(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _queue_keys(queue: str) -> list[str]:
    # kombu's Redis transport keeps one list per priority step: "celery", "celery\x06\x163", ...
    return [queue] + [f"{queue}\x06\x16{step}" for step in (1, 2, 3, 4, 5, 6, 7, 8, 9)]


_redis_client: Any = None


def celery_families() -> Iterator[Metric]:
    global _redis_client
    broker = settings.CELERY_BROKER_URL
    if broker.startswith("redis+socket://"):  # kombu's spelling of a unix socket; redis-py's is unix://
        broker = "unix://" + broker.removeprefix("redis+socket://").replace("virtual_host=", "db=")
    if not broker.startswith(("redis://", "rediss://", "unix://")):
        return
    import redis

    if _redis_client is None:
        _redis_client = redis.Redis.from_url(broker, socket_timeout=2, socket_connect_timeout=2)
    queues = getattr(settings, "METRICS_CELERY_QUEUES", None) or ["celery"]
    samples = []
    for queue in queues:
        with _redis_client.pipeline(transaction=False) as pipe:
            for key in _queue_keys(queue):
                pipe.llen(key)
            samples.append(([queue], sum(pipe.execute())))
    yield gauge("qxaas_celery_queue_length", "Tasks waiting in the broker (Redis list length).", ["queue"], samples)


class StateCollector(Collector):
    """The scrape-time series; a part that fails is reported in ``qxaas_metrics_collector_up`` and skipped."""

    def collect(self) -> Iterator[Metric]:
        status = []
        for name, part in (("celery", celery_families), *STATE_COLLECTORS.items()):
            try:
                families = list(part())
            except Exception:
                log.exception("metrics: the %s collector failed", name)
                status.append(([name], 0.0))
                continue
            status.append(([name], 1.0))
            yield from families
        yield gauge("qxaas_metrics_collector_up", "1 when the part of the scrape computed from the database, "
                     "Redis or the KMEs succeeded.", ["collector"], status)


def multiprocess_dirs() -> list[str]:
    dirs = [os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")]
    dirs += [d.strip() for d in getattr(settings, "METRICS_EXTRA_DIRS", []) if d.strip()]
    return [d for d in dirs if d and os.path.isdir(d)]


class _Files(Collector):
    """prometheus_client's multiprocess merge over several folders (web and worker processes)."""

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = dirs

    def collect(self) -> Iterable[Metric]:
        files = [f for d in self.dirs for f in glob.glob(os.path.join(d, "*.db"))]
        return MultiProcessCollector.merge(files, accumulate=True)


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    dirs = multiprocess_dirs()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry.register(_Files(dirs))
    else:  # one process: its own values
        for collector in (HTTP_REQUESTS, HTTP_LATENCY, TASKS, TASK_LATENCY):
            registry.register(_Reuse(collector))
        if dirs:
            registry.register(_Files(dirs))
    registry.register(StateCollector())
    return generate_latest(registry)


class _Reuse(Collector):
    """A metric of the default registry, shown in another registry."""

    def __init__(self, metric: Collector) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return self.metric.collect()


def metrics_view(request: HttpRequest) -> HttpResponse:
    proxied = "HTTP_X_FORWARDED_FOR" in request.META or "HTTP_X_REAL_IP" in request.META
    if not scrape_allowed(request.META.get("REMOTE_ADDR"), request.headers.get("Authorization"), proxied):
        return refused()
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)


__all__ = ["MetricsMiddleware", "connect_celery_signals", "metrics_view", "render", "scrape_allowed"]
