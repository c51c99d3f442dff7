"""The IPsec line of /readyz: available (how many gateways answer) or why not and the fix. Informational: the
rest of the portal is ready without IPsec, so this check never fails readiness."""

from __future__ import annotations

from portal.health import READINESS_CHECKS


def check_ipsec() -> str:
    from .models import IpsecGateway
    from .services import unavailable_reason

    reason = unavailable_reason()
    if reason:
        return f"unavailable: {reason}"
    gateways = IpsecGateway.objects.filter(enabled=True)
    down = [g.node_id for g in gateways if not g.reachable and g.checked_at]
    return f"available: {gateways.count()} gateways" + (f" ({', '.join(down)} not answering)" if down else "")


READINESS_CHECKS["ipsec"] = check_ipsec
