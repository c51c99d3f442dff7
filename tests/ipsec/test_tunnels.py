"""IPsec tunnels end to end: ordered through the API, keyed by the real twin, provisioned in real strongSwan
charons in network namespaces (kernel-libipsec), traffic between tenant hosts, re-keys under load, a charon killed
and restarted, close; and bad input that must leave nothing behind."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from ipsec import services, vici_driver
from ipsec.models import IpsecGateway, Tunnel, TunnelKeyEvent
from services.models import QkdNode
from tenants import quota
from tenants.models import UsageRecord
from tenants.services import set_quota_overrides

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
A, B = "10.100.1.0/24", "10.102.1.0/24"
HOST_A, HOST_B = "10.100.1.1", "10.102.1.1"


PROPOSAL = ["aes256gcm16"]


@pytest.fixture(autouse=True)
def esp_proposal(gateways) -> str:
    """AES-GCM-256 (the default) where the gateways' strongSwan has it (the gcm plugin, Debian's
    libstrongswan-standard-plugins); AES-CBC + HMAC-SHA-256 with only Debian's default plugins."""
    found = services._algorithms(gateways[0])
    PROPOSAL[0] = "aes256gcm16" if found and "AES_GCM_16" in found else "aes256-sha256"
    return PROPOSAL[0]


def slots_used(tenant) -> int:
    return next(s.used for s in quota.quota_states(tenant) if s.quota_key == "ipsec_tunnels")


def order(client, capture, **fields):
    body = {"node_a": "CAIT", "node_b": "Rectorado", "subnet_a": A, "subnet_b": B, "rekey_interval_s": 3600,
            "esp_proposal": PROPOSAL[0], **fields}
    with capture(execute=True):
        return client.post("/api/tunnels/", body, format="json")


def ping(lab, count: int, interval: str = "0.2") -> tuple[int, int]:
    out = lab.exec("CAIT", "ping", "-n", "-c", str(count), "-i", interval, "-W", "2", "-I", HOST_A, HOST_B,
                   check=False, timeout=count * float(interval) + 15).stdout
    sent, received = re.search(r"(\d+) packets transmitted, (\d+) received", out).groups()
    return int(sent), int(received)


def nothing_left(gateways, tunnel) -> bool:
    return not any(vici_driver.holds(gw.vici_uri, tunnel.conn_name) for gw in gateways)


