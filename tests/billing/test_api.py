"""The billing API and pages: tenant isolation (404), scopes, draft running total, exports (the PDF read back
with pdftotext), operator price books and credit notes, the cost report, OpenAPI."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing import costs, invoices
from billing.models import AssetCost, BillingAccount, PriceBook, WebhookEndpoint

from .conftest import make_book, usage, utc


@pytest.fixture
def world(two_tenants, plan, make_user):
    """Alpha and Bravo on the priced plan, each with a finalized February invoice; an operator client."""
    make_book(plan, utc(2026, 1, 1))
    for key in ("a", "b"):
        BillingAccount.objects.create(tenant=two_tenants[key], starts_at=utc(2026, 2, 1))
    usage(two_tenants["a"], "qkd_key_bits", 30_000_000, utc(2026, 2, 3))   # 10.00
    usage(two_tenants["b"], "qkd_key_bits", 50_000_000, utc(2026, 2, 3))   # 20.00
    closed = {i.tenant.slug: i for i in invoices.close_due(now=utc(2026, 3, 5))}
    staff = make_user("op", staff=True)
    operator = APIClient()
    operator.force_authenticate(staff)
    return {**two_tenants, "inv_a": closed["alpha"], "inv_b": closed["bravo"], "op": operator, "staff": staff}


def test_a_tenant_never_sees_another_tenants_invoices(world):
    ca, inv_a, inv_b = world["ca"], world["inv_a"], world["inv_b"]
    listed = ca.get("/api/billing/invoices/").json()
    assert [i["number"] for i in listed["results"] if i["status"] == "finalized"] == [inv_a.number]
    assert ca.get(f"/api/billing/invoices/{inv_a.pk}/").status_code == 200
    for suffix in ("", "csv/", "pdf/"):
        response = ca.get(f"/api/billing/invoices/{inv_b.pk}/{suffix}")
        assert response.status_code == 404, suffix
        assert "error" in response.json()
    note = invoices.issue_credit_note(inv_b, "goodwill", [("credit", Decimal("1.00"))])
    assert ca.get(f"/api/billing/credit-notes/{note.pk}/").status_code == 404
    assert ca.get("/api/billing/credit-notes/").json()["count"] == 0
    assert world["cb"].get(f"/api/billing/credit-notes/{note.pk}/").status_code == 200
    # Operators' endpoints are closed to tenants.
    assert ca.get("/api/billing/operator/invoices/").status_code == 403
    assert ca.get("/api/billing/operator/costs/").status_code == 403


def test_billing_read_scope_is_required(world, client_for):
    client = client_for(world["ua"], world["a"], scopes=["keys:read"])
    response = client.get("/api/billing/invoices/")
    assert response.status_code == 403 and response.json()["error"]["details"]["required_scope"] == "billing:read"


def test_a_tenant_whose_plan_has_no_price_book_has_no_draft(two_tenants):
    response = two_tenants["ca"].get("/api/billing/draft/")
    assert response.status_code == 404 and "no price book" in response.json()["error"]["message"]


def test_draft_running_total_follows_the_ledger(world):
    tenant = world["a"]
    usage(tenant, "qkd_key_bits", 12_000_000, timezone.now())
    body = world["ca"].get("/api/billing/draft/").json()
    assert body["status"] == "draft" and body["number"] is None
    before = Decimal(body["total"])
    usage(tenant, "qkd_key_bits", 2_000_000, timezone.now())
    after = Decimal(world["ca"].get("/api/billing/draft/").json()["total"])
    assert after - before == Decimal("1.00")  # 2 Mbit more at the tier-1 price (0.50/Mbit)


def test_exports_json_csv_and_pdf_text(world):
    ca, inv = world["ca"], world["inv_a"]
    detail = ca.get(f"/api/billing/invoices/{inv.pk}/").json()
    assert detail["total"] == "10.00" and [ln["amount"] for ln in detail["lines"]] == ["0.00", "10.00"]
    response = ca.get(f"/api/billing/invoices/{inv.pk}/csv/")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["amount"] for r in rows] == ["0.00", "10.00", "10.00"] and rows[-1]["description"] == "TOTAL"
    response = ca.get(f"/api/billing/invoices/{inv.pk}/pdf/")
    assert response["Content-Type"] == "application/pdf" and response.content.startswith(b"%PDF")
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    text = subprocess.run(["pdftotext", "-layout", "-", "-"], input=response.content, capture_output=True,
                          check=True, timeout=30).stdout.decode()
    assert f"Invoice {inv.number}" in text
    assert "QKD key bits, allowance" in text and "QKD key bits, tier 1" in text
    assert "10.00" in text and "Total: 10.00 EUR" in text
    assert "2026-02-01" in text


def test_operator_sees_all_drafts_and_invoices(world):
    op = world["op"]
    invoices.refresh_drafts()
    drafts = op.get("/api/billing/operator/invoices/?status=draft").json()
    assert {d["tenant"] for d in drafts["results"]} == {"alpha", "bravo"}
    finalized = op.get("/api/billing/operator/invoices/?status=finalized").json()["results"]
    assert {(i["tenant"], i["total"]) for i in finalized} == {("alpha", "10.00"), ("bravo", "20.00")}
    assert op.get(f"/api/billing/operator/invoices/{world['inv_b'].pk}/pdf/").status_code == 200


def test_operator_price_books_are_never_retroactive(world, plan):
    op = world["op"]
    book = {"plan": plan.slug, "name": "2027", "currency": "EUR", "components": [
        {"meter": "qkd_key_bits", "unit_price": "0.35", "scale": 1_000_000, "unit_label": "Mbit", "included": 5,
         "tiers": [{"up_to": 100, "unit_price": "0.40"}, {"up_to": None, "unit_price": "0.20"}]}]}
    past = op.post("/api/billing/operator/price-books/",
                   {**book, "effective_from": (timezone.now() - timedelta(days=1)).isoformat()}, format="json")
    assert past.status_code == 400 and "past" in str(past.json())
    created = op.post("/api/billing/operator/price-books/",
                      {**book, "effective_from": (timezone.now() + timedelta(days=30)).isoformat()}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["components"][0]["tiers"][1] == {"up_to": None, "unit_price": "0.20000000"}
    current = PriceBook.objects.filter(plan=plan, effective_from__lte=timezone.now()).first()
    response = op.patch(f"/api/billing/operator/price-books/{current.pk}/", {"name": "x"}, format="json")
    assert response.status_code == 400  # in effect: locked
    assert op.delete(f"/api/billing/operator/price-books/{current.pk}/").status_code == 400
    assert world["ca"].get("/api/billing/operator/price-books/").status_code == 403


def test_operator_issues_a_credit_note_through_the_api(world):
    op, inv = world["op"], world["inv_a"]
    response = op.post("/api/billing/operator/credit-notes/", {
        "invoice": inv.number, "reason": "outage", "lines": [{"description": "outage credit", "amount": "2.50"}]},
        format="json")
    assert response.status_code == 201, response.content
    assert response.json()["total"] == "2.50" and response.json()["invoice"] == inv.number
    too_much = op.post("/api/billing/operator/credit-notes/", {
        "invoice": inv.number, "reason": "x", "lines": [{"description": "x", "amount": "7.51"}]}, format="json")
    assert too_much.status_code == 409
    assert world["ca"].get(f"/api/billing/invoices/{inv.pk}/").json()["credited"] == "2.50"


def test_webhook_endpoints_per_tenant(world, client_for, settings):
    ca = world["ca"]
    refused = ca.post("/api/billing/webhooks/", {"url": "http://127.0.0.1:9/hook"}, format="json")
    assert refused.status_code == 400 and "non-public" in refused.json()["error"]["message"]
    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = True
    created = ca.post("/api/billing/webhooks/", {"url": "http://127.0.0.1:9/hook", "events": ["invoice.finalized"]},
                      format="json")
    assert created.status_code == 201 and created.json()["secret"].startswith("whsec_")
    listed = ca.get("/api/billing/webhooks/").json()["results"]
    assert len(listed) == 1 and "secret" not in listed[0]
    assert WebhookEndpoint.objects.for_tenant(world["a"]).count() == 1  # the tenant's, not an operator endpoint
    assert world["cb"].get(f"/api/billing/webhooks/{created.json()['id']}/").status_code == 404
    reader = client_for(world["ua"], world["a"], scopes=["billing:read"])
    assert reader.post("/api/billing/webhooks/", {"url": "http://127.0.0.1:9/x"}, format="json").status_code == 403


def test_cost_report_per_link_and_tenant(world):
    from services.models import KeyDelivery, QkdNode, Sae

    AssetCost.objects.create(kind="qkd_link", asset_id="cait-ccs", endpoints="CAIT,CCS", vendor="HEQA",
                             purchase_price=Decimal("118000"), in_service_from=utc(2025, 1, 1).date())
    AssetCost.objects.create(kind="qkd_link", asset_id="ccs-rectorado", endpoints="CCS,Rectorado",
                             vendor="Toshiba", purchase_price=Decimal("187000"),
                             operating_cost_per_year=Decimal("10000"), in_service_from=utc(2025, 1, 1).date())
    AssetCost.objects.create(kind="qrng", asset_id="twin-qrng", purchase_price=Decimal("5000"),
                             in_service_from=utc(2025, 1, 1).date())
    nodes = {n: QkdNode.objects.create(node_id=n, kme_url=f"https://{n.lower()}.invalid") for n in
             ("CAIT", "CCS", "Rectorado")}
    a = world["a"]
    cait = Sae.objects.create(tenant=a, name="a-cait", node=nodes["CAIT"])
    rect = Sae.objects.create(tenant=a, name="a-rect", node=nodes["Rectorado"])
    ccs = Sae.objects.create(tenant=a, name="a-ccs", node=nodes["CCS"])
    KeyDelivery.objects.create(tenant=a, batch=1, master=cait, slave=rect, size_bits=256, key_count=1000,
                               backend_key_ids=b"", hops=2)  # 256,000 bits over both links
    KeyDelivery.objects.create(tenant=a, batch=2, master=ccs, slave=rect, size_bits=256, key_count=1000,
                               backend_key_ids=b"", hops=1)  # 256,000 bits on ccs-rectorado only
    start = timezone.now() - timedelta(days=1)
    report = costs.cost_report(start, start + timedelta(days=2), telemetry={})
    by_id = {r.asset.asset_id: r for r in report.links}
    assert by_id["cait-ccs"].delivered_bits == 256_000 and by_id["ccs-rectorado"].delivered_bits == 512_000
    # 118,000 EUR over 5 years, for 2 days: 118000 / (5 x 365.25) x 2 = 129.2266
    assert by_id["cait-ccs"].depreciation == Decimal("129.23")
    assert by_id["ccs-rectorado"].operating == Decimal("54.76")  # 10,000 / 365.25 x 2
    per_bit = by_id["cait-ccs"].cost / 256_000
    assert by_id["cait-ccs"].cost_per_mbit == (per_bit * 1_000_000).quantize(Decimal("0.01"))
    assert report.tenant_bits == {"alpha": 512_000}
    expected_tenant = by_id["cait-ccs"].cost + by_id["ccs-rectorado"].cost  # alpha is the only user of both
    assert abs(report.tenant_cost["alpha"] - expected_tenant) <= Decimal("0.01")
    margin_price = report.suggested_price_per_mbit(Decimal("0.5"))
    total_cost = by_id["cait-ccs"].cost + by_id["ccs-rectorado"].cost
    assert margin_price == (total_cost / 768_000 * 1_000_000 * 2).quantize(Decimal("0.01"))
    usage(a, "entropy_bytes", 2_000_000_000, timezone.now())
    report = costs.cost_report(start, start + timedelta(days=2), telemetry={})
    qrng_cost = report.qrngs[0].cost  # 5,000 EUR over 5 years, 2 days: 5.48
    assert report.entropy_bytes == 2_000_000_000 and qrng_cost == Decimal("5.48")
    assert report.qrng_cost_per_gb == Decimal("2.74")
    assert report.suggested_price_per_gb(Decimal("0.5")) == Decimal("5.48")
    response = world["op"].get("/api/billing/operator/costs/", {"margin": "0.5"})
    assert response.status_code == 200 and {ln["asset_id"] for ln in response.json()["links"]} == set(by_id)
    assert world["op"].get("/api/billing/operator/costs/", {"margin": "2"}).status_code == 400


def test_pages_for_tenant_and_operator(world, client):
    usage(world["a"], "qkd_key_bits", 12_000_000, timezone.now())
    client.force_login(world["ua"])
    page = client.get("/billing/")
    assert page.status_code == 200 and b"Running total" in page.content and world["inv_a"].number.encode() in \
        page.content
    assert world["inv_b"].number.encode() not in page.content
    assert client.get("/billing/operator/").status_code == 302  # not staff
    AssetCost.objects.create(kind="qkd_link", asset_id="cait-ccs", endpoints="CAIT,CCS", vendor="HEQA",
                             purchase_price=Decimal("118000"))
    from allauth.mfa.models import Authenticator

    Authenticator.objects.create(user=world["staff"], type=Authenticator.Type.TOTP, data={"secret": "x"})
    client.force_login(world["staff"])
    assert client.post("/billing/operator/").status_code == 302  # refresh drafts now
    page = client.get("/billing/operator/")
    assert page.status_code == 200 and b"<svg" in page.content and b"cait-ccs" in page.content
    assert b"alpha" in page.content and b"bravo" in page.content and b"drafts re-rated" in page.content


def test_openapi_documents_billing(world):
    schema = APIClient().get("/api/schema/?format=json").json()
    paths = set(schema["paths"])
    for p in ("/api/billing/invoices/", "/api/billing/invoices/{id}/pdf/", "/api/billing/draft/",
              "/api/billing/credit-notes/", "/api/billing/webhooks/", "/api/billing/operator/price-books/",
              "/api/billing/operator/costs/", "/api/billing/operator/credit-notes/"):
        assert p in paths, p


def test_admin_pages(world, client):
    from allauth.mfa.models import Authenticator

    Authenticator.objects.create(user=world["staff"], type=Authenticator.Type.TOTP, data={"secret": "x"})
    world["staff"].is_superuser = True
    world["staff"].save()
    client.force_login(world["staff"])
    for path in ("pricebook", "pricecomponent", "invoice", "creditnote", "webhookendpoint", "webhookdelivery",
                 "assetcost", "billingaccount"):
        assert client.get(f"/admin/billing/{path}/").status_code == 200, path
    book = PriceBook.objects.first()
    page = client.get(f"/admin/billing/pricebook/{book.pk}/change/")
    assert page.status_code == 200 and b"name=\"_save\"" not in page.content  # in effect: view only
    inv = world["inv_a"]
    assert client.get(f"/admin/billing/invoice/{inv.pk}/change/").status_code == 200
    assert client.post(f"/admin/billing/invoice/{inv.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.post("/admin/billing/pricebook/add/", {
        "plan": book.plan_id, "name": "past", "currency": "EUR", "effective_from_0": "2020-01-01",
        "effective_from_1": "00:00:00", "components-TOTAL_FORMS": "0", "components-INITIAL_FORMS": "0"},
    ).status_code == 200  # the form comes back with the error, nothing saved
    assert not PriceBook.objects.filter(name="past").exists()
