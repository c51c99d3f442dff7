"""``/metrics``: the portal's Prometheus endpoint (text format 0.0.4), for operators' scrapers only.

Two kinds of series:

- **Event series** counted where they happen: HTTP requests and latency (``MetricsMiddleware``), Celery task
  outcomes and durations (Celery signals). gunicorn and Celery run several processes, so with
  ``PROMETHEUS_MULTIPROC_DIR`` set each process writes its values to memory-mapped files there and a scrape
  sums the files (prometheus_client's multiprocess mode); ``METRICS_EXTRA_DIRS`` adds other processes' folders on
  the same host (the Celery worker's), so one scrape of the web listener covers web and workers.
- **State series** computed at scrape time from the systems that own the state, so no process keeps shared
  counters that could drift: per-tenant quota use and limits and live service orders (the database: the
  same counters ``tenants.quota`` enforces), service orders by kind and state, QRNG health-test failures and pool
  level, the Celery queue depth (Redis), and the QKD links.

The QKD links' series are the KMEs' own: the portal scrapes each registered node's ``/metrics`` (the twin exports
key rate, QBER, excess noise, reconciliation efficiency, aborted blocks, key-store fill, link state) with the
credentials it already holds for that node (the twin wants the portal's client certificate) and re-exports them
with a ``node`` label naming the KME that reported them. Why here and not a Prometheus job per KME: the portal
has the node registry and the mTLS credentials (a job per KME would need the portal's private key copied to
the Prometheus host and a config change whenever an operator adds a node), and it can say which KMEs did not
answer (``qxaas_kme_up``), including real KMEs that have no Prometheus endpoint. A single-process twin reports
the whole network at every node: a series is taken from the first node (in node order) that reports it, so
each link appears once and another node still reports it when one KME is down.

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
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
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
def _gauge(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def tenant_families() -> Iterator[Metric]:
    """Quota use and limits (current windows) and live service orders, for every tenant, in a few queries."""
    from services.orders import order_types
    from tenants.meters import QUOTA_KEYS, split_quota_key, window_bounds
    from tenants.models import PlanQuota, QuotaCounter, Tenant, TenantQuotaOverride

    tenants = {t.pk: (t.slug, t.plan_id) for t in Tenant.objects.only("slug", "plan_id")}
    plan_limits: dict[int, dict[str, int]] = {}
    for q in PlanQuota.objects.all():
        plan_limits.setdefault(q.plan_id, {})[q.quota_key] = q.limit
    overrides: dict[int, dict[str, int]] = {}
    for o in TenantQuotaOverride.objects.unscoped().all():
        overrides.setdefault(o.tenant_id, {})[o.quota_key] = o.limit
    now = datetime.now(UTC)
    window_start = {key: window_bounds(split_quota_key(key)[1], now)[0] for key in QUOTA_KEYS}
    used: dict[tuple[int, str], int] = {}
    for c in QuotaCounter.objects.unscoped().filter(window_start__in=set(window_start.values())):
        if window_start.get(c.quota_key) == c.window_start:
            used[(c.tenant_id, c.quota_key)] = c.used
    limit_samples, used_samples = [], []
    for tenant_id, (slug, plan_id) in tenants.items():
        limits = {**plan_limits.get(plan_id, {}), **overrides.get(tenant_id, {})}
        for key in QUOTA_KEYS:
            meter, window = split_quota_key(key)
            labels = [slug, key, meter, window.value]
            used_samples.append((labels, used.get((tenant_id, key), 0)))
            limit_samples.append((labels, limits.get(key, 0)))
    quota_labels = ["tenant", "quota", "meter", "window"]
    yield _gauge("qxaas_tenant_quota_used", "Use of the tenant's quota in its current window (day, month) or "
                 "now (concurrent: live tunnels, sessions, streams). The month window of a cumulative meter is "
                 "a counter reset monthly: rate() of it is the tenant's consumption rate.", quota_labels, used_samples)
    yield _gauge("qxaas_tenant_quota_limit", "The tenant's quota limit (-1 unlimited, 0 not in the plan).",
                 quota_labels, limit_samples)

    by_state, by_tenant = [], []
    for order_type in order_types():
        model = order_type.model
        counts: dict[str, int] = dict.fromkeys(model.live_states, 0)
        per_tenant: dict[int, int] = {}
        rows = (model.objects.unscoped().filter(state__in=list(model.live_states))
                .values_list("tenant_id", "state"))
        for tenant_id, state in rows.iterator():
            counts[state] = counts.get(state, 0) + 1
            per_tenant[tenant_id] = per_tenant.get(tenant_id, 0) + 1
        by_state += [([model.order_kind, state], n) for state, n in counts.items()]
        by_tenant += [([tenants[t][0], model.order_kind], n) for t, n in per_tenant.items() if t in tenants]
    yield _gauge("qxaas_service_orders", "Live service orders by kind and state (degraded tunnels, sessions...).",
                 ["kind", "state"], by_state)
    yield _gauge("qxaas_tenant_live_orders", "Live service orders of the tenant by kind (streams, tunnels, "
                 "sessions).", ["tenant", "kind"], by_tenant)
    yield _gauge("qxaas_tenants", "Tenants by status.", ["status"],
                 [([status], n) for status, n in _count_by(Tenant.objects.values_list("status", flat=True))])


def _count_by(values: Iterable[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return sorted(counts.items())


def qrng_families() -> Iterator[Metric]:
    from qrng import runtime
    from qrng.models import SourceAlarm

    failures: dict[tuple[str, str], int] = {}
    stopped: dict[str, int] = {}
    for source, test, reset_at in SourceAlarm.objects.values_list("source", "test", "reset_at"):
        failures[(source, test)] = failures.get((source, test), 0) + 1
        stopped.setdefault(source, 0)
        if reset_at is None:
            stopped[source] = 1
    failures_family = Metric("qxaas_qrng_health_test_failures", "SP 800-90B health-test failures (alarms) of "
                             "entropy sources, by test.", "counter")
    for (source, test), n in sorted(failures.items()):
        failures_family.add_sample("qxaas_qrng_health_test_failures_total", {"source": source, "test": test}, n)
    yield failures_family
    yield _gauge("qxaas_qrng_source_stopped", "1 while an entropy source is stopped by a health-test alarm "
                 "(until an operator resets it).", ["source"], [([s], v) for s, v in sorted(stopped.items())])
    current = runtime._current  # only a service this process already runs (building one starts sources)
    if current is None and settings.REDIS_URL:
        try:
            runtime.get_service()  # with Redis the pool is shared and building the service reads nothing
            current = runtime._current
        except Exception as exc:  # no source configured or reachable: no pool to report
            log.debug("no entropy service for the pool level: %s", exc)
    if current is not None:
        pool = current.service.pool
        yield _gauge("qxaas_qrng_pool_bytes", "Health-tested entropy waiting in the pool, bytes.",
                     ["backend"], [(["redis" if current.redis_client is not None else "local"], pool.level())])
        yield _gauge("qxaas_qrng_pool_target_bytes", "The pool's fill target, bytes.", [],
                     [([], settings.QRNG_POOL_TARGET_BYTES)])


def _queue_keys(queue: str) -> list[str]:
    # kombu's Redis transport keeps one list per priority step: "celery", "celery\x06\x163", ...
    return [queue] + [f"{queue}\x06\x16{step}" for step in (1, 2, 3, 4, 5, 6, 7, 8, 9)]


_redis_client: Any = None


def celery_families() -> Iterator[Metric]:
    global _redis_client
    broker = settings.CELERY_BROKER_URL
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
    yield _gauge("qxaas_celery_queue_length", "Tasks waiting in the broker (Redis list length).", ["queue"], samples)


# -- the QKD network: the KMEs' own series, re-exported ----------------------------------------------------------
FEDERATE_TIMEOUT_S = (2.0, 4.0)
FEDERATE_CACHE_S = 5.0  # several web processes and scrapers: ask each KME at most every few seconds
_federated: tuple[float, list[Metric]] | None = None
_federate_lock = threading.Lock()


def _scrape_node(node) -> tuple[str, str | None, float]:
    from services import registry

    start = time.perf_counter()
    client = registry.client_for(node)
    try:
        response = client.session.get(client.endpoint.base_url.rstrip("/") + "/metrics", timeout=FEDERATE_TIMEOUT_S)
    except Exception as exc:  # unreachable, TLS failure: reported as qxaas_kme_up 0
        log.warning("KME %s: metrics unavailable (%s)", node.node_id, type(exc).__name__)
        return node.node_id, None, time.perf_counter() - start
    text = response.text if response.status_code == 200 else ""
    if response.status_code != 200:
        log.info("KME %s has no metrics endpoint (HTTP %s)", node.node_id, response.status_code)
    return node.node_id, text, time.perf_counter() - start


def network_families() -> list[Metric]:
    global _federated
    with _federate_lock:
        if _federated is not None and time.monotonic() - _federated[0] < FEDERATE_CACHE_S:
            return _federated[1]
        families = _federate()
        _federated = (time.monotonic(), families)
        return families


def _federate() -> list[Metric]:
    from services import registry
    from services.models import QkdNode

    registry.ensure_twin_registered()
    nodes = sorted(QkdNode.objects.filter(enabled=True), key=lambda n: n.node_id)
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        results = list(pool.map(_scrape_node, nodes))
    merged: dict[str, Metric] = {}
    seen: set[tuple] = set()
    up, seconds = [], []
    for node_id, text, elapsed in results:
        up.append(([node_id], 0.0 if text is None else 1.0))
        seconds.append(([node_id], elapsed))
        if not text:
            continue
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("KME %s: unparsable metrics (%s)", node_id, exc)
            continue
        for family in families:
            out = merged.get(family.name)
            if out is None:
                out = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                identity = (sample.name, tuple(sorted(sample.labels.items())))
                if identity in seen:
                    continue
                seen.add(identity)
                labels = dict(sample.labels)
                labels.setdefault("node", node_id)  # qkd_node_* series already name their node
                out.add_sample(sample.name, labels, sample.value)
    return [
        _gauge("qxaas_kme_up", "1 when the portal read the KME's metrics (0: unreachable or refused).",
               ["node"], up),
        _gauge("qxaas_kme_scrape_duration_seconds", "Time to read the KME's metrics.", ["node"], seconds),
        *merged.values(),
    ]


class StateCollector(Collector):
    """The scrape-time series; a part that fails is reported in ``qxaas_metrics_collector_up`` and skipped."""

    PARTS = (("tenants", tenant_families), ("qrng", qrng_families), ("celery", celery_families),
             ("network", network_families))

    def collect(self) -> Iterator[Metric]:
        status = []
        for name, part in self.PARTS:
            try:
                families = list(part())
            except Exception:
                log.exception("metrics: the %s collector failed", name)
                status.append(([name], 0.0))
                continue
            status.append(([name], 1.0))
            yield from families
        yield _gauge("qxaas_metrics_collector_up", "1 when the part of the scrape computed from the database, "
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
