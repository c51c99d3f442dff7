"""Security hardening (issue 13) in the services app: each test names the finding it guards."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from django.test import Client

from services import pki
from services.models import Sae

# --- 12. one SAE name validator for the web form and the API; the certificate in the row's transaction ----------

BAD_NAMES = ["", "   ", "two words", "a/b", "<script>", "x" * 80, "-leading-dash", "ünï"]


def test_the_web_form_refuses_the_names_the_api_refuses(make_lab):
    lab = make_lab("upm")
    browser = Client()
    browser.force_login(lab.owner)
    before = set(Sae.objects.for_tenant(lab.tenant).values_list("name", flat=True))
    for name in BAD_NAMES:
        response = browser.post("/services/", {"name": name, "node": "CCS"})
        assert response.status_code == 200, name
        assert "BEGIN CERTIFICATE" not in response.content.decode(), name
        api = lab.client.post("/api/saes/", {"name": name, "node": "CCS"}, format="json")
        assert api.status_code == 400, (name, api.content)
        assert api.json()["error"]["code"] in ("invalid", "bad_request")
    assert set(Sae.objects.for_tenant(lab.tenant).values_list("name", flat=True)) == before


def test_the_longest_valid_name_gets_a_certificate(make_lab):
    lab = make_lab("a-rather-long-tenant-slug-for-a-research-lab")
    name = "s" * 64
    bundle = lab.add_sae(name, "CCS")
    cert = x509.load_pem_x509_certificate(bundle["certificate"].encode())
    assert name in cert.subject.rfc4514_string()


def test_a_failed_certificate_leaves_no_sae_behind(make_lab, monkeypatch):
    lab = make_lab("upm")

    def broken(*args, **kwargs):  # failure injection: the CA cannot sign (e.g. its key file is unreadable)
        raise OSError("CA key unreadable")

    monkeypatch.setattr(pki, "issue_sae_certificate", broken)
    with pytest.raises(OSError):
        lab.client.post("/api/saes/", {"name": "half-made", "node": "CCS"}, format="json")
    assert not Sae.objects.for_tenant(lab.tenant).filter(name="half-made").exists()


# --- 5. state directories 0700, databases and key stores 0600, whatever the umask -----------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_twins_key_store_is_private_whatever_the_umask(tmp_path):
    from services.sdqkd.twin.store import NodeStore

    old = os.umask(0o022)
    try:
        store = NodeStore(tmp_path / "twin" / "nodes" / "CAIT" / "store.sqlite", "CAIT")
        with store.transaction():
            pass
        store.close()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "twin" / "nodes" / "CAIT" / "store.sqlite") == 0o600
    for directory in (tmp_path / "twin", tmp_path / "twin" / "nodes", tmp_path / "twin" / "nodes" / "CAIT"):
        assert _mode(directory) == 0o700, directory
    for extra in (tmp_path / "twin" / "nodes" / "CAIT").iterdir():  # WAL and shared-memory files
        assert _mode(extra) & 0o077 == 0, extra


def test_the_portals_sqlite_database_and_var_dir_are_private(tmp_path):
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(QXAAS_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="portal.settings.base")
    code = "import django; django.setup(); from django.db import connection; connection.ensure_connection()"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120,
                   preexec_fn=lambda: os.umask(0o022))
    assert _mode(var) == 0o700
    assert _mode(var / "qxaas.sqlite3") == 0o600
    for name in ("secret_key", "token_pepper"):
        assert _mode(var / name) == 0o600


# --- 14. generated secrets written atomically, never empty; the portal CA created once across processes -----------

def _settle(var: Path, code: str, processes: int = 1, before: str = "import django, environ") -> list:
    """Run ``code`` in ``processes`` fresh interpreters on the embedded default with ``var`` as QXAAS_VAR_DIR, all
    released at once after ``before`` ran (when the file ``go`` appears), so first starts really race."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY",
                                                            "API_TOKEN_PEPPERS")}
    env.update(QXAAS_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="portal.settings.base", GO=str(var.parent / "go"))
    wait = (f"{before}\nimport os, time\nfor _ in range(6000):\n    if os.path.exists(os.environ['GO']): break\n"
            "    time.sleep(0.001)\n")
    procs = [subprocess.Popen([sys.executable, "-c", wait + code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    time.sleep(3)  # every interpreter has done ``before`` and waits (a slow machine only makes the race milder)
    (var.parent / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_an_empty_generated_secret_is_refused_not_used(tmp_path):
    var = tmp_path / "var"
    var.mkdir()
    (var / "token_pepper").write_text("")  # what a crash between creating and writing the file left behind
    [result] = _settle(var, "from django.conf import settings; print(settings.API_TOKEN_PEPPERS)")
    assert result.returncode != 0
    assert "token_pepper" in result.stderr and "empty" in result.stderr


def test_concurrent_first_starts_agree_on_the_secrets(tmp_path):
    var = tmp_path / "var"
    code = "from django.conf import settings; print(settings.SECRET_KEY, settings.API_TOKEN_PEPPERS[1])"
    results = _settle(var, code, processes=6)
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    values = {r.stdout.strip() for r in results}
    assert len(values) == 1 and all(len(part) > 40 for part in values.pop().split())


def test_concurrent_processes_create_one_portal_ca(tmp_path):
    var = tmp_path / "var"
    code = ("cert, _ = pki.ca()\n"
            "issued = pki.issue_sae_certificate('t', 's')\n"
            "from cryptography import x509\nx509.load_pem_x509_certificate(issued.cert_pem.encode())"
            ".verify_directly_issued_by(x509.load_pem_x509_certificate((pki.pki_dir() / 'ca.crt').read_bytes()))\n"
            "print(cert.fingerprint(__import__('cryptography.hazmat.primitives.hashes').hazmat.primitives.hashes"
            ".SHA256()).hex())")
    results = _settle(var, code, processes=6, before="import django; django.setup()\nfrom services import pki")
    assert all(r.returncode == 0 for r in results), [r.stderr[-800:] for r in results]
    assert len({r.stdout.strip() for r in results}) == 1


# --- 13. --insecure-http only when every address actually bound is loopback ---------------------------------------

@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0", ":0", "192.0.2.10:0", "kme.example.org:0"])
def test_insecure_http_refuses_a_topology_that_binds_beyond_loopback(tmp_path, address):
    from services.sdqkd.twin.network import Twin
    from services.sdqkd.twin.topology import parse_topology

    text = (ROOT / "services/sdqkd/topologies/line-8.yaml").read_text().replace("'127.0.0.1:8411'", f"'{address}'")
    topology = parse_topology(text)
    with pytest.raises(ValueError, match="loopback"):
        Twin(topology, tmp_path / "twin", insecure=True)
    Twin(topology, tmp_path / "twin", insecure=True, base_port=0)  # --host (127.0.0.1) decides with --base-port
    with pytest.raises(ValueError, match="loopback"):
        Twin(topology, tmp_path / "twin", host="0.0.0.0", insecure=True, base_port=0)


@pytest.mark.parametrize("address", ["127.0.0.1:0", "127.0.0.2:0", "localhost:0", "[::1]:0"])
def test_insecure_http_accepts_loopback_topologies(tmp_path, address):
    from services.sdqkd.twin.network import Twin
    from services.sdqkd.twin.topology import parse_topology

    text = (ROOT / "services/sdqkd/topologies/line-8.yaml").read_text().replace("'127.0.0.1:8411'", f"'{address}'")
    Twin(parse_topology(text), tmp_path / "twin", insecure=True)


# --- 7. GETs that take keys out of the network answer API tokens only, never a browser's cookie ---------------------

def test_key_gets_refuse_session_authentication(make_lab):
    from tenants.models import UsageRecord

    lab = make_lab("upm")
    browser = Client()
    browser.force_login(lab.owner)  # a cross-site link would carry this cookie
    response = browser.get("/api/qkd/keys?src=CAIT&dst=Rectorado")
    assert response.status_code == 401, response.content
    assert "token" in response.json()["error"]["message"]
    assert browser.get("/api/qkd/keys/some-key-id").status_code == 401
    assert not UsageRecord.objects.for_tenant(lab.tenant).exists()
    assert browser.get("/api/saes/").status_code == 200  # reading pages' data with the session still works
    assert lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado").status_code == 200  # curl with a token


# --- 11. internal details (KME URLs and messages, probe errors) only for operators; tenants get a code and an ID --

def _operator_session(make_user) -> Client:
    from allauth.mfa.models import Authenticator

    staff = make_user("root", staff=True)
    Authenticator.objects.create(user=staff, type=Authenticator.Type.TOTP, data={"secret": "x"})
    browser = Client()
    browser.force_login(staff)
    return browser


def test_the_node_list_shows_kme_urls_to_operators_only(make_lab, make_user, client_for):
    lab = make_lab("upm")
    nodes = lab.client.get("/api/qkd/nodes/").json()
    assert nodes and all("kme_url" not in n for n in nodes)
    nodes = _operator_session(make_user).get("/api/qkd/nodes/?tenant=upm").json()
    assert all(n["kme_url"].startswith("https://") for n in nodes)
    # a staff member's token without the operator scope is a tenant's view
    staff_token = client_for(make_user("helper", staff=True), lab.tenant, ["keys:read"])
    assert all("kme_url" not in n for n in staff_token.get("/api/qkd/nodes/").json())


def test_readyz_tells_anonymous_callers_no_exception_text(db, monkeypatch, make_user):
    from portal import health

    def broken() -> str:
        raise RuntimeError("could not connect to postgres://qxaas:hunter2@10.1.2.3/qxaas")

    monkeypatch.setitem(health.READINESS_CHECKS, "database", broken)  # failure injection: a database that is down
    response = Client().get("/readyz")
    assert response.status_code == 503 and response.json()["code"] == "not_ready"
    assert "hunter2" not in response.content.decode() and "10.1.2.3" not in response.content.decode()
    detail = _operator_session(make_user).get("/readyz").json()  # operators see which check failed and why
    assert detail["checks"]["database"]["ok"] is False and "RuntimeError" in detail["checks"]["database"]["error"]


def test_kme_errors_reach_tenants_as_a_code_and_a_request_id(make_lab, make_user, monkeypatch, caplog):
    from portal.logs import ContextFilter
    from services.sdqkd.client import KmeClient, KmeRejected, KmeUnavailable

    caplog.handler.addFilter(ContextFilter())  # as the portal's log handlers do: each record names its request
    lab = make_lab("upm")
    secret_words = "backend SAE portal-sae-cait-7 at https://10.9.8.7:8443 said no"

    def rejected(self, *args, **kwargs):  # failure injection: the KME refuses (its words name internals)
        raise KmeRejected(secret_words, status=400)

    monkeypatch.setattr(KmeClient, "enc_keys", rejected)
    response = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado")
    assert response.status_code in (400, 503), response.content
    error = response.json()["error"]
    assert secret_words not in response.content.decode() and "10.9.8.7" not in response.content.decode()
    assert error["code"] == "kme_rejected" and error["request_id"] == response["X-Request-ID"]
    assert "internal" not in error
    assert any(getattr(r, "request_id", None) == error["request_id"] and secret_words in r.getMessage()
               for r in caplog.records)  # the operator finds the KME's words under the tenant's request ID

    def down(self, *args, **kwargs):
        raise KmeUnavailable(secret_words)

    monkeypatch.setattr(KmeClient, "enc_keys", down)
    response = lab.client.get("/api/qkd/keys?src=CAIT&dst=Rectorado")
    assert response.status_code == 503 and secret_words not in response.content.decode()
    assert response.json()["error"]["code"] == "kme_unavailable"
    # ETSI 014 (token + X-SAE-ID on the web listener): the ETSI error shape, no KME words either
    response = lab.etsi("upm-cait", "get", "upm-rect/enc_keys")
    assert response.status_code == 503 and secret_words not in response.content.decode()


# --- 9. key-ID secrets: separate from SECRET_KEY, versioned (the version in the ID), required in production -------

def test_key_ids_survive_a_rotation_of_the_key_id_secret(settings):
    from services import keyids

    settings.KEY_ID_SECRETS = {1: "the first key-ID secret"}
    old = keyids.seal(7, 3)
    settings.KEY_ID_SECRETS = {1: "the first key-ID secret", 2: "the second key-ID secret"}
    new = keyids.seal(7, 3)
    assert {k[0] for k in old} == {"1"} and {k[0] for k in new} == {"2"}  # the version is the first hex digit
    assert keyids.open_ids(old + new) == [(7, 0), (7, 1), (7, 2)] * 2
    settings.KEY_ID_SECRETS = {2: "the second key-ID secret"}  # version 1 retired: its IDs are unknown now
    assert keyids.open_ids(old) == [None] * 3 and keyids.open_ids(new) == [(7, 0), (7, 1), (7, 2)]
    settings.KEY_ID_SECRETS = {2: "the second key-ID secret", 17: "the third"}  # 17 = 1 (mod 16): slot reused
    assert {k[0] for k in keyids.seal(7, 3)} == {"1"}
    assert keyids.open_ids(new + keyids.seal(7, 1)) == [(7, 0), (7, 1), (7, 2), (7, 0)]
    assert keyids.open_ids(old) == [None] * 3  # the retired version 1 does not open under version 17's key


def test_ids_of_the_unversioned_scheme_open_under_a_listed_secret(settings):
    """Keys charged before the upgrade (sealed with SECRET_KEY or KEY_ID_SECRET, no version in the ID) stay
    fetchable while that secret is listed as an older version."""
    from services import keyids

    settings.KEY_ID_SECRETS = {0: "what SECRET_KEY was"}
    before = [keyids.seal_v1(99, 4), keyids.seal_legacy(99, 5)]
    settings.KEY_ID_SECRETS = {0: "what SECRET_KEY was", 1: "a key-ID secret of its own"}
    assert keyids.open_ids(before + keyids.seal(99, 1)) == [(99, 4), (99, 5), (99, 0)]
    settings.KEY_ID_SECRETS = {1: "a key-ID secret of its own"}
    assert keyids.open_ids(before) == [None, None]


def test_the_key_id_secret_is_not_the_secret_key():
    from django.conf import settings as live

    assert live.KEY_ID_SECRETS[max(live.KEY_ID_SECRETS)] != live.SECRET_KEY


def _production_check(tmp_path, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KEY_ID_SECRETS", "KEY_ID_SECRET")}
    env.update(DJANGO_SETTINGS_MODULE="portal.settings.production", QXAAS_VAR_DIR=str(tmp_path),
               SECRET_KEY="s" * 60, API_TOKEN_PEPPERS="1:" + "p" * 40, ALLOWED_HOSTS="qxaas.example.org", **extra)
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_production_requires_its_own_key_id_secrets(tmp_path):
    result = _production_check(tmp_path)
    assert result.returncode != 0 and "KEY_ID_SECRETS" in result.stderr
    result = _production_check(tmp_path, KEY_ID_SECRETS="1:" + "s" * 60)  # the SECRET_KEY again
    assert result.returncode != 0 and "must not reuse SECRET_KEY" in result.stderr
    result = _production_check(tmp_path, KEY_ID_SECRETS=f"1:{'k' * 40},17:{'j' * 40}")  # one slot, two versions
    assert result.returncode != 0 and "differ modulo 16" in result.stderr
    # SECRET_KEY as an older version (to open IDs an earlier release sealed with it) is allowed
    assert _production_check(tmp_path, KEY_ID_SECRETS=f"0:{'s' * 60},1:{'k' * 40}").returncode == 0


# --- 8. the gateway's voucher for a client certificate is bound to the request and fresh -----------------------------

def test_the_gateway_voucher_is_bound_to_serial_method_path_and_time(make_lab):
    import hashlib
    import hmac

    from django.conf import settings

    lab = make_lab("upm")
    serial = Sae.objects.for_tenant(lab.tenant).get(name="upm-cait").cert_serial
    path = "/api/v1/keys/upm-rect/status"
    web = Client()
    # the static header of old: whoever saw it once (a proxy's log) could claim any certificate, forever
    static = hmac.new(settings.SECRET_KEY.encode(), b"qxaas key gateway: verified client certificate",
                      hashlib.sha256).hexdigest()
    assert web.get(path, HTTP_X_GATEWAY_CLIENT_SERIAL=serial, HTTP_X_GATEWAY_SECRET=static).status_code == 401

    from services.authentication import make_voucher

    def get(voucher: str, target: str = path, claimed: str = serial):
        return web.get(target, HTTP_X_GATEWAY_CLIENT_SERIAL=claimed, HTTP_X_GATEWAY_VOUCHER=voucher).status_code

    assert get(make_voucher(serial, "GET", path)) == 200
    assert get(make_voucher(serial, "POST", path)) == 401  # another method
    assert get(make_voucher(serial, "GET", "/api/v1/keys/upm-cait/status")) == 401  # another path
    other = Sae.objects.for_tenant(lab.tenant).get(name="upm-rect").cert_serial
    assert get(make_voucher(other, "GET", path)) == 401  # another certificate
    assert get(make_voucher(serial, "GET", path, now=time.time() - 120)) == 401  # stale
    tampered = make_voucher(serial, "GET", path)
    assert get(tampered[:-1] + ("0" if tampered[-1] != "0" else "1")) == 401  # tampered
    once = make_voucher(serial, "GET", path)
    assert get(once) == 200 and get(once) == 401  # used once: a voucher seen on the wire cannot be replayed
