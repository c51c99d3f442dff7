"""The schema's promises one by one, each a finding of the property test (tests/openapi/test_schema_truth.py)
or of the issue, that failed before its fix: errors documented from what views declare, parameters validated as
documented, responses valid against their schemas, and the crashes the generated requests found."""

from __future__ import annotations

from datetime import timedelta

import pytest
from allauth.mfa.models import Authenticator
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from qrng.models import QualityReport
from tenants.schema import WHY


@pytest.fixture(scope="module")
def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method.upper(), operation


def test_every_operation_documents_its_errors_in_the_one_shape(schema):
    error_ref = "#/components/schemas/Error"
    etsi_ref = "#/components/schemas/EtsiError"
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        etsi = path.startswith(("/api/v1/keys/", "/api/etsi004/"))
        assert {"401", "503"} <= set(responses), (method, path)  # any credential can be refused; any backend away
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                refs = {media["schema"].get("$ref") for media in response["content"].values()}
                assert refs == {etsi_ref if etsi else error_ref}, (method, path, code)
        if path.startswith("/api/v1/keys/"):  # ETSI GS QKD 014: its own statuses only
            assert set(responses) == {"200", "400", "401", "503"}, (method, path)
        elif method != "GET" or path not in ("/api/", "/api/me/", "/api/tenants/", "/api/tenants/{slug}/"):
            # every other operation needs a scope, a role or an operator (those four: any signed-in user)
            assert "403" in responses, (method, path)
        if "{" in path and not path.startswith("/api/v1/keys/"):
            assert "404" in responses, (method, path)
        assert all(responses[code]["description"] for code in responses if code >= "400"), (method, path)


def test_paginated_lists_document_the_page_past_the_last(schema):
    for path, _method, operation in operations(schema):
        names = {p["name"]: p for p in operation.get("parameters", [])}
        if "page" in names:
            assert "404" in operation["responses"], path
            assert names["page"]["schema"]["minimum"] == 1
            assert names["page_size"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}


def test_nullable_free_form_json_is_not_one_of_any_and_null(schema):
    # oneOf [{}, {"type": "null"}] makes null match twice: a finished report's null result was invalid.
    result = schema["components"]["schemas"]["QualityReport"]["properties"]["result"]
    assert "oneOf" not in result
    assert QualityReport._meta.get_field("result").null


def test_views_name_the_rules_that_refuse_schema_valid_input(schema):
    plan_delete = schema["paths"]["/api/plans/{slug}/"]["delete"]["responses"]
    assert "tenants are on this plan" in plan_delete["400"]["description"]
    member_delete = schema["paths"]["/api/members/{id}/"]["delete"]["responses"]
    assert "409" in member_delete  # the last owner stays
    assert schema["paths"]["/api/me/"]["get"]["responses"].get("400") is None
    generic = schema["paths"]["/api/usage/"]["get"]["responses"]["400"]["description"]
    assert generic == WHY["400"]


@pytest.mark.parametrize("query", ["page_size=null", "page_size=0", "page_size=1001", "page=0", "page=abc",
                                   "page=last"])
def test_pagination_parameters_are_validated_as_documented(two_tenants, query):
    response = two_tenants["ca"].get(f"/api/tokens/?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "bad_request"


def test_a_page_past_the_last_is_the_documented_404(two_tenants):
    assert two_tenants["ca"].get("/api/tokens/?page=1&page_size=1000").status_code == 200
    response = two_tenants["ca"].get("/api/tokens/?page=99")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_accept_header_json_cannot_satisfy_is_the_documented_406(two_tenants, schema):
    response = two_tenants["ca"].get("/api/quotas/", HTTP_ACCEPT="text/html")
    assert response.status_code == 406
    assert "406" in schema["paths"]["/api/quotas/"]["get"]["responses"]
    assert "406" not in schema["paths"]["/api/entropy/"]["get"]["responses"]  # always JSON (or its raw formats)


def test_an_unknown_api_path_is_a_json_404(two_tenants):
    response = two_tenants["ca"].get("/api/billing/credit-notes/0.5/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    etsi = two_tenants["ca"].get("/api/v1/keys/a/b/c/nothing")
    assert etsi.status_code == 404 and "message" in etsi.json()
    assert Client().get("/no-such-page/").status_code == 404  # pages keep Django's own


@pytest.mark.parametrize("body", [{"name": "x\u0000y", "scopes": ["keys:read"]},
                                  {"name": "ok", "scopes": ["keys:read"], "x\u0000": 1}])
def test_nul_in_a_body_is_a_400_not_a_500(two_tenants, body):
    response = two_tenants["ca"].post("/api/tokens/", body, format="json")
    assert response.status_code == 400, response.content


def test_nul_in_a_parameter_is_a_400_not_a_500(two_tenants):
    response = two_tenants["ca"].get("/api/qkd/streams/?sae=a%00b")
    assert response.status_code == 400, response.content


def test_a_number_is_not_a_token_name(two_tenants):
    response = two_tenants["ca"].post("/api/tokens/", {"name": 12, "scopes": ["keys:read"]}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["error"]["details"]


@pytest.mark.parametrize("query", ["meter=", "since=", "until=", "since=2026-11-01T00:00:00"])
def test_empty_or_naive_usage_filters_are_400(two_tenants, query):
    assert two_tenants["ca"].get(f"/api/usage/?{query}").status_code == 400


def test_a_malformed_session_id_is_a_404_not_a_500(make_lab):
    lab = make_lab("tlsuuid")
    response = lab.client.get("/api/tls/sessions/Caaa-586F-EeABadC1d0a08E8DB05F77b909/endpoint-key/",
                              HTTP_X_SAE_ID="tlsuuid-cait")
    assert response.status_code == 404, response.content


def test_a_price_tier_without_up_to_is_not_a_500(two_tenants, make_user, client_for):
    operator = make_user("op", staff=True)
    Authenticator.objects.create(user=operator, type=Authenticator.Type.TOTP, data={"secret": "x"})
    client = client_for(operator, two_tenants["a"], ["operator"])
    body = {"plan": two_tenants["a"].plan.slug, "name": "2027", "currency": "EUR",
            "effective_from": (timezone.now() + timedelta(days=30)).isoformat(),
            "components": [{"meter": "qkd_key_bits", "unit_price": "0.5", "unit_label": "kbit",
                            "tiers": [{"unit_price": "0.4"}]}]}
    response = client.post("/api/billing/operator/price-books/", body, format="json")
    assert response.status_code in (201, 400), response.content
