"""The OpenAPI schema tells the whole truth: property-based requests for every operation against a live portal.

Schemathesis generates requests from ``/api/schema/`` (as the live server serves it) for every operation, valid
ones (positive) and invalid ones (negative), and sends them over HTTP to the portal (pytest-django's live
server: real PostgreSQL, Redis, the real QKD network twin) with a real tenant token holding every tenant scope
(operators' endpoints: a staff token with ``operator``). Every response must be:

- no 5xx other than a documented 503 (``not_a_server_error`` allows the documented 503 only);
- a documented status code, with a documented content type, matching its documented schema;
- for a schema-valid request: not refused as malformed (400/422) — a documented reason (401/403/404/409/429/503)
  only; for a schema-invalid one: refused (4xx).

Bounded: ``MAX_EXAMPLES`` per operation and mode, no shrinking, derandomized (the same requests every run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import requests
import schemathesis
from allauth.mfa.models import Authenticator
from hypothesis import HealthCheck, Phase, given
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from portal.celery_app import app as celery_app
from qrng import runtime
from services import registry, saes
from tenants.models import Membership, Role, Scope
from tenants.schema import WHY
from tenants.services import set_plan_limits
from tenants.tokens import issue_token

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

GENERIC_400 = WHY["400"]
MAX_EXAMPLES = int(os.environ.get("SCHEMA_TEST_EXAMPLES", "6"))  # per operation and mode (positive, negative)
TENANT_SCOPES = sorted(s.value for s in Scope if s != Scope.OPERATOR)
# Operators' endpoints are exercised with the operator token; every other one with the tenant's token.
OPERATOR_PATHS = ("/api/plans/", "/api/billing/operator/", "/api/entropy/sources/")
OPERATOR_TENANT_WRITES = "/api/tenants/"
def valid_request_refused_only_for_a_documented_reason(ctx, response, case) -> None:
    """A schema-valid request may be refused (4xx) for a documented reason: 401/403/404/409/429 say why by
    themselves; a 400 (or 422) only where the operation documents the rules it refuses such input for (its 400's
    description is its own, not the generic "malformed input" one of tenants.schema)."""
    if not case.meta.generation.mode.is_positive or response.status_code not in (400, 422):
        return
    documented = case.operation.definition.raw.get("responses", {}).get(str(response.status_code), {})
    if documented.get("description", GENERIC_400) == GENERIC_400:
        raise AssertionError(f"a schema-valid request was refused with {response.status_code} and the operation "
                             f"documents no rule that refuses it: {response.text[:500]}")


CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    valid_request_refused_only_for_a_documented_reason,
    openapi_checks.negative_data_rejection,
]
# A 503 is an answer the schema documents (a backend or dependency away, nothing consumed: Retry-After);
# status_code_conformance checks that it is documented. Any other 5xx is a bug.
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}}})
# Destructive operations last, so a generated id that happens to be the test's own token or SAE spoils no other.
LAST = ("DELETE", "revoke", "suspend")


@pytest.fixture
def portal(transactional_db, live_server, backend_twin, make_tenant, make_user, settings):
    """The live portal with a tenant ``acme`` (SAEs ``acme-cait`` at CAIT and ``acme-rect`` at Rectorado)."""
    settings.QKD_AUTO_REGISTER_TWIN = False
    # The generator sends hundreds of requests a second; the limiter is exercised by its own tests.
    settings.API_RATE_LIMIT_PER_SECOND = settings.KEY_DELIVERY_RATE_LIMIT_PER_SECOND = 10_000.0
    settings.API_RATE_LIMIT_BURST = settings.KEY_DELIVERY_RATE_LIMIT_BURST = 100_000
    registry.forget_status_cache()
    registry.register_twin(backend_twin.endpoints)
    settings.QKD_TWIN_STATE_DIR = str(backend_twin.state_dir)  # the twin's simulated QRNG: the entropy source
    runtime.reset_service()
    tenant = make_tenant("acme")
    set_plan_limits(tenant.plan, {"qkd_key_bits.day": 10_000_000, "qkd_key_bits.month": -1,
                                  # a cap that turns generated giant draws into a (documented) 429
                                  "entropy_bytes.day": 4_000_000, "entropy_bytes.month": -1,
                                  "ipsec_tunnels": 2, "tls_sessions": 2, "key_streams": 4})
    owner, operator = make_user("acme-owner"), make_user("operator", staff=True)
    Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    Authenticator.objects.create(user=operator, type=Authenticator.Type.TOTP, data={"secret": "x"})  # may mint it
    for name, node in (("acme-cait", "CAIT"), ("acme-rect", "Rectorado")):
        saes.register_sae(tenant, name, node, "")

    def tokens() -> dict[str, str]:
        """Fresh tokens (a generated DELETE may have revoked the last ones)."""
        tenant.refresh_from_db()
        if not tenant.is_active:
            tenant.status = "active"
            tenant.save(update_fields=["status"])
        return {"tenant": issue_token(owner, tenant, "schema-test", TENANT_SCOPES)[1],
                "operator": issue_token(operator, tenant, "schema-test-op", [*TENANT_SCOPES, "operator"])[1]}

    yield live_server.url, tokens
    runtime.reset_service()
    # The generated requests queued tasks (quality reports, TLS provisioning) that no worker here runs: drop them,
    # or a later test's Celery worker would spend minutes on them before its own task.
    queues = {getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery")}
    queues |= {route["queue"] for route in getattr(settings, "CELERY_TASK_ROUTES", {}).values() if "queue" in route}
    with celery_app.connection_for_write() as connection:
        for queue in sorted(queues):
            connection.default_channel.queue_purge(queue)


def operations(schema) -> Iterator:
    ops = [result.ok() for result in schema.get_all_operations()]
    return iter(sorted(ops, key=lambda op: (any(w in op.label for w in LAST), op.label)))


def credential(operation) -> str:
    path, method = operation.path, operation.method.upper()
    if path.startswith(OPERATOR_PATHS):
        return "operator"
    if path.startswith(OPERATOR_TENANT_WRITES) and (method != "GET"):
        return "operator"
    return "tenant"


def exercise(operation, mode: GenerationMode, base_url: str, headers: dict[str, str]) -> None:
    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    run()


def test_every_operation_answers_as_documented(portal):
    base_url, tokens = portal
    served = requests.get(f"{base_url}/api/schema/?format=json", timeout=30)
    assert served.status_code == 200, served.text[:500]
    schema = schemathesis.openapi.from_dict(served.json(), config=CONFIG)
    failures: list[str] = []
    timings: list[str] = []
    count = 0
    for operation in operations(schema):
        count += 1
        secrets = tokens()
        headers = {"Authorization": f"Bearer {secrets[credential(operation)]}"}
        if operation.path.startswith(("/api/v1/keys/", "/api/etsi004/")) or operation.path.endswith("endpoint-key/"):
            headers["X-SAE-ID"] = "acme-cait"  # a token calls the key interfaces as one of its SAEs
        started = time.monotonic()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                exercise(operation, mode, base_url, headers)
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to make invalid (an operation without parameters or body)
            except (Exception, BaseExceptionGroup) as exc:  # collect them all: one run shows every failure
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:3000])
        timings.append(f"{time.monotonic() - started:6.2f}s {operation.label}")
    if os.environ.get("SCHEMA_TEST_REPORT"):  # while fixing: every failure in full, in a file
        Path(os.environ["SCHEMA_TEST_REPORT"]).write_text("\n\n=====\n".join(failures) + "\n\n" +
                                                          "\n".join(sorted(timings, reverse=True)))
    assert count > 90  # every operation of the schema was exercised
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures)
