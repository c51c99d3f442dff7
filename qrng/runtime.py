"""The process-wide entropy service, built lazily from settings: sources, pool backend, alarms, resets.

One ``EntropyService`` per process (web worker, Celery worker), built on first use from:

- ``QRNG_SOURCES`` (JSON list, docs/qrng.md), or with nothing configured the embedded network twin's QRNG
  (``GET {node}/api/v1/entropy`` over mTLS with the portal's client certificate, found in the twin's
  ``endpoints.json`` like the SD-QKD registry finds its nodes), always labelled simulated;
- a Redis pool shared by every process when ``REDIS_URL`` is set (filled by the ``qrng.tasks.fill_pool``
  beat task), a per-process local pool otherwise (requests read through the health-tested sources).

The service is rebuilt when its configuration changes (the twin restarted elsewhere, settings overridden in
tests). Health alarms are logged and recorded as ``SourceAlarm`` rows; an operator's reset (``reset_source``)
reaches every process through those rows, and each process reruns the start-up test before serving again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from qrng.pool import LocalBackend, PoolFiller, RedisBackend
from qrng.service import EntropyService
from qrng.sources import (
    HEALTH_OK,
    HEALTH_UNTESTED,
    Alarm,
    EntropySourceError,
    NoHealthyEntropySource,
    default_source_config,
)

log = logging.getLogger(__name__)
alarm_log = logging.getLogger("qrng.alarms")

RESET_CHECK_INTERVAL_S = 1.0  # how often a process with a stopped source looks for an operator's reset
FILL_MAX_SECONDS = 10.0  # one fill_pool run; beat starts the next one 2 s later


class EntropyNotConfigured(NoHealthyEntropySource):
    """No source can exist yet: nothing configured and the embedded twin is not running (503)."""


@dataclass
class _Runtime:
    fingerprint: str
    service: EntropyService
    redis_client: Any = None
    filler: PoolFiller | None = None
    last_reset_check: float = 0.0


_lock = threading.Lock()
_current: _Runtime | None = None
_twin_cache: tuple[float, dict] | None = None  # (mtime, parsed endpoints.json)


# -- configuration ------------------------------------------------------------------------------------------


def twin_endpoints_file() -> Path:
    return Path(settings.QKD_TWIN_STATE_DIR) / "endpoints.json"


def _twin_endpoints() -> dict | None:
    global _twin_cache
    path = twin_endpoints_file()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    if _twin_cache is None or _twin_cache[0] != mtime:
        _twin_cache = (mtime, json.loads(path.read_text()))
    return _twin_cache[1]


def twin_source_config(endpoints: dict) -> list[dict]:
    """The default source: the twin node's simulated QRNG, reached like the portal reaches its KMEs."""
    nodes = endpoints.get("nodes") or {}
    if not nodes:
        raise EntropyNotConfigured("the embedded network twin lists no nodes, so it has no QRNG to serve from")
    wanted = settings.QRNG_TWIN_NODE
    if wanted and wanted not in nodes:
        raise ImproperlyConfigured(f"QRNG_TWIN_NODE={wanted!r} is not a twin node; nodes: {sorted(nodes)}")
    node = wanted or next((n for n, e in nodes.items() if e.get("local", True)), next(iter(nodes)))
    tls: dict[str, Any] = {}
    if not endpoints.get("insecure"):
        portal = endpoints["portal"]
        tls = {"verify": endpoints["ca"], "client_cert": portal["cert"], "client_key": portal["key"]}
    return default_source_config(nodes[node]["url"], **tls)


def source_configs() -> list[dict]:
    """The operator's sources, or the twin default; raises ``EntropyNotConfigured`` when neither exists."""
    if settings.QRNG_SOURCES:
        try:
            configs = json.loads(settings.QRNG_SOURCES)
        except json.JSONDecodeError as exc:
            raise ImproperlyConfigured(f"QRNG_SOURCES is not valid JSON: {exc}") from exc
        if not isinstance(configs, list) or not configs:
            raise ImproperlyConfigured("QRNG_SOURCES must be a non-empty JSON list of sources (docs/qrng.md)")
        return configs
    endpoints = _twin_endpoints()
    if endpoints is None:
        raise EntropyNotConfigured(
            "no entropy source is configured: QRNG_SOURCES is unset and the embedded network twin, whose "
            f"simulated QRNG is the default source, is not running ({twin_endpoints_file()} does not exist); "
            "start it with `make run` or configure QRNG_SOURCES"
        )
    return twin_source_config(endpoints)


