"""A token stops working when its user is deactivated or when it expires, to the microsecond, through the API.

Each dead token is tried on the management API (``/api/me/``) and on ETSI 014 ``enc_keys`` (which would
spend quota): 401 in each interface's error format, and nothing charged. Time is frozen inside
``tenants.tokens`` so the ``expires_at == now`` boundary is exact (a token is dead AT its expiry instant).
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from tenants import tokens
from tenants.models import ApiToken, UsageRecord

NOW = timezone.now().replace(microsecond=123_456)


@pytest.fixture
def frozen(monkeypatch):
    """``timezone.now()`` as tenants.tokens sees it, fixed at NOW."""
    monkeypatch.setattr(tokens, "timezone", SimpleNamespace(now=lambda: NOW))
    return NOW


@pytest.fixture
def lab(make_lab, frozen):
    return make_lab("life")


def set_token(lab, **fields) -> None:
    token = tokens.verify_token(lab.client.token_secret)
    ApiToken.objects.for_tenant(lab.tenant).filter(pk=token.pk).update(**fields)


def deactivate(lab) -> None:
    lab.owner.is_active = False
    lab.owner.save(update_fields=["is_active"])


DEAD = {
    "inactive user": deactivate,
    "expired a second ago": lambda lab: set_token(lab, expires_at=NOW - timedelta(seconds=1)),
    "expires_at == now": lambda lab: set_token(lab, expires_at=NOW),
}


def enc_keys(lab):
    return lab.etsi("life-cait", "post", "life-rect/enc_keys", data={"number": 1, "size": 256})


def test_a_live_token_works_up_to_the_microsecond_before_expiry(lab):
    set_token(lab, expires_at=NOW + timedelta(microseconds=1))
    assert lab.client.get("/api/me/").status_code == 200
    response = enc_keys(lab)
    assert response.status_code == 200, response.content
    assert [r.quantity for r in UsageRecord.objects.for_tenant(lab.tenant)] == [256]


@pytest.mark.parametrize("kill", DEAD.values(), ids=DEAD.keys())
def test_a_dead_token_gets_401_on_the_api_and_on_etsi_and_is_charged_nothing(lab, kill):
    assert lab.client.get("/api/me/").status_code == 200  # alive until now
    kill(lab)
    me = lab.client.get("/api/me/")
    assert me.status_code == 401, me.content
    assert me.json()["error"]["code"] == "authentication_failed"
    assert me["WWW-Authenticate"].startswith("Bearer")
    response = enc_keys(lab)
    assert response.status_code == 401, response.content
    assert "message" in response.json() and "keys" not in response.json()  # the ETSI error body
    assert not UsageRecord.objects.for_tenant(lab.tenant).exists()


def test_expire_tokens_marks_exactly_the_tokens_at_or_past_their_expiry(lab, frozen, client_for):
    set_token(lab, expires_at=NOW)
    later = client_for(lab.owner, lab.tenant, ["billing:read"])
    ApiToken.objects.for_tenant(lab.tenant).filter(pk=tokens.verify_token(later.token_secret).pk).update(
        expires_at=NOW + timedelta(microseconds=1))
    assert tokens.expire_tokens(NOW) == 1
    revoked = ApiToken.objects.for_tenant(lab.tenant).filter(revoked_at__isnull=False)
    assert [t.expires_at for t in revoked] == [NOW]
