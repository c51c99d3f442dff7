"""The fault suite's hands inside the stack's database (run as a separate process with the stack's environment).

    python -m tests.faults.stackctl setup <out-dir> [slug prefix]  # a second tenant (lab-b): token and SAE bundles
    python -m tests.faults.stackctl check <received.json>     # the ledger invariants, as JSON on stdout
    python -m tests.faults.stackctl limit <slug> <bits>       # the tenant's daily key-bit quota
    python -m tests.faults.stackctl revoke <what> <slug> <prefix>  # reissue (<prefix>-cait's certificate),
                           # revoke (<prefix>-rect's), token (all the tenant's), suspend: the commit's time

``check`` reads what the load's clients received (``{"tenant-slug": [key_ID, ...]}``) and answers, per tenant:
keys no delivery record knows, keys handed to two requests, delivery records without exactly one ledger row,
the key bits charged but never received (requests cut by a kill), quota counters that differ from the ledger
plus the open reservations,
and stream slots held without a live stream.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path


def setup(out_dir: Path, slug: str = "lab-b", prefix: str = "b") -> dict:
    from django.contrib.auth import get_user_model

    from services import saes
    from tenants.models import Membership, Plan, Role, Scope, Tenant
    from tenants.tokens import issue_token

    tenant = Tenant.objects.filter(slug=slug).first() or Tenant.objects.create(
        name=slug.title(), slug=slug, plan=Plan.objects.get(slug="research"))
    owner = f"{slug}-owner"
    user = get_user_model().objects.filter(username=owner).first() or get_user_model().objects.create_user(
        owner, f"{prefix}@qxaas.localhost", None)
    Membership.objects.for_tenant(tenant).get_or_create(tenant=tenant, user=user, defaults={"role": Role.OWNER})
    _, token = issue_token(user, tenant, "faults", [s.value for s in Scope if s != Scope.OPERATOR])
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, node in ((f"{prefix}-cait", "CAIT"), (f"{prefix}-rect", "Rectorado")):
        bundle = saes.register_sae(tenant, name, node)
        (out_dir / f"{name}.crt").write_text(bundle.certificate)
        (out_dir / f"{name}.key").write_text(bundle.private_key)
        (out_dir / "ca.crt").write_text(bundle.ca_chain)
    return {"token": token}


def check(received: dict[str, list[str]]) -> dict:
    from django.db.models import Q, Sum

    from services import keyids
    from services.models import KeyDelivery, KeyStream
    from tenants.meters import split_quota_key, window_bounds
    from tenants.models import QuotaCounter, QuotaReservation, Tenant, UsageRecord
    from tenants.quota import effective_limits

    report: dict = {}
    for tenant in Tenant.objects.filter(slug__in=list(received)).order_by("slug"):
        ids = received[tenant.slug]
        opened = keyids.open_ids(ids) if ids else []
        deliveries = {d.batch: d for d in KeyDelivery.objects.for_tenant(tenant)}
        unknown = [i for i, o in zip(ids, opened, strict=True)
                   if o is None or o[0] not in deliveries or o[1] >= deliveries[o[0]].key_count]
        twice = [k for k, n in Counter(o for o in opened if o is not None).items() if n > 1]
        received_bits = sum(deliveries[o[0]].size_bits for o in opened if o is not None and o[0] in deliveries)
        key_rows = UsageRecord.objects.for_tenant(tenant).filter(meter="qkd_key_bits")
        consumes = key_rows.filter(kind="consume", idempotency_key__startswith="keys:")
        delivered_bits = sum(d.size_bits * d.key_count for d in deliveries.values())
        net_key_bits = key_rows.filter(Q(idempotency_key__startswith="keys:")
                                       | Q(idempotency_key__startswith="refund:keys:")).aggregate(s=Sum("quantity"))
        mismatched, over_limit = [], []
        limits = effective_limits(tenant)
        for counter in QuotaCounter.objects.for_tenant(tenant):
            limit = limits.get(counter.quota_key, -1)
            if 0 <= limit < counter.used:
                over_limit.append({"quota": counter.quota_key, "counter": counter.used, "limit": limit})
            meter, window = split_quota_key(counter.quota_key)
            start, end = window_bounds(window, counter.window_start)
            rows = UsageRecord.objects.for_tenant(tenant).filter(meter=meter, created_at__gte=start)
            # A reservation counts in the windows its creation time falls in (tenants.quota.reserve).
            held = QuotaReservation.objects.for_tenant(tenant).filter(meter=meter, created_at__gte=start)
            if end is not None:
                rows = rows.filter(created_at__lt=end)
                held = held.filter(created_at__lt=end)
            ledger = rows.aggregate(s=Sum("quantity"))["s"] or 0
            reserved = held.aggregate(s=Sum("amount"))["s"] or 0
            if ledger + reserved != counter.used:  # at rest: counters == ledger + open reservations
                mismatched.append({"quota": counter.quota_key, "counter": counter.used, "ledger": ledger,
                                   "reserved": reserved})
        live = KeyStream.objects.for_tenant(tenant).filter(state__in=KeyStream.live_states).count()
        slots = QuotaCounter.objects.for_tenant(tenant).filter(quota_key="key_streams").aggregate(s=Sum("used"))
        report[tenant.slug] = {
            "received_keys": len(ids), "unknown_keys": unknown[:5], "unknown_count": len(unknown),
            "handed_twice": len(twice), "delivery_rows": len(deliveries), "consume_rows": consumes.count(),
            "consumed_bits": consumes.aggregate(s=Sum("quantity"))["s"] or 0, "delivered_bits": delivered_bits,
            "received_bits": received_bits, "charged_not_received_bits": (net_key_bits["s"] or 0) - received_bits,
            "counter_mismatches": mismatched, "over_limit": over_limit, "live_streams": live,
            "stream_slots_used": slots["s"] or 0,
        }
    return report


def limit(slug: str, bits: int) -> dict:
    from tenants.models import Tenant
    from tenants.services import set_quota_overrides

    set_quota_overrides(Tenant.objects.get(slug=slug), {"qkd_key_bits.day": bits, "qkd_key_bits.month": -1})
    return {"limit": bits}


def revoke(what: str, slug: str, prefix: str) -> dict:
    """One revocation, committed (autocommit): the wall-clock time right after its commit, for the latency."""
    import time

    from services import saes
    from services.models import Sae
    from tenants.models import ApiToken, Tenant
    from tenants.services import set_status
    from tenants.tokens import revoke_token

    tenant = Tenant.objects.get(slug=slug)
    if what == "reissue":
        saes.reissue_certificate(Sae.objects.for_tenant(tenant).get(name=f"{prefix}-cait"))
    elif what == "revoke":
        saes.revoke_certificate(Sae.objects.for_tenant(tenant).get(name=f"{prefix}-rect"))
    elif what == "token":
        for token in ApiToken.objects.for_tenant(tenant).filter(revoked_at=None):
            revoke_token(token)
    elif what == "suspend":
        set_status(tenant, Tenant.Status.SUSPENDED)
    else:
        raise SystemExit(f"unknown revocation {what!r}")
    return {"committed_at": time.time()}


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.base")
    import django

    django.setup()
    if argv[0] == "setup":
        out = setup(Path(argv[1]), *argv[2:4])
    elif argv[0] == "limit":
        out = limit(argv[1], int(argv[2]))
    elif argv[0] == "revoke":
        out = revoke(*argv[1:4])
    else:
        out = check(json.loads(Path(argv[1]).read_text()))
    print("STACKCTL " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
