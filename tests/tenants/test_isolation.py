"""Tenant isolation across every endpoint, and scoping that fails closed."""

from __future__ import annotations

import pytest
from django.urls import path
from rest_framework import mixins, serializers
from rest_framework.test import APIClient

from tenants import quota
from tenants.api.base import TenantScopedViewSet
from tenants.models import ApiToken, Membership, UsageRecord
from tenants.scoping import UnscopedQueryError

TENANT_COLLECTIONS = ["/api/members/", "/api/tokens/", "/api/usage/", "/api/tenants/"]


@pytest.fixture
def populated(two_tenants):
    quota.consume(two_tenants["a"], "qkd_key_bits", 256, "a-key-1", reference="key:a1")
    quota.consume(two_tenants["b"], "qkd_key_bits", 512, "b-key-1", reference="key:b1")
    return two_tenants


def ids(response) -> set:
    body = response.json()
    rows = body["results"] if isinstance(body, dict) and "results" in body else body
    return {row.get("id") for row in rows}


@pytest.mark.parametrize("url", TENANT_COLLECTIONS)
def test_collections_only_show_the_callers_tenant(populated, url):
    a_ids = ids(populated["ca"].get(url))
    b_ids = ids(populated["cb"].get(url))
    assert a_ids and b_ids
    assert not (a_ids & b_ids)


def test_detail_of_another_tenants_objects_is_404(populated):
    a, cb = populated["a"], populated["cb"]
    member = Membership.objects.for_tenant(a).first()
    token = ApiToken.objects.for_tenant(a).first()
    for url in (f"/api/members/{member.pk}/", f"/api/tokens/{token.pk}/", f"/api/tenants/{a.slug}/"):
        response = cb.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "not_found"
    assert cb.delete(f"/api/tokens/{token.pk}/").status_code == 404
    assert cb.post(f"/api/tokens/{token.pk}/revoke/").status_code == 404
    assert cb.delete(f"/api/members/{member.pk}/").status_code == 404
    assert ApiToken.objects.for_tenant(a).get(pk=token.pk).revoked_at is None


def test_usage_and_quotas_are_the_callers_own(populated):
    assert {r["reference"] for r in populated["ca"].get("/api/usage/").json()["results"]} == {"key:a1"}
    quotas = {q["quota_key"]: q["used"] for q in populated["cb"].get("/api/quotas/").json()}
    assert quotas["qkd_key_bits.day"] == 512
    csv = b"".join(populated["ca"].get("/api/usage/export/").streaming_content).decode()
    assert "key:a1" in csv and "key:b1" not in csv


def test_session_user_cannot_pick_another_tenant(populated):
    client = APIClient()
    client.force_authenticate(populated["ub"])
    assert client.get("/api/quotas/", HTTP_X_TENANT="alpha").status_code == 404
    assert client.get("/api/quotas/", HTTP_X_TENANT="bravo").status_code == 200


def test_unscoped_queries_raise():
    with pytest.raises(UnscopedQueryError):
        list(UsageRecord.objects.all())
    with pytest.raises(UnscopedQueryError):
        UsageRecord.objects.filter(meter="qkd_key_bits").count()
    with pytest.raises(UnscopedQueryError):
        ApiToken.objects.filter(name="x").update(name="y")


class _TokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name"]


class ForgetfulView(mixins.ListModelMixin, TenantScopedViewSet):
    """A careless view that tries to bypass the base class with a bare queryset."""

    model = ApiToken
    serializer_class = _TokenSerializer

    def get_queryset(self):
        return ApiToken.objects.all()


urlpatterns = [path("forgetful/", ForgetfulView.as_view({"get": "list"}))]


@pytest.mark.urls("tests.tenants.test_isolation")
def test_a_view_that_forgets_the_tenant_fails_closed(populated):
    with pytest.raises(UnscopedQueryError):
        populated["ca"].get("/forgetful/")


def test_suspended_tenant_is_refused(populated):
    from tenants.services import set_status

    set_status(populated["a"], "suspended")
    response = populated["ca"].get("/api/quotas/")
    assert response.status_code == 403 and "suspended" in response.json()["error"]["message"]
