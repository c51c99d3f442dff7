"""Smoke test of the embedded default: what `make run` starts on a fresh machine, with no configuration.

SQLite under a fresh var directory, kombu's filesystem broker with a real Celery worker and beat, gunicorn
serving the portal. Ctrl-C (SIGINT) must stop every process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    var = tmp_path_factory.mktemp("var")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(QXAAS_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="portal.settings.base", PORT=str(free_port()),
               ETSI_HTTPS_PORT=str(free_port()), QXAAS_DEMO="1")

    def manage(*args: str) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    manage("migrate", "--noinput")
    manage("collectstatic", "--noinput", "-v0")
    banner = manage("bootstrap_demo")
    token = (var / "demo-token").read_text().strip()
    assert token in banner
    log = open(var / "stack.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen([sys.executable, "-m", "portal.runstack"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{env['PORT']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if fetch(base + "/readyz", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None, (var / "stack.log").read_text()
        time.sleep(0.5)
    else:
        pytest.fail("the stack did not become ready:\n" + (var / "stack.log").read_text()[-4000:])
    yield {"base": base, "token": token, "manage": manage, "proc": proc, "var": var,
           "etsi": f"https://127.0.0.1:{env['ETSI_HTTPS_PORT']}"}
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=40)
    log.close()


def test_ready_on_sqlite_the_filesystem_broker_and_the_twin(stack):
    status, body = fetch(stack["base"] + "/readyz")
    assert json.loads(body) == {"status": "ok", "code": "ready"}  # anonymous: no detail
    # Operators see each dependency with the health token make run writes to var/health-token.
    status, body = fetch(stack["base"] + "/readyz", (stack["var"] / "health-token").read_text().strip())
    checks = json.loads(body)["checks"]
    assert status == 200, checks
    assert checks["database"]["backend"] == "sqlite"
    assert checks["broker"]["backend"] == "filesystem"
    assert checks["sdqkd"]["backend"] == "3 KMEs reachable"


def test_a_key_between_cait_and_rectorado_with_the_demo_token(stack):
    deadline = time.monotonic() + 30
    while True:  # the twin's links fill their stores at the physical rate from start
        status, body = fetch(stack["base"] + "/api/qkd/keys?src=CAIT&dst=Rectorado", stack["token"])
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200, body
    key = json.loads(body)
    status, peer = fetch(stack["base"] + f"/api/qkd/keys/{key['key_ID']}", stack["token"])
    assert status == 200 and json.loads(peer)["key"] == key["key"]


def test_the_demo_sae_bundles_work_with_curl_over_mtls(stack):
    bundles = stack["var"] / "demo-saes"
    deadline = time.monotonic() + 60
    while not (bundles / "demo-rect.key").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    tls = ["--cacert", str(bundles / "ca.crt")]
    master = [*tls, "--cert", str(bundles / "demo-cait.crt"), "--key", str(bundles / "demo-cait.key")]
    slave = [*tls, "--cert", str(bundles / "demo-rect.crt"), "--key", str(bundles / "demo-rect.key")]
    out = subprocess.run(["curl", "-sSf", *master, stack["etsi"] + "/api/v1/keys/demo-rect/enc_keys"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)["keys"][0]
    url = stack["etsi"] + f"/api/v1/keys/demo-cait/dec_keys?key_ID={key['key_ID']}"
    out = subprocess.run(["curl", "-sSf", *slave, url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["keys"][0]["key"] == key["key"]


def test_the_printed_token_lists_the_tenants_quotas(stack):
    status, body = fetch(stack["base"] + "/api/quotas/", stack["token"])
    assert status == 200
    quotas = {q["quota_key"]: q for q in json.loads(body)}
    assert quotas["qkd_key_bits.day"]["limit"] == 10_000_000


def test_dashboard_login_and_api_docs_are_served(stack):
    assert fetch(stack["base"] + "/accounts/login/")[0] == 200
    status, html = fetch(stack["base"] + "/api/docs/")
    assert status == 200 and b"swagger" in html.lower()
    assert fetch(stack["base"] + "/static/portal/site.css")[0] == 200


def test_the_worker_runs_a_task_through_the_embedded_broker(stack):
    stack["manage"]("shell", "-c", (
        "from datetime import timedelta; from django.utils import timezone;"
        "from tenants.models import ApiToken;"
        "ApiToken.objects.unscoped().filter(name='demo').update(expires_at=timezone.now() - timedelta(seconds=5));"
        "from tenants.tasks import expire_api_tokens; expire_api_tokens.delay()"
    ))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = stack["manage"]("shell", "-c", (
            "from tenants.models import ApiToken;"
            "print('LIVE_DEMO_TOKENS=%d' % ApiToken.objects.unscoped().filter(name='demo', revoked_at__isnull=True)"
            ".count())"))
        if "LIVE_DEMO_TOKENS=0" in out:
            break
        time.sleep(1)
    else:
        pytest.fail("the Celery worker did not run the task:\n" + (stack["var"] / "stack.log").read_text()[-4000:])
    assert fetch(stack["base"] + "/api/quotas/", stack["token"])[0] == 401  # the expired token is dead now


def test_ctrl_c_stops_everything(stack):
    proc = stack["proc"]
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 5  # web, ETSI HTTPS listener, worker, beat, twin
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=40) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "[runstack] stopped" in (stack["var"] / "stack.log").read_text()