def _fingerprint(configs: list[dict]) -> str:
    material = {
        "sources": configs,
        "redis": settings.REDIS_URL,
        "key": settings.QRNG_POOL_KEY,
        "target": settings.QRNG_POOL_TARGET_BYTES,
        "chunk": settings.QRNG_POOL_CHUNK_BYTES,
        "filler": settings.QRNG_POOL_FILLER_THREAD,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


# -- alarms -------------------------------------------------------------------------------------------------


def record_alarm(alarm: Alarm) -> None:
    """The ``on_alarm`` hook: log it and keep it for operators (capabilities, the Entropy page)."""
    from qrng.models import SourceAlarm

    kind, simulated = "", False
    current = _current
    if current is not None:
        try:
            source = current.service.sources.get(alarm.source)
            kind, simulated = source.kind, source.simulated
        except LookupError:
            pass
    alarm_log.error("ALARM entropy source %s stopped: %s test failed at sample %d (%s)",
                    alarm.source, alarm.test, alarm.sample_index, alarm.detail)
    SourceAlarm.objects.create(source=alarm.source, kind=kind, simulated=simulated, test=alarm.test[:50],
                               sample_index=alarm.sample_index, detail=alarm.detail[:300])


def open_alarms(limit: int = 20) -> list[dict]:
    from qrng.models import SourceAlarm

    return [
        {"source": a.source, "kind": a.kind, "simulated": a.simulated, "test": a.test,
         "sample_index": a.sample_index, "detail": a.detail, "at": a.created_at.isoformat()}
        for a in SourceAlarm.objects.filter(reset_at__isnull=True)[:limit]
    ]


def reset_source(name: str, user=None) -> int:
    """Operator action: clear a stopped source everywhere. Returns the number of alarms closed.

    Every process applies it on its next use of the service (``_apply_resets``): the source reruns its
    start-up test, and a source still broken raises a fresh alarm.
    """
    from qrng.models import SourceAlarm

    service = get_service()
    service.sources.get(name)  # UnknownEntropySource (400) for a name not configured
    closed = SourceAlarm.objects.filter(source=name, reset_at__isnull=True).update(reset_at=timezone.now(),
                                                                                    reset_by=user)
    _apply_resets(_current, force=True)
    return closed


def _apply_resets(current: _Runtime | None, force: bool = False) -> None:
    from qrng.models import SourceAlarm

    if current is None:
        return
    failed = [e.source for e in current.service.sources.entries if not e.source.healthy]
    now = time.monotonic()
    if not failed or (not force and now - current.last_reset_check < RESET_CHECK_INTERVAL_S):
        return
    current.last_reset_check = now
    for source in failed:
        failed_at = datetime.fromtimestamp(source.last_alarm.at if source.last_alarm else 0, tz=UTC)
        if SourceAlarm.objects.filter(source=source.name, reset_at__gte=failed_at).exists():
            log.warning("entropy source %s reset by an operator: rerunning its start-up test", source.name)
            try:
                source.reset()
            except Exception as exc:  # still broken: it raised a new alarm and stays stopped
                log.error("entropy source %s failed again after its reset: %s", source.name, exc)


# -- the service --------------------------------------------------------------------------------------------


def _build(configs: list[dict], fingerprint: str) -> _Runtime:
    redis_client = None
    if settings.REDIS_URL:
        import redis

        redis_client = redis.Redis.from_url(settings.REDIS_URL)
        # One pool per source configuration: chunks of a configuration no longer in force are never served.
        # The shared pool is named by its sources only: every process drawing from the same sources shares it,
        # whatever its local settings (the filler thread, sizes) are.
        pool_id = hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:16]
        backend = RedisBackend(redis_client, key=f"{settings.QRNG_POOL_KEY}:{pool_id}")
    else:
        backend = LocalBackend()
    service = EntropyService.from_config(
        configs, backend=backend, on_alarm=record_alarm,
        chunk_bytes=settings.QRNG_POOL_CHUNK_BYTES, target_bytes=settings.QRNG_POOL_TARGET_BYTES,
    )
    for entry in service.sources.entries:
        path = getattr(entry.source.source, "path", None)
        if path and Path(path).is_file():
            # A regular file is not a device: every process reads it from its start, so two processes would
            # serve the same bytes. Fine for tests and benchmarks in one process, never for production.
            log.warning("entropy source %s reads the regular file %s: use it in one process only",
                        entry.source.name, path)
    filler = None
    if settings.QRNG_POOL_FILLER_THREAD and redis_client is None:
        # Reads ahead while requests are served: large downloads start from memory and the device read
        # overlaps the socket writes of the request threads.
        filler = PoolFiller(service.pool).start()
    return _Runtime(fingerprint, service, redis_client, filler)


def get_service() -> EntropyService:
    """This process's entropy service (raises ``EntropyNotConfigured`` when there is no source at all)."""
    global _current
    configs = source_configs()
    fingerprint = _fingerprint(configs)
    current = _current
    if current is None or current.fingerprint != fingerprint:
        with _lock:
            current = _current
            if current is None or current.fingerprint != fingerprint:
                if current is not None:
                    _discard(current)
                current = _current = _build(configs, fingerprint)
    _apply_resets(current)
    return current.service


