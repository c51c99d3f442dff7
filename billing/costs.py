"""The operator's cost model: what each QKD link and QRNG costs over a period, per delivered key bit.

* **Cost of an asset over a period** = straight-line depreciation (purchase price / depreciation years, only
  while the asset is within its depreciation years from ``in_service_from``) + operating cost per year, both
  prorated by the seconds of the period (a year = 365.25 days).
* **Delivered key bits per link**: every key delivery (``services.KeyDelivery``: ETSI 014, simple REST, portal
  services) and every metered key-stream chunk (``qkd_key_bits`` ledger rows of a ``KeyStream`` order) is
  attributed to each link on the shortest path between its two nodes (trusted-node relay spends key on
  every hop). Links and their measured key rate come from the network view's telemetry when a KME exposes it;
  the endpoints recorded on the ``AssetCost`` are used otherwise.
* **Cost per delivered key bit** of a link = its period cost / its delivered bits; a tenant's cost is the sum
  over links of its bits there x that link's cost per bit. **Utilisation** = delivered bits / (measured secret
  key rate x period seconds).
* **Revenue per link**: each tenant's rated ``qkd_key_bits`` revenue of the period (invoice lines) is shared
  among links in proportion to that tenant's bits on them.
* **Suggested price** for a target margin m: cost per unit / (1 - m), per Mbit for key bits; per GB of entropy
  for the QRNGs (their cost over the entropy bytes served, split evenly among them: the ledger does not name
  the source).
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.db.models import F, Sum

from tenants.meters import ENTROPY_BYTES, KEY_BITS
from tenants.models import UsageRecord

from .models import AssetCost, InvoiceLine
from .rating import round_money

log = logging.getLogger(__name__)
YEAR_SECONDS = Decimal("31557600")  # 365.25 days
MBIT = Decimal(1_000_000)
GB = Decimal(1_000_000_000)


@dataclass
class AssetReport:
    asset: AssetCost
    depreciation: Decimal
    operating: Decimal
    delivered_bits: int = 0
    key_rate_bps: float | None = None
    revenue: Decimal = Decimal("0.00")
    tenant_bits: dict[str, int] = field(default_factory=dict)

    @property
    def cost(self) -> Decimal:
        return self.depreciation + self.operating

    @property
    def cost_per_bit(self) -> Decimal | None:
        return self.cost / self.delivered_bits if self.delivered_bits else None

    @property
    def cost_per_mbit(self) -> Decimal | None:
        per_bit = self.cost_per_bit
        return round_money(per_bit * MBIT) if per_bit is not None else None


@dataclass
class CostReport:
    start: datetime
    end: datetime
    links: list[AssetReport]
    qrngs: list[AssetReport]
    tenant_cost: dict[str, Decimal]
    tenant_bits: dict[str, int]
    entropy_bytes: int = 0

    @property
    def qrng_cost(self) -> Decimal:
        return sum((q.cost for q in self.qrngs), Decimal(0))

    @property
    def qrng_cost_per_gb(self) -> Decimal | None:
        """The QRNGs' cost per GB of entropy served (all QRNGs together: the ledger does not name the source)."""
        return round_money(self.qrng_cost / self.entropy_bytes * GB) if self.entropy_bytes else None

    def suggested_price_per_gb(self, margin: Decimal) -> Decimal | None:
        if not self.entropy_bytes or margin >= 1:
            return None
        return round_money(self.qrng_cost / self.entropy_bytes * GB / (1 - margin))

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def utilisation(self, link: AssetReport) -> float | None:
        if not link.key_rate_bps:
            return None
        return link.delivered_bits / (link.key_rate_bps * self.seconds)

    def suggested_price_per_mbit(self, margin: Decimal) -> Decimal | None:
        """Price per Mbit of key that covers the links' cost at the measured traffic with ``margin`` (0-1)."""
        bits = sum(link.delivered_bits for link in self.links)
        cost = sum((link.cost for link in self.links), Decimal(0))
        if not bits or margin >= 1:
            return None
        return round_money(cost / bits * MBIT / (1 - margin))


def _overlap_seconds(start: datetime, end: datetime, lo: datetime, hi: datetime | None) -> Decimal:
    a, b = max(start, lo), min(end, hi) if hi else end
    return Decimal(max((b - a).total_seconds(), 0))


def asset_period_cost(asset: AssetCost, start: datetime, end: datetime) -> tuple[Decimal, Decimal]:
    """(depreciation, operating cost) of ``asset`` in ``[start, end)``."""
    in_service = datetime.combine(asset.in_service_from, time(), tzinfo=UTC)
    depreciation_end = in_service + timedelta(days=365.25 * asset.depreciation_years)
    dep = asset.purchase_price / asset.depreciation_years / YEAR_SECONDS * _overlap_seconds(
        start, end, in_service, depreciation_end) if asset.depreciation_years else Decimal(0)
    op = asset.operating_cost_per_year / YEAR_SECONDS * _overlap_seconds(start, end, in_service, None)
    return dep, op


def _telemetry() -> dict[str, dict]:
    """Live link telemetry by link id (empty when no KME exposes it)."""
    try:
        from services.network import network_view

        return {link["id"]: link for link in network_view().get("links", []) if link.get("id")}
    except Exception:  # the report still works from the recorded endpoints
        log.warning("no link telemetry for the cost report", exc_info=True)
        return {}


