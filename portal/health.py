"""Liveness and readiness checks (``/healthz``, ``/readyz``)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

# Later apps (the SD-QKD client, QRNG sources) register their own readiness checks here.
READINESS_CHECKS: dict[str, Callable[[], str]] = {}


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def check_broker() -> str:
    from portal.celery_app import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        return conn.transport_cls if isinstance(conn.transport_cls, str) else conn.transport.driver_name


def check_cache() -> str:
    from django.core.cache import cache

    cache.set("qxaas:readyz", "1", 5)
    if cache.get("qxaas:readyz") != "1":
        raise RuntimeError("cache does not keep values")
    return "redis" if settings.REDIS_URL else "local-memory"


READINESS_CHECKS.update(database=check_database, broker=check_broker, cache=check_cache)


def readiness() -> tuple[bool, dict[str, dict]]:
    results, ok = {}, True
    for name, check in READINESS_CHECKS.items():
        try:
            results[name] = {"ok": True, "backend": check()}
        except Exception as exc:  # a readiness probe reports every failure, it never raises
            ok = False
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return ok, results


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    ok, checks = readiness()
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)