def _discard(current: _Runtime) -> None:
    if current.filler is not None:
        current.filler.stop()
    current.service.sources.close()
    current.service.pool.backend.clear()  # nothing of an old configuration is served later


def reset_service() -> None:
    """Forget this process's service, dropping its buffered entropy (tests; configuration reloads)."""
    global _current, _twin_cache
    with _lock:
        if _current is not None:
            _discard(_current)
        _current = None
        _twin_cache = None


def fill_pool(max_seconds: float = FILL_MAX_SECONDS) -> dict:
    """Top up the shared Redis pool (the beat task). A local pool is per process: requests read through."""
    try:
        service = get_service()
    except EntropyNotConfigured as exc:
        return {"added": 0, "skipped": str(exc)}
    current = _current
    if current is None or current.redis_client is None:
        return {"added": 0, "skipped": "local pool: web processes read through their health-tested sources"}
    # One filler at a time across workers: concurrent fills would only contend for the same sources.
    lock = current.redis_client.lock(f"{settings.QRNG_POOL_KEY}:fill-lock", timeout=max_seconds + 30,
                                     blocking=False)
    if not lock.acquire():
        return {"added": 0, "skipped": "another worker is filling"}
    try:
        added = service.pool.fill(max_seconds=max_seconds)
    finally:
        lock.release()
    return {"added": added, "level": service.pool.level(), "error": service.pool.last_error}


def _start_untested(service: EntropyService) -> dict[str, str]:
    """Run the start-up test of sources this process has not used yet, so their state is a measured one.

    The start-up samples are discarded (never served). Returns why sources could not start.
    """
    problems = {}
    for entry in service.sources.entries:
        if entry.source.health == HEALTH_UNTESTED:
            try:
                entry.source.start()
            except EntropySourceError as exc:
                problems[entry.source.name] = str(exc)
    return problems


INTERNAL_SOURCE_FIELDS = ("host", "path", "url", "url_template")
REDACTED = "(internal)"


def _internal_strings() -> list[str]:
    """Device paths, appliance URLs, hosts and credentials of the configured sources, longest first."""
    try:
        service = get_service()
    except (EntropyNotConfigured, ImproperlyConfigured):
        return []
    found: set[str] = set()
    for entry in service.sources.entries:
        raw = entry.source.source
        if getattr(raw, "path", None):
            found.add(str(raw.path))
        if hasattr(raw, "internal_strings"):
            found |= raw.internal_strings()
    return sorted(found, key=len, reverse=True)


def redact(text: str | None) -> str | None:
    """``text`` without the sources' paths, URLs, hosts and credentials (for tenants)."""
    if not text:
        return text
    for secret in _internal_strings():
        text = text.replace(secret, REDACTED)
    return text


def capabilities(include_internal: bool = False) -> dict:
    """The capabilities document: formats, limits, sources and their health, alarms; works with no source.
    Where the sources are (paths, appliance URLs) is for operators: ``include_internal``."""
    body = _capabilities()
    if not include_internal:
        for source in body["sources"]:
            for field in INTERNAL_SOURCE_FIELDS:
                source.pop(field, None)
            source["last_error"] = redact(source.get("last_error"))
        body["reason"] = redact(body.get("reason"))
        if isinstance(body.get("pool"), dict):
            body["pool"]["last_error"] = redact(body["pool"].get("last_error"))
    return body


def _capabilities() -> dict:
    try:
        service = get_service()
    except EntropyNotConfigured as exc:
        from qrng import formats, quality

        body: dict[str, Any] = {
            **formats.describe_formats(), "sources": [], "any_simulated": False, "simulated_notice": None,
            "pool": None, "state": "unavailable", "reason": str(exc),
            "quality_report": {"max_bytes": quality.MAX_REPORT_BYTES, "default_bytes": quality.DEFAULT_REPORT_BYTES},
        }
    else:
        problems = _start_untested(service)
        body = service.capabilities()
        for source in body["sources"]:
            source["last_error"] = source.get("last_error") or problems.get(source["name"])
        healthy = any(s["health"] == HEALTH_OK for s in body["sources"])
        body["state"] = "available" if healthy else "unavailable"
        body["reason"] = None if healthy else "no entropy source is healthy: " + "; ".join(
            f"{s['name']}: {s['last_error'] or s['health']}" for s in body["sources"])
    body["max_stream_bytes"] = min(body["max_stream_bytes"], settings.QRNG_MAX_REQUEST_BYTES)
    body["alarms"] = open_alarms()
    return body
