"""The gateways' VICI event streams (ipsec/events.py) against real charons in the lab: a tunnel's SA going down
and a charon dying are reported by the event stream itself, the handler has the tunnel looked at at once, and the
listener comes back when charon does. Needs root and strongSwan (skips without them, fails under CI)."""

from __future__ import annotations

import queue
import signal
import threading

import pytest

from ipsec import events, vici_driver
from ipsec.models import Tunnel
from tests.ipsec.test_tunnels import esp_proposal, order  # noqa: F401 - esp_proposal is an autouse fixture

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BOUND_S = 15.0  # every wait below is bounded; events normally arrive in milliseconds


def next_event(seen: queue.Queue, want) -> events.TunnelEvent:
    """The first event matching ``want`` (others are skipped), within BOUND_S."""
    while True:
        try:
            event = seen.get(timeout=BOUND_S)
        except queue.Empty:
            pytest.fail("no matching event from the gateway's event stream")
        if want(event):
            return event


def test_parse_keeps_only_the_portals_tunnels_and_no_sa_details():
    message = {"up": b"yes", "qx-1234": {"uniqueid": b"7", "state": b"ESTABLISHED"}, "someone-else": {}}
    assert events.parse("ike-updown", message) == [events.TunnelEvent("up", "ike", "qx-1234")]
    assert events.parse("child-updown", {"qx-1234": {}}) == [events.TunnelEvent("down", "child", "qx-1234")]
    assert events.parse("ike-rekey", {"qx-9": {"old": {}, "new": {}}}) == [events.TunnelEvent("rekey", "ike", "qx-9")]


def test_the_trigger_asks_for_one_pass_per_burst_of_downs():
    calls = []
    trigger = events.MonitorTrigger(lambda: calls.append(1))
    assert not trigger("CAIT", events.TunnelEvent("up", "ike", "qx-1"))
    assert not trigger("CAIT", events.TunnelEvent("listening", "", ""))
    assert trigger("CAIT", events.TunnelEvent("down", "ike", "qx-1"))
    assert not trigger("CAIT", events.TunnelEvent("down", "child", "qx-1"))  # the same burst
    assert calls == [1]


def test_a_dropped_sa_and_a_dead_charon_come_through_the_event_stream(ipsec_lab, gateways, tenant_api,
                                                                      django_capture_on_commit_callbacks):
    tenant, client = tenant_api("evt")
    response = order(client, django_capture_on_commit_callbacks, name="events")
    assert response.status_code == 202, response.content
    tunnel = Tunnel.objects.for_tenant(tenant).get(uuid=response.json()["id"])
    assert tunnel.state == "up", tunnel.reason
    uri = {g.node_id: g.vici_uri for g in gateways}["Rectorado"]

    seen: queue.Queue = queue.Queue()
    stop = threading.Event()
    listener = threading.Thread(target=events.watch, args=("Rectorado", uri, stop, lambda _n, e: seen.put(e)),
                                daemon=True)
    listener.start()
    try:
        next_event(seen, lambda e: e.kind == "listening")

        # The peer closes the tunnel's IKE SA: the event names the tunnel; the handler's pass degrades it at once
        # (no periodic job runs in this test).
        vici_driver.terminate({g.node_id: g.vici_uri for g in gateways}["CAIT"], tunnel.conn_name)
        down = next_event(seen, lambda e: e.kind == "down")
        assert down.conn == tunnel.conn_name and down.layer in ("ike", "child")
        assert events.MonitorTrigger(events._enqueue_monitor)("Rectorado", down)
        tunnel.refresh_from_db()
        assert tunnel.state == "degraded" and "dropped" in tunnel.reason

        # charon dies: the stream says so; it returns: the listener is back by itself.
        ipsec_lab.stop_charon("Rectorado", signal.SIGKILL)
        next_event(seen, lambda e: e.kind == "gateway_lost")
        ipsec_lab.start_charon("Rectorado")
        next_event(seen, lambda e: e.kind == "listening")
    finally:
        stop.set()
        listener.join(timeout=BOUND_S)
        if not ipsec_lab.charon_alive("Rectorado"):
            ipsec_lab.start_charon("Rectorado")
    assert not listener.is_alive()
