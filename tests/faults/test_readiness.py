"""/readyz tells the truth, to the right people; a dependency that is away is a 503 in the API's shapes."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.http import HttpResponse
from django.test import Client
from django.urls import path
from redis.exceptions import ConnectionError as RedisConnectionError

from portal import errors, health
from services import streams
from services.etsi014 import describe_etsi
from services.sdqkd.client004 import StreamAnswer


def down() -> str:
    raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.fixture
def checks(monkeypatch):
    table = {"database": health.check_database, "cache": lambda: "redis"}
    monkeypatch.setattr(health, "READINESS_CHECKS", table)
    return table


@pytest.mark.django_db
def test_anonymous_callers_get_ok_or_not_ok_with_a_stable_code_and_no_detail(client, checks):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "code": "ready"}
    checks["cache"] = down
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "unavailable", "code": "not_ready"}
    assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db
def test_operators_see_which_dependency_is_down(client, checks, settings, django_user_model):
    checks["cache"] = down
    settings.HEALTH_TOKEN = "monitoring-secret"
    body = client.get("/readyz", HTTP_AUTHORIZATION="Bearer monitoring-secret").json()
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["cache"] == {"ok": False, "error": "ConnectionError: Error 111 connecting to "
                                                             "127.0.0.1:6379. Connection refused."}
    assert "checks" not in client.get("/readyz", HTTP_AUTHORIZATION="Bearer wrong").json()
    staff = django_user_model.objects.create_user("op", "op@example.org", "pw-long-enough", is_staff=True)
    client.force_login(staff)
    assert client.get("/readyz").json()["checks"]["cache"]["ok"] is False


def boom_database(request, **_kwargs) -> HttpResponse:
    raise OperationalError("connection to server on socket failed: No such file or directory")


urlpatterns = [
    path("pages/boom", boom_database),
    path("api/v1/keys/<str:sae>/enc_keys", boom_database),
    path("api/boom", boom_database),
]
handler500 = "portal.errors.server_error"


@pytest.mark.urls(__name__)
def test_a_database_that_is_away_is_a_503_with_retry_after_in_each_shape(settings):
    client = Client(raise_request_exception=False)
    api = client.get("/api/boom")
    assert api.status_code == 503 and api["Retry-After"] == str(errors.RETRY_AFTER_S)
    assert api.json()["error"]["code"] == "service_unavailable"
    assert "database is unavailable" in api.json()["error"]["message"]
    etsi = client.get("/api/v1/keys/sae-b/enc_keys")
    assert etsi.status_code == 503 and set(etsi.json()) == {"message"}  # the ETSI 014 error shape
    assert client.get("/pages/boom").status_code == 503


def test_drf_and_the_gateway_map_backend_errors_the_same_way():
    status, code, message, _details, headers = errors.describe(RedisConnectionError("refused"))
    assert (status, code, headers["Retry-After"]) == (503, "service_unavailable", str(errors.RETRY_AFTER_S))
    assert "cache (Redis)" in message
    assert describe_etsi(OperationalError("gone"))[0] == 503
    with pytest.raises(ValueError):
        errors.describe(ValueError("a bug stays a 500"))


def test_the_kmes_already_delivered_answer_is_recognised():
    # The crash itself (a web worker killed between the KME's answer and the commit) is in test_faults.py.
    assert streams.handed_out_before(StreamAnswer(status=2, key_stream_id="k", message=(
        "chunk already delivered to this application")))
    assert not streams.handed_out_before(StreamAnswer(status=2, key_stream_id="k"))
