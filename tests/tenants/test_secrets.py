"""No secret (token, password) is stored or logged in clear."""

from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client


def database_text() -> str:
    """Every row of every table, as text: what a database dump would show."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - our own table names
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_tokens_and_passwords_never_reach_the_database_or_logs(two_tenants, caplog):
    caplog.set_level(logging.DEBUG)
    password = "correct-horse-battery-staple-9"
    user = get_user_model().objects.create_user("dana", "dana@example.org", password)
    client = two_tenants["ca"]
    created = client.post("/api/tokens/", {"name": "leaktest", "scopes": ["billing:read"]}, format="json").json()
    secret = created["token"]
    assert client.get("/api/quotas/").status_code == 200
    bad = Client().get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {secret[:-2]}xx")  # a failed attempt is logged
    assert bad.status_code == 401
    browser = Client()
    login = browser.post("/accounts/login/", {"login": "dana", "password": password})
    assert login.status_code == 302, login.content[:500]  # a 200 is the form again: the login failed
    # the password was accepted; dana's address is not verified yet (mandatory verification), so she is sent there
    assert login["Location"] == "/accounts/confirm-email/", login["Location"]

    dump = database_text()
    logs = caplog.text
    for plaintext in (secret, secret.split(".", 1)[1], client.token_secret.split(".", 1)[1], password):
        assert plaintext not in dump
        assert plaintext not in logs
    # The public part is stored: that is what makes a leaked token recognisable.
    assert created["prefix"].removeprefix("qx_") in dump
    assert user.password.startswith(("md5$", "pbkdf2", "argon2", "bcrypt"))
