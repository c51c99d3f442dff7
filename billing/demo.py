"""Demo prices and asset costs for ``make run`` (idempotent): a first price book for the default plans that
have none, from now on (never back-dated over usage already recorded), and the MadQCI asset costs.

The asset figures are the MadQCI paper's (Entropy 2026, 28, 283, section 3.2): HEQA link EUR 118,000, Toshiba
link EUR 187,000, 5-year depreciation; QRNGs EUR 5,000-15,000 (the twin's stands for a PCIe one). The paper
gives no operating costs: they are left at 0 for operators to fill in.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from tenants.models import Plan

from .models import AssetCost, PriceBook, PriceComponent, PriceTier

# meter: (unit price EUR, scale, unit label, included, [(tier up_to, tier price)])
DEMO_PRICES: dict[str, dict[str, tuple[str, int, str, int, list[tuple[int | None, str]]]]] = {
    "research": {
        # Small allowances: a demo session's usage shows on the running total.
        "qkd_key_bits": ("0.50", 1_000_000, "Mbit", 1, []),
        "entropy_bytes": ("2.00", 1_000_000_000, "GB", 0, []),
        "key_stream_seconds": ("0.05", 3600, "hour", 10, []),
        "ipsec_tunnel_seconds": ("0.12", 3600, "hour", 10, []),
        "tls_session_seconds": ("0.02", 3600, "hour", 10, []),
    },
    "production": {
        "qkd_key_bits": ("0.20", 1_000_000, "Mbit", 100, [(1_000, "0.40"), (10_000, "0.30")]),
        "entropy_bytes": ("1.50", 1_000_000_000, "GB", 10, []),
        "key_stream_seconds": ("0.04", 3600, "hour", 100, []),
        "ipsec_tunnel_seconds": ("0.10", 3600, "hour", 100, []),
        "tls_session_seconds": ("0.015", 3600, "hour", 100, []),
        "ipsec_tunnels": ("0.50", 1, "tunnel", 0, []),
    },
}

DEMO_ASSETS = [
    {"kind": "qkd_link", "asset_id": "cait-ccs", "endpoints": "CAIT,CCS", "vendor": "HEQA",
     "purchase_price": Decimal("118000")},
    {"kind": "qkd_link", "asset_id": "ccs-rectorado", "endpoints": "CCS,Rectorado", "vendor": "Toshiba",
     "purchase_price": Decimal("187000")},
    {"kind": "qrng", "asset_id": "twin-qrng", "vendor": "PCIe QRNG (twin)", "purchase_price": Decimal("5000")},
]


@transaction.atomic
def bootstrap_billing_demo() -> list[str]:
    """Returns what it created."""
    created = []
    now = timezone.now()
    for slug, prices in DEMO_PRICES.items():
        plan = Plan.objects.filter(slug=slug).first()
        if plan is None or PriceBook.objects.filter(plan=plan).exists():
            continue
        book = PriceBook(plan=plan, name=f"{plan.name} demo prices", currency="EUR", effective_from=now)
        book.save(backdate=True)  # "now" is already past when saved; nothing before it is priced
        for meter, (price, scale, label, included, tiers) in prices.items():
            component = PriceComponent(book=book, meter=meter, unit_price=Decimal(price), scale=scale,
                                       unit_label=label, included=included)
            component.save(backdate=True)
            for up_to, tier_price in tiers:
                PriceTier(component=component, up_to=up_to, unit_price=Decimal(tier_price)).save(backdate=True)
        created.append(f"price book for plan {slug}")
    for asset in DEMO_ASSETS:
        _, new = AssetCost.objects.get_or_create(asset_id=asset["asset_id"],
                                                 defaults={**asset, "in_service_from": date(2024, 1, 1)})
        if new:
            created.append(f"asset cost {asset['asset_id']}")
    return created