def test_a_tunnel_from_order_to_close(ipsec_lab, gateways, tenant_api, django_capture_on_commit_callbacks):
    tenant, client = tenant_api("upm")
    response = order(client, django_capture_on_commit_callbacks, rekey_interval_s=2, name="cait-rect")
    assert response.status_code == 202, response.content
    tunnel_id = response.json()["id"]
    detail = client.get(f"/api/tunnels/{tunnel_id}/").json()
    assert detail["state"] == "up", detail
    assert detail["current_key_id"] and [e["kind"] for e in detail["key_events"]] == ["initial"]
    tunnel = Tunnel.objects.for_tenant(tenant).get(uuid=tunnel_id)
    gw = {g.node_id: g for g in gateways}
    for node in ("CAIT", "Rectorado"):  # IKE SA with the QKD key as PPK, CHILD SA installed, on both sides
        sa = vici_driver.list_sas(gw[node].vici_uri)[tunnel.conn_name]
        assert sa.state == "ESTABLISHED" and sa.ppk and sa.child_state == "INSTALLED"

    # Traffic between the tenant hosts crosses the CAIT-CCS link as ESP only (UDP-encapsulated: kernel-libipsec).
    iface, _ = ipsec_lab.link_interface("CAIT", "CCS")
    dump = ipsec_lab.popen("CAIT", "tcpdump", "-n", "-l", "-i", iface, "-c", "40", "ip",
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)  # tcpdump attaches
        assert ping(ipsec_lab, 5) == (5, 5)
        time.sleep(0.3)
    finally:
        dump.send_signal(signal.SIGINT)
        seen = dump.communicate(timeout=10)[0]
    assert seen.count("ESP(") >= 10 and "ICMP" not in seen and HOST_A not in seen, seen

    # 5 re-keys, each with a fresh QKD key, under a continuous 100 packets/s ping. The goal is nothing lost; what
    # stock strongSwan's make-before-break re-authentication gives is at most the packets the responder sends on
    # its new SA before the initiator has installed it (a window of ~1 ms: measured 0-3 lost in 20 re-keys,
    # docs/ipsec.md). So: at most one packet per re-key, and the tunnel never stops carrying traffic.
    pinger = ipsec_lab.popen("CAIT", "ping", "-n", "-c", "1000", "-i", "0.01", "-I", HOST_A, HOST_B,
                             stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    for _ in range(5):  # through the periodic job's path: the re-key is due, maintain enqueues it
        Tunnel.objects.for_tenant(tenant).filter(pk=tunnel.pk).update(next_rekey_at=tunnel.created_at)
        services.maintain()
    assert pinger.poll() is None, "the ping ended before the re-keys: the loss count would prove nothing"
    out = pinger.communicate(timeout=30)[0]
    sent, received = (int(x) for x in re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert sent == 1000 and sent - received <= 5, out
    tunnel.refresh_from_db()
    rekeys = list(tunnel.key_events.filter(kind="rekey").order_by("at"))
    assert len(rekeys) == 5 and all(e.ok for e in rekeys), [(e.ok, e.error) for e in rekeys]
    key_ids = [tunnel.key_events.get(kind="initial").key_id, *(e.key_id for e in rekeys)]
    assert len(set(key_ids)) == 6 and tunnel.current_key_id == key_ids[-1] and tunnel.rekey_count == 5
    assert len({e.ike_sa_id for e in rekeys}) == 5
    for node in ("CAIT", "Rectorado"):
        sa = vici_driver.list_sas(gw[node].vici_uri)[tunnel.conn_name]
        assert sa.ppk and sa.up and sa.ike_sas == 1  # the old SAs are gone

    # The Tunnels page: state, counters, the key ID in use and the re-key history (key IDs only).
    from django.contrib.auth import get_user_model
    from django.test import Client

    browser = Client()
    browser.force_login(get_user_model().objects.get(username="upm-owner"))
    page = browser.get("/tunnels/").content.decode()
    assert tunnel_id in page and tunnel.current_key_id in page and all(k in page for k in key_ids)
    assert "Probe" in page and "/api/tunnels/" in page

    # A dead charon: degraded at the next look; back up (a fresh key) once it returns.
    ipsec_lab.stop_charon("Rectorado", signal.SIGKILL)
    services.monitor()
    tunnel.refresh_from_db()
    assert tunnel.state == "degraded" and "Rectorado" in tunnel.reason
    ipsec_lab.start_charon("Rectorado")
    for _ in range(20):  # bounded: backoff starts at 1 s
        services.monitor()
        tunnel.refresh_from_db()
        if tunnel.state == "up":
            break
        time.sleep(0.5)
    assert tunnel.state == "up", tunnel.reason
    assert tunnel.key_events.filter(kind="restore", ok=True).exists()
    assert ping(ipsec_lab, 3) == (3, 3)

    probe = client.post(f"/api/tunnels/{tunnel_id}/probe")
    assert probe.status_code == 200, probe.content
    assert probe.json()["sent"] == 20 and probe.json()["lost"] == 0 and probe.json()["rtt_p50_ms"] > 0

    with django_capture_on_commit_callbacks(execute=True):
        closed = client.post(f"/api/tunnels/{tunnel_id}/close")
    assert closed.status_code == 202
    tunnel.refresh_from_db()
    assert tunnel.state == "closed" and nothing_left(gateways, tunnel)
    assert slots_used(tenant) == 0
    ledger = UsageRecord.objects.for_tenant(tenant).filter(order_id=tunnel.uuid)
    assert sum(r.quantity for r in ledger.filter(meter="ipsec_tunnel_seconds")) >= 1
    keyings = TunnelKeyEvent.objects.filter(tunnel=tunnel, ok=True).count()
    assert sum(r.quantity for r in ledger.filter(meter="qkd_key_bits")) == 256 * keyings
    again = client.post(f"/api/tunnels/{tunnel_id}/close")
    assert again.status_code == 409


def test_bad_input_is_refused_with_nothing_configured(gateways, tenant_api, django_capture_on_commit_callbacks):
    tenant, client = tenant_api("upm")
    _, other_client = tenant_api("eve")
    cases = [
        ({"node_a": "Atlantis"}, "unknown node"),
        ({"subnet_a": "10.200.0.0/24"}, "outside the pools"),
        ({"subnet_b": "10.102.1.0/23"}, "host bits"),
        ({"esp_proposal": "des-md5"}, "des-md5"),
        ({"rekey_interval_s": 1}, "at least 2"),
        ({"node_b": "CAIT"}, "different nodes"),
    ]
    for fields, message in cases:
        response = order(client, django_capture_on_commit_callbacks, **fields)
        assert response.status_code == 400, (fields, response.content)
        assert message in str(response.json()), response.json()
    # overlapping a live tunnel: another tenant's or one's own
    from services import orders

    orders.place(Tunnel, tenant, node_a="CAIT", node_b="Rectorado", subnet_a=A, subnet_b=B,
                 esp_proposal=PROPOSAL[0], rekey_interval_s=3600)  # held in "requested": no provisioning
    response = order(other_client, django_capture_on_commit_callbacks, subnet_a="10.100.1.128/25",
                     subnet_b="10.102.9.0/24")
    assert response.status_code == 400 and "another tenant's" in response.json()["error"]["message"]
    response = order(client, django_capture_on_commit_callbacks, subnet_a="10.100.2.0/24", subnet_b=B)
    assert response.status_code == 400 and "your" in response.json()["error"]["message"]
    # too many tunnels: the plan allows 2 (one is held above)
    set_quota_overrides(tenant, {"ipsec_tunnels": 1})
    response = order(client, django_capture_on_commit_callbacks, subnet_a="10.100.3.0/24", subnet_b="10.102.3.0/24")
    assert response.status_code == 429 and "RateLimit" in response.headers and response.headers["X-RateLimit-Limit"]
    assert Tunnel.objects.for_tenant(tenant).count() == 1 and slots_used(tenant) == 1
    assert not UsageRecord.objects.for_tenant(tenant).filter(meter="qkd_key_bits").exists()
    for gw in gateways:
        assert not {n for n in vici_driver.list_conns(gw.vici_uri) if n.startswith("qx-")}
    unknown = client.get("/api/tunnels/00000000-0000-0000-0000-000000000000/")
    assert unknown.status_code == 404
    assert client.post("/api/tunnels/", {}, format="json").status_code == 400


def test_kme_unavailable_fails_the_tunnel_and_leaves_nothing(gateways, tenant_api, django_capture_on_commit_callbacks):
    tenant, client = tenant_api("upm")
    from services import registry

    QkdNode.objects.filter(node_id="CAIT").update(kme_url="https://127.0.0.1:9")  # nothing listens there
    registry.forget_status_cache()
    response = order(client, django_capture_on_commit_callbacks)
    assert response.status_code == 202, response.content
    tunnel = Tunnel.objects.for_tenant(tenant).get(uuid=response.json()["id"])
    assert tunnel.state == "failed" and tunnel.reason.startswith("QKD key unavailable"), tunnel.reason
    assert nothing_left(gateways, tunnel) and slots_used(tenant) == 0
    assert not UsageRecord.objects.for_tenant(tenant).filter(meter="qkd_key_bits").exists()
    assert client.get(f"/api/tunnels/{tunnel.uuid}/").json()["reason"] == tunnel.reason


def test_reconcile_removes_orphans_from_the_gateways(gateways):
    """A tunnel in a charon that the database does not know (a crash between VICI and the commit) goes."""
    gw = gateways[0]
    peer = gateways[-1]
    name = "qx-00000000-0000-4000-8000-000000000001"
    creds = services.gateway_credentials(gw.address)
    vici_driver.load_tunnel(gw.vici_uri, name, local_addr=gw.address, remote_addr=peer.address,
                            local_ts="10.100.7.0/24", remote_ts="10.102.7.0/24", esp_proposal="aes256-sha256",
                            ppk="qkd-orphan", cert_pem=creds.cert_pem,
                            peer_cert_pem=services.gateway_credentials(peer.address).cert_pem)
    vici_driver.load_ppk(gw.vici_uri, name, "qkd-orphan", bytes(32))
    assert vici_driver.holds(gw.vici_uri, name)
    services.reconcile()
    assert not vici_driver.holds(gw.vici_uri, name)
    assert IpsecGateway.objects.get(pk=gw.pk).reachable


def test_per_hop_key_path_takes_one_key_per_qkd_link(ipsec_lab, gateways, tenant_api,
                                                     django_capture_on_commit_callbacks):
    tenant, client = tenant_api("upm")
    response = order(client, django_capture_on_commit_callbacks, key_path="per-hop")
    assert response.status_code == 202, response.content
    tunnel = Tunnel.objects.for_tenant(tenant).get(uuid=response.json()["id"])
    assert tunnel.state == "up", tunnel.reason
    assert len(tunnel.current_key_id.split(",")) == 2  # CAIT-CCS and CCS-Rectorado
    assert ping(ipsec_lab, 3) == (3, 3)
    bits = UsageRecord.objects.for_tenant(tenant).filter(meter="qkd_key_bits", order_id=tunnel.uuid)
    assert sum(r.quantity for r in bits) == 512
    with django_capture_on_commit_callbacks(execute=True):
        client.delete(f"/api/tunnels/{tunnel.uuid}/")
    tunnel.refresh_from_db()
    assert tunnel.state == "closed" and nothing_left(gateways, tunnel) and slots_used(tenant) == 0
