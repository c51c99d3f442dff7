"""The QRNG's series of ``/metrics`` (registered with ``portal.metrics``): health-test failures (the alarms kept in
the database, so every process reports the same), sources stopped by an alarm, and the entropy pool's level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from prometheus_client.core import Metric

from portal.metrics import gauge, register_collector

from . import runtime
from .models import SourceAlarm

log = logging.getLogger(__name__)


def qrng_families() -> Iterator[Metric]:
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
    yield gauge("qxaas_qrng_source_stopped", "1 while an entropy source is stopped by a health-test alarm "
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
        yield gauge("qxaas_qrng_pool_bytes", "Health-tested entropy waiting in the pool, bytes.",
                     ["backend"], [(["redis" if current.redis_client is not None else "local"], pool.level())])
        yield gauge("qxaas_qrng_pool_target_bytes", "The pool's fill target, bytes.", [],
                     [([], settings.QRNG_POOL_TARGET_BYTES)])


register_collector("qrng", qrng_families)
