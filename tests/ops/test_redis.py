"""Redis is a trust boundary (issue 13, finding 15): AUTH/ACL and TLS URLs work for every Redis user of the portal
(cache, Celery broker, rate limits, the entropy pool), certificates are verified, the Django cache never unpickles
what Redis hands back, and the test clusters keep their sockets in 0700 directories.

Real redis-server processes (TLS with a throwaway CA, an ACL user) and the real settings module in a subprocess;
nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portal.cache import JSONSerializer

ROOT = Path(__file__).resolve().parents[2]
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


# --- the cache's serializer ---------------------------------------------------------------------------------------

class _Planted:
    """What a writer to Redis could plant for a pickle-based cache: unpickling it runs code (creates a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_the_cache_serializer_round_trips_what_the_portal_caches_and_never_unpickles(tmp_path):
    serializer = JSONSerializer()
    # what is cached: gateway vouchers and the TLS supervisor lock (1), the readiness probe ("1"), allauth's
    # markers (True, "y"), allauth's and DRF's rate-limit histories (lists of float timestamps), counters
    cached = [1, 0, -7, 2**62, "1", "y", True, False, [1765000000.25, 1765000001.5], [], {"a": [1, "b"]}, 0.5]
    for value in cached:
        back = serializer.loads(serializer.dumps(value))
        assert back == value and type(back) is type(value), value
    assert serializer.dumps(41) == 41  # integers stay Redis integers: incr/decr remain atomic
    for value in (dt.datetime.now(dt.UTC), {1, 2}, b"raw", float("nan")):
        with pytest.raises((TypeError, ValueError)):  # fails at set time, never pickled
            serializer.dumps(value)
    marker = tmp_path / "unpickled"
    with pytest.raises(ValueError):
        serializer.loads(pickle.dumps(_Planted(str(marker))))
    assert not marker.exists()


# --- real Redis servers -------------------------------------------------------------------------------------------

def _certificate(subject: str, key, issuer: x509.Certificate | None = None, issuer_key=None, *, ca: bool = False):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        import ipaddress

        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate | None = None, key=None) -> str:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server that speaks TLS only (loopback), with the default user off and an ACL user ``qxaas``."""
    home = tmp_path / "redis"
    home.mkdir(mode=0o700)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("throwaway redis CA", ca_key, ca=True)
    files = {"ca": _pem(home / "ca.pem", ca), "cert": _pem(home / "redis.pem", _certificate("redis", key, ca, ca_key)),
             "key": _pem(home / "redis.key", key=key)}
    (home / "users.acl").write_text("user default off\nuser qxaas on >redis-pw-0123 ~* &* +@all\n")
    port = _free_port()
    subprocess.run(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                    "--tls-cert-file", files["cert"], "--tls-key-file", files["key"], "--tls-ca-cert-file",
                    files["ca"], "--tls-auth-clients", "no", "--aclfile", str(home / "users.acl"), "--daemonize",
                    "yes", "--pidfile", str(home / "redis.pid"), "--dir", str(home), "--save", "", "--appendonly",
                    "no"], check=True, capture_output=True, timeout=30)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port, files
    finally:
        pidfile = home / "redis.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 15)


PROBE = """
import json, django
django.setup()
from django.conf import settings
from portal.health import readiness
out = {"ready": readiness()[1], "broker_ssl": repr(settings.CELERY_BROKER_USE_SSL)}
if out["ready"]["cache"]["ok"]:
    import redis
    from django.core.cache import cache
    from tenants.ratelimit import RedisTokenBucket
    cache.set("probe", [1765000000.5, 2.25], 30)
    out["cache"] = cache.get("probe")
    out["raw"] = redis.Redis.from_url(settings.REDIS_URL).get(cache.make_and_validate_key("probe")).decode()
    out["bucket"] = RedisTokenBucket(settings.REDIS_URL).take("probe", 10.0, 10).allowed
print(json.dumps(out, default=str))
"""


def _probe(tmp_path: Path, redis_url: str) -> dict:
    """The real base settings in a fresh process (SQLite, the given Redis for cache, broker and rate limits)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DJANGO_SETTINGS_MODULE="portal.settings.base", QXAAS_VAR_DIR=str(tmp_path / "var"),
               REDIS_URL=redis_url, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_redis
def test_redis_acl_and_tls_urls_serve_the_cache_broker_and_rate_limits_with_verified_certificates(tmp_path,
                                                                                                    tls_redis):
    port, files = tls_redis
    ca = urllib.parse.quote(files["ca"], safe="")
    good = _probe(tmp_path, f"rediss://qxaas:redis-pw-0123@127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    assert good["ready"]["cache"] == {"ok": True, "backend": "redis"}, good
    assert good["ready"]["broker"]["ok"] is True, good
    assert good["cache"] == [1765000000.5, 2.25] and json.loads(good["raw"]) == good["cache"]  # JSON in Redis
    assert good["bucket"] is True  # the rate limiter's Lua script over TLS + ACL

    # the certificate is verified by every client, the Celery broker included (kombu alone would not check it)
    unverified = _probe(tmp_path, f"rediss://qxaas:redis-pw-0123@127.0.0.1:{port}/0")
    assert "CERT_REQUIRED" in unverified["broker_ssl"]
    assert unverified["ready"]["cache"]["ok"] is False and unverified["ready"]["broker"]["ok"] is False
    # the ACL: a wrong password, or none, gets nothing
    for url in (f"rediss://qxaas:wrong@127.0.0.1:{port}/0?ssl_ca_certs={ca}",
                f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"):
        denied = _probe(tmp_path, url)
        assert denied["ready"]["cache"]["ok"] is False and denied["ready"]["broker"]["ok"] is False, url
    assert "redis-pw-0123" not in json.dumps(denied)  # failures do not echo credentials


@needs_redis
def test_the_test_clusters_keep_their_sockets_in_0700_directories_behind_redis_auth(tmp_path):
    check = """
import json, os, stat, sys, urllib.parse
import psycopg, redis
db_dir = urllib.parse.unquote(urllib.parse.urlsplit(os.environ["DATABASE_URL"]).netloc.rpartition("@")[2])
url = os.environ["REDIS_URL"]
parts = urllib.parse.urlsplit(url)
out = {"db_dir": oct(stat.S_IMODE(os.stat(db_dir).st_mode)), "scheme": parts.scheme,
       "redis_dir": oct(stat.S_IMODE(os.stat(os.path.dirname(parts.path)).st_mode)),
       "ping": redis.Redis.from_url(url).ping()}
try:
    redis.Redis(unix_socket_path=parts.path).ping()
    out["anonymous"] = "allowed"
except redis.exceptions.AuthenticationError:
    out["anonymous"] = "refused"
with psycopg.connect(host=db_dir, user="postgres", dbname="postgres") as conn:
    out["pg"] = conn.execute("select 1").fetchone()[0]
print(json.dumps(out))
"""
    script = f". scripts/services.sh; start_services sockets; .venv/bin/python -c '{check}'"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PG_OPTS")}
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"db_dir": "0o700", "redis_dir": "0o700", "scheme": "unix", "ping": True, "anonymous": "refused",
                   "pg": 1}, out
