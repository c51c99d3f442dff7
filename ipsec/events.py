"""The VICI event stream of every enabled IPsec gateway: a tunnel's SA going down, or its charon dying, is seen
as it happens instead of at the next periodic look.

One listener per gateway (a thread each, ``python manage.py ipsec_events``, run by ``make run``'s supervisor)
registers for ``ike-updown``, ``child-updown``, ``ike-rekey`` and ``child-rekey``. The events only *trigger* a
monitoring pass (``services.monitor``, the same one the 2 s maintenance job enqueues): list-sas stays the one
source of truth, so an event that is stale (the old IKE SA of a make-before-break re-authentication going down
after the new one is up) changes nothing. Events carry SA parameters, never key material; only the connection
name and the kind are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import vici_driver

log = logging.getLogger(__name__)

EVENT_TYPES = ["ike-updown", "child-updown", "ike-rekey", "child-rekey"]
LISTEN_TIMEOUT_S = 1.0        # how often a listener checks whether it should stop
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
GATEWAYS_REFRESH_S = 10.0     # gateways registered or disabled while the listeners run
MONITOR_MIN_INTERVAL_S = 0.5  # a burst of events (every SA of a dead peer) asks for one pass


@dataclass(frozen=True)
class TunnelEvent:
    """One tunnel's part of a VICI event: ``kind`` is ``up``, ``down`` or ``rekey``; ``layer`` ``ike`` or
    ``child``. The listener's own ``listening`` and ``gateway_lost`` (charon died or dropped the session) events
    have an empty ``conn``."""

    kind: str
    layer: str
    conn: str


def parse(event_type: str, message: dict[str, Any]) -> list[TunnelEvent]:
    """The portal's tunnels (connections named ``qx-<order uuid>``) an event is about. For ``*-updown`` the
    message holds ``up = yes`` when the SA came up and nothing when it went down, beside one entry per IKE SA,
    keyed by connection name; ``*-rekey`` messages hold one entry per connection with its old and new SA."""
    layer = event_type.split("-", 1)[0]
    if event_type.endswith("-updown"):
        kind = "up" if vici_driver._s(message.get("up", b"")) == "yes" else "down"
    else:
        kind = "rekey"
    return [TunnelEvent(kind, layer, name) for name, body in message.items()
            if name.startswith("qx-") and isinstance(body, dict)]


def listen(uri: str, stop: threading.Event) -> Iterator[TunnelEvent]:
    """The gateway's tunnel events until ``stop`` is set or the session ends; then one ``gateway_lost`` event
    (unless stopped). A ``listening`` event says the registration is in place (after the first quiet
    ``LISTEN_TIMEOUT_S``). Raises ``GatewayUnavailable`` when charon cannot be reached at all."""
    announced = False
    with vici_driver.session(uri) as session:
        try:
            for event_type, message in session.listen(EVENT_TYPES, timeout=LISTEN_TIMEOUT_S):
                if stop.is_set():
                    return
                if event_type is None:  # a timeout: nothing happened (and the registration is surely done)
                    if not announced:
                        announced = True
                        yield TunnelEvent("listening", "", "")
                    continue
                yield from parse(vici_driver._s(event_type), message)
        except vici_driver.GatewayUnavailable:
            raise
        except Exception as exc:  # the vici package raises bare socket/EOF errors when charon dies
            log.info("VICI event session to %s ended: %s", uri, exc)
    if not stop.is_set():
        yield TunnelEvent("gateway_lost", "", "")


class MonitorTrigger:
    """Enqueues a monitoring pass for events that may change a tunnel's health, at most one per
    ``MONITOR_MIN_INTERVAL_S`` (a dead peer brings down every tunnel it carries at once)."""

    def __init__(self, enqueue: Callable[[], None]) -> None:
        self._enqueue = enqueue
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, node_id: str, event: TunnelEvent) -> bool:
        if event.kind == "listening":
            return False
        if event.kind in ("up", "rekey"):
            log.info("ipsec gateway %s: %s %s %s", node_id, event.layer, event.kind, event.conn)
            return False  # the driver that brought it up (or re-keyed it) already recorded it
        log.warning("ipsec gateway %s: %s", node_id, f"{event.layer} SA of {event.conn} went down"
                    if event.conn else "charon is gone (the event session ended)")
        with self._lock:
            now = time.monotonic()
            if now - self._last < MONITOR_MIN_INTERVAL_S:
                return False
            self._last = now
        self._enqueue()
        return True


def _enqueue_monitor() -> None:
    from . import services

    services._task("monitor").delay()


def watch(node_id: str, uri: str, stop: threading.Event, on_event: Callable[[str, TunnelEvent], Any]) -> None:
    """Listen to one gateway until ``stop``, reconnecting with backoff when its charon goes away."""
    failures = 0
    while not stop.is_set():
        try:
            for event in listen(uri, stop):
                failures = 0
                on_event(node_id, event)
        except vici_driver.GatewayUnavailable as exc:
            if failures == 0:
                log.warning("ipsec gateway %s: no event stream (%s); retrying", node_id, exc)
            failures += 1
        except Exception:  # one bad event or handler error must not end the gateway's listener
            log.exception("ipsec gateway %s: event listener error", node_id)
            failures += 1
        stop.wait(RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)])


def run(stop: threading.Event, on_event: Callable[[str, TunnelEvent], Any] | None = None) -> None:
    """One listener thread per enabled gateway (started and stopped as gateways come and go) until ``stop``."""
    from .models import IpsecGateway

    handler = on_event or MonitorTrigger(_enqueue_monitor)
    running: dict[tuple[str, str], tuple[threading.Thread, threading.Event]] = {}
    while not stop.is_set():
        wanted = {(g.node_id, g.vici_uri) for g in IpsecGateway.objects.filter(enabled=True)}
        for key in set(running) - wanted:
            running.pop(key)[1].set()
        for key in wanted - set(running):
            own = threading.Event()
            thread = threading.Thread(target=watch, args=(*key, own, handler), name=f"vici-events-{key[0]}",
                                      daemon=True)
            thread.start()
            running[key] = (thread, own)
        stop.wait(GATEWAYS_REFRESH_S)
    for _, own in running.values():
        own.set()
    for thread, _ in running.values():
        thread.join(timeout=LISTEN_TIMEOUT_S + 1)
