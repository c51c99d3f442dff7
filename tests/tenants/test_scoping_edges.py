"""Scoping by a tenant's id is the same as by the tenant (found untested by `make mutate`)."""

from __future__ import annotations

import pytest

from tenants.models import Membership, Tenant
from tenants.scoping import UnscopedQueryError


def test_scoping_by_id_or_by_tenant_gives_the_same_rows(two_tenants):
    a = two_tenants["a"]
    by_tenant = list(Membership.objects.for_tenant(a).values_list("pk", flat=True))
    by_id = list(Membership.objects.for_tenant(a.pk).values_list("pk", flat=True))
    assert by_tenant == by_id and len(by_id) == 1
    assert Membership.objects.for_tenant(two_tenants["b"].pk).get().user == two_tenants["ub"]


def test_an_unsaved_tenant_scopes_nothing(db):
    with pytest.raises(UnscopedQueryError, match="unsaved tenant"):
        Membership.objects.for_tenant(Tenant(name="x", slug="x"))