def _path(links: dict[str, tuple[str, ...]], src: str, dst: str) -> list[str]:
    """Link ids on a shortest path between two nodes (breadth-first; [] if none or the same node)."""
    if src == dst:
        return []
    adjacent: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for link_id, ends in links.items():
        if len(ends) == 2:
            adjacent[ends[0]].append((ends[1], link_id))
            adjacent[ends[1]].append((ends[0], link_id))
    previous: dict[str, tuple[str, str]] = {}
    queue, seen = deque([src]), {src}
    while queue:
        node = queue.popleft()
        if node == dst:
            path = []
            while node != src:
                node, link_id = previous[node]
                path.append(link_id)
            return path[::-1]
        for nxt, link_id in adjacent[node]:
            if nxt not in seen:
                seen.add(nxt)
                previous[nxt] = (node, link_id)
                queue.append(nxt)
    return []


def delivered_bits(start: datetime, end: datetime) -> dict[tuple[str, str, str], int]:
    """Key bits delivered in ``[start, end)`` per (tenant slug, source node, destination node)."""
    from services.models import KeyDelivery, KeyStream

    out: dict[tuple[str, str, str], int] = defaultdict(int)
    rows = (KeyDelivery.objects.unscoped().filter(created_at__gte=start, created_at__lt=end).order_by()
            .values("tenant__slug", "master__node__node_id", "slave__node__node_id")
            .annotate(bits=Sum(F("size_bits") * F("key_count"))))
    for r in rows:
        out[(r["tenant__slug"], r["master__node__node_id"], r["slave__node__node_id"])] += int(r["bits"] or 0)
    stream_bits = (UsageRecord.objects.unscoped().filter(meter=KEY_BITS, created_at__gte=start, created_at__lt=end,
                                                         order_id__isnull=False)
                   .order_by().values("order_id").annotate(bits=Sum("quantity")))
    by_order = {r["order_id"]: int(r["bits"] or 0) for r in stream_bits}
    if by_order:
        for s in (KeyStream.objects.unscoped().filter(uuid__in=list(by_order))
                  .values("uuid", "tenant__slug", "source__node__node_id", "destination__node__node_id")):
            out[(s["tenant__slug"], s["source__node__node_id"], s["destination__node__node_id"])] += by_order[s["uuid"]]
    return out


def _key_revenue(start: datetime, end: datetime) -> dict[str, Decimal]:
    """Each tenant's rated key-bit revenue (finalized and draft invoices) for periods inside ``[start, end)``."""
    rows = (InvoiceLine.objects.filter(meter=KEY_BITS, invoice__period_start__gte=start,
                                       invoice__period_end__lte=end)
            .order_by().values("invoice__tenant__slug")
            .annotate(total=Sum("amount")))
    return {r["invoice__tenant__slug"]: r["total"] or Decimal(0) for r in rows}


def cost_report(start: datetime, end: datetime, telemetry: dict[str, dict] | None = None) -> CostReport:
    telemetry = _telemetry() if telemetry is None else telemetry
    links: dict[str, AssetReport] = {}
    qrngs: list[AssetReport] = []
    for asset in AssetCost.objects.all():
        dep, op = asset_period_cost(asset, start, end)
        report = AssetReport(asset, round_money(dep), round_money(op))
        if asset.kind == AssetCost.Kind.QKD_LINK:
            live = telemetry.get(asset.asset_id, {})
            report.key_rate_bps = live.get("secret_key_rate_bps")
            links[asset.asset_id] = report
        else:
            qrngs.append(report)
    topology = {link_id: tuple(t.get("endpoints") or ()) for link_id, t in telemetry.items()}
    for link_id, report in links.items():
        topology.setdefault(link_id, report.asset.node_ids)
    tenant_cost: dict[str, Decimal] = defaultdict(Decimal)
    tenant_bits: dict[str, int] = defaultdict(int)
    per_link_tenant: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (tenant, src, dst), bits in delivered_bits(start, end).items():
        tenant_bits[tenant] += bits
        for link_id in _path(topology, src, dst):
            per_link_tenant[link_id][tenant] += bits
    for link_id, report in links.items():
        report.tenant_bits = dict(per_link_tenant.get(link_id, {}))
        report.delivered_bits = sum(report.tenant_bits.values())
    for report in links.values():
        if report.cost_per_bit is not None:
            for tenant, bits in report.tenant_bits.items():
                tenant_cost[tenant] += report.cost_per_bit * bits
    revenue = _key_revenue(start, end)
    for tenant, amount in revenue.items():
        on_links = {link_id: r.tenant_bits.get(tenant, 0) for link_id, r in links.items()}
        link_bits = sum(on_links.values())
        for link_id, bits in on_links.items():
            if link_bits:
                links[link_id].revenue += amount * bits / link_bits
    for report in links.values():
        report.revenue = round_money(report.revenue)
    entropy = UsageRecord.objects.unscoped().filter(meter=ENTROPY_BYTES, created_at__gte=start,
                                                    created_at__lt=end).aggregate(s=Sum("quantity"))["s"] or 0
    for report in qrngs:
        report.delivered_bits = int(entropy) * 8 // max(len(qrngs), 1)
    return CostReport(start, end, sorted(links.values(), key=lambda r: r.asset.asset_id), qrngs,
                      {t: round_money(c) for t, c in tenant_cost.items()}, dict(tenant_bits), int(entropy))


def default_window(now: datetime) -> tuple[datetime, datetime]:
    """The last 30 days up to ``now`` (the operator page's default)."""
    return now - timedelta(days=30), now

