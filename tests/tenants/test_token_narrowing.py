"""Token scopes after a role change (``narrow_tokens``) and scopes handed on by a token (``granter_scopes``),
called directly so their results are checked exactly. Written from the survivors of
`make mutate MODULE=tenants/tokens.py` (docs/testing.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.errors import Forbidden
from tenants.models import ApiToken, Role
from tenants.tokens import issue_token, narrow_tokens


def test_narrowing_to_a_lower_role_cuts_revokes_and_counts_exactly(make_tenant, member):
    tenant = make_tenant("narrow")
    mike = member(tenant, "mike", Role.MEMBER)
    other = member(tenant, "olga", Role.MEMBER)
    cut, _ = issue_token(mike, tenant, "cut", ["keys:write", "billing:read"])  # keeps billing:read
    cut_after, _ = issue_token(mike, tenant, "cut-after", ["keys:write", "tls:read"])  # keeps tls:read (sorts after)
    gone, _ = issue_token(mike, tenant, "gone", ["keys:write"])  # nothing left: revoked
    within, _ = issue_token(mike, tenant, "within", ["billing:read"])  # already within the role: untouched
    dead, _ = issue_token(mike, tenant, "dead", ["keys:write"])
    earlier = timezone.now() - timedelta(days=1)
    ApiToken.objects.for_tenant(tenant).filter(pk=dead.pk).update(revoked_at=earlier)
    olgas, _ = issue_token(other, tenant, "olga's", ["keys:write"])  # another member's token: not theirs to cut

    assert narrow_tokens(tenant, mike, Role.VIEWER) == (2, 1)
    rows = {t.pk: t for t in ApiToken.objects.for_tenant(tenant)}
    assert (rows[cut.pk].scopes, rows[cut.pk].revoked_at) == (["billing:read"], None)
    assert (rows[cut_after.pk].scopes, rows[cut_after.pk].revoked_at) == (["tls:read"], None)
    assert rows[gone.pk].scopes == ["keys:write"] and rows[gone.pk].revoked_at is not None
    assert (rows[within.pk].scopes, rows[within.pk].revoked_at) == (["billing:read"], None)
    assert rows[dead.pk].revoked_at == earlier  # a token revoked before keeps its revocation time
    assert (rows[olgas.pk].scopes, rows[olgas.pk].revoked_at) == (["keys:write"], None)
    assert narrow_tokens(tenant, mike, Role.VIEWER) == (0, 0)  # nothing more to do

    assert narrow_tokens(tenant, mike, None) == (0, 3)  # removed from the tenant: every live token revoked
    assert not ApiToken.objects.for_tenant(tenant).filter(user=mike, revoked_at__isnull=True).exists()


def test_a_token_hands_on_only_its_effective_scopes_not_its_stored_list(make_tenant, member):
    tenant = make_tenant("granter")
    owner = member(tenant, "owner")
    granter, _ = issue_token(owner, tenant, "granter", ["keys:write", "billing:read"])
    # The request's effective scopes (after a demotion not yet written to the token) decide.
    with pytest.raises(Forbidden, match="lacks: keys:write"):
        issue_token(owner, tenant, "child", ["keys:write"], granted_by=granter, granter_scopes={"billing:read"})
    child, _ = issue_token(owner, tenant, "child", ["billing:read"], granted_by=granter,
                           granter_scopes={"billing:read"})
    assert child.scopes == ["billing:read"]
    # Without them, the token's own list.
    child, _ = issue_token(owner, tenant, "child-2", ["keys:write"], granted_by=granter)
    assert child.scopes == ["keys:write"]
    with pytest.raises(Forbidden, match="lacks: keys:read"):
        issue_token(owner, tenant, "child-3", ["keys:read"], granted_by=granter)
