"""The issue's acceptance scenario, end to end: the demo tenant of ``make run``, its SAE bundles as
``manage.py demo_saes`` writes them, the portal's HTTPS mTLS listener as ``make run`` starts it, and an
off-the-shelf ETSI GS QKD 014 client (``etsi-qkd-014-client`` from PyPI, unmodified).

The other acceptance items have their own tests: 004 streams (test_streams), backend down / quota /
64 parallel requests / key-material leak (test_gateway_robustness, test_gateway).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.core.management import call_command
from etsi_qkd_014_client import QKD014Client

from services.models import KeyDelivery
from tenants import quota
from tenants.demo import bootstrap_demo
from tenants.models import Tenant, UsageRecord
from tests.services.test_mtls import write_bundle


def client(base_url: str, bundles: Path, sae: str) -> QKD014Client:
    host = base_url.removeprefix("https://")
    return QKD014Client(host, str(bundles / f"{sae}.crt"), str(bundles / f"{sae}.key"), str(bundles / "ca.crt"))


def test_a_standard_etsi_014_client_with_the_demo_bundles(https_portal, backend_twin, make_lab, settings,
                                                          tmp_path):
    settings.QKD_TWIN_STATE_DIR = str(backend_twin.state_dir)
    # demo_saes writes into VAR_DIR/demo-saes: a copy of the state directory keeps a developer's own
    # `make run` bundles untouched, and the copied portal CA is the one the HTTPS listener trusts.
    var = tmp_path / "var"
    shutil.copytree(Path(settings.VAR_DIR) / "pki", var / "pki")
    settings.VAR_DIR = var
    bootstrap_demo()
    call_command("demo_saes", wait=5, stdout=(tmp_path / "demo_saes.out").open("w"))
    bundles = var / "demo-saes"
    demo = Tenant.objects.get(slug="demo-lab")
    master, slave = client(https_portal, bundles, "demo-cait"), client(https_portal, bundles, "demo-rect")

    code, status = master.get_status("demo-rect")
    assert code == 200, status
    assert (status.source_kme_id, status.target_kme_id) == ("CAIT", "Rectorado")

    code, container = master.get_key("demo-rect", number=2, size=256)
    assert code == 200, container
    assert len(container.keys) == 2
    code, fetched = slave.get_key_with_key_IDs("demo-cait", [k.key_id for k in container.keys])
    assert code == 200, fetched
    assert [k.key for k in fetched.keys] == [k.key for k in container.keys]

    # The ledger shows exactly the bits delivered, charged once (the peer's dec_keys is free).
    used = next(s.used for s in quota.quota_states(demo) if s.quota_key == "qkd_key_bits.day")
    assert used == 2 * 256
    assert list(UsageRecord.objects.for_tenant(demo).values_list("meter", "quantity")) == [("qkd_key_bits", 512)]
    assert [(d.key_count, d.fetched_keys) for d in KeyDelivery.objects.for_tenant(demo)] == [(2, 2)]

    # A second tenant, with its own SAE certificates, cannot fetch the demo tenant's key, nor name its SAEs.
    code, key = master.get_key("demo-rect")
    assert code == 200
    other = make_lab("other")
    other_bundles = tmp_path / "other"
    other_bundles.mkdir()
    write_bundle(other_bundles, "other-rect", other.bundles["other-rect"])
    (other_bundles / "ca.crt").write_text(other.bundles["other-rect"]["ca_chain"])
    thief = client(https_portal, other_bundles, "other-rect")
    code, stolen = thief.get_key_with_key_IDs("other-cait", [key.keys[0].key_id])
    assert code == 400
    code, unknown = thief.get_key_with_key_IDs("other-cait", ["00000000-0000-4000-8000-000000000000"])
    assert code == 400 and stolen.message == unknown.message  # indistinguishable from an unknown key ID
    code, _ = thief.get_key_with_key_IDs("demo-cait", [key.keys[0].key_id])
    assert code == 400
    # ... and the rightful slave still gets it
    code, fetched = slave.get_key_with_key_IDs("demo-cait", [key.keys[0].key_id])
    assert code == 200 and fetched.keys[0].key == key.keys[0].key
    assert sum(UsageRecord.objects.for_tenant(demo).values_list("quantity", flat=True)) == 3 * 256
    assert not UsageRecord.objects.for_tenant(other.tenant).exists()
