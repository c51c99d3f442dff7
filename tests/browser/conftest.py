"""The browser-test harness: the whole stack of ``make run`` on real PostgreSQL and Redis, driven by headless
Chromium (Debian's ``chromium`` and ``chromium-driver``, through Selenium).

Fixtures:
- ``portal_stack`` (session): ``portal.runstack`` (gunicorn, key gateway, Celery worker and beat, the QKD
  network twin) on a database of its own on the suite's PostgreSQL (``DATABASE_URL``) and a Redis database of its
  own on the suite's Redis (``REDIS_URL``), bootstrapped like ``make run`` (demo tenant, researcher, token);
- ``browser`` (session): a :class:`Browser` (a Chromium with a fresh profile, a download folder, helpers to
  sign in, take screenshots at laptop and phone widths under ``var/browser-artifacts/`` and run axe-core);
- ``researcher`` (function): the browser signed in as the demo researcher (cookies cleared first).

axe-core comes from PyPI (``selenium-axe-python``, which ships ``axe.min.js``): no CDN, nothing fetched at run time.
Without PostgreSQL/Redis or Chromium these tests skip, and under CI a skip fails (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / "var" / "browser-artifacts"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
STARTUP_BOUND_S = 120.0
WAIT_S = 15.0  # the longest a page element is waited for
WIDTHS = {"laptop": (1366, 900), "phone": (390, 844)}
REDIS_DB = 11  # the stack's own Redis database: the suite's tests use database 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(count: int) -> int:
    """A base port with ``count`` free ports after it (the twin's KMEs)."""
    for _ in range(50):
        base = secrets.randbelow(40000) + 20000
        try:
            with contextlib.ExitStack() as stack:
                for i in range(count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


class PortalStack:
    """``make run``'s stack on its own database; ``base`` is the web URL, ``token`` the demo API token."""

    def __init__(self, tmp: Path, database_url: str, redis_url: str) -> None:
        self.tmp, self.var = tmp, tmp / "var"
        self.database_url, self.redis_url = database_url, redis_url
        self.port, self.etsi_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "QKD_TWIN_STATE_DIR")}
        self.env.update(
            QXAAS_VAR_DIR=str(self.var), DJANGO_SETTINGS_MODULE="portal.settings.base", PORT=str(self.port),
            ETSI_HTTPS_PORT=str(self.etsi_port), QXAAS_DEMO="1", DATABASE_URL=database_url, REDIS_URL=redis_url,
            HEALTH_TOKEN="browser-health-token", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
            API_RATE_LIMIT_PER_SECOND="1000", API_RATE_LIMIT_BURST="2000",
            # The twin on free ports (other runs may hold madqci's defaults), light on the CPU.
            QKD_TWIN_ARGS=f"--base-port {free_port_range(3)} --mode statistical --time-scale 20 "
                          "--protocol-workers 0 --log-level WARNING")
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp / "stack.log"
        self.token = ""
        self.passwords: dict[str, str] = {}

    def manage(self, *args: str, module: str | None = None, timeout: float = 180) -> str:
        cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, "manage.py", *args]
        result = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    def start(self) -> None:
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput", "-v0")
        self.manage("bootstrap_demo")
        self.token = (self.var / "demo-token").read_text().strip()
        for line in (self.var / "demo-passwords").read_text().splitlines():
            user, _, password = line.partition(" ")
            self.passwords[user] = password
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "portal.runstack"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_BOUND_S
        while not (self.var / "demo-saes" / "demo-rect.key").exists() or not self.ready():
            assert self.proc.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, "the stack did not become ready:\n" + self.log_tail()
            time.sleep(0.5)

    def ready(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(self.base + "/readyz", timeout=3).status_code == 200
        return False

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        """The portal's API with the demo tenant's token."""
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    def twin_admin(self, link: str, action: str, node: str = "CAIT") -> None:
        """Cut or restore a twin link through the twin's admin API, with the portal's client certificate."""
        endpoints = json.loads((self.var / "twin" / "endpoints.json").read_text())
        cert = (endpoints["portal"]["cert"], endpoints["portal"]["key"])
        response = requests.post(endpoints["nodes"][node]["url"] + f"/api/v1/admin/links/{link}/{action}", cert=cert,
                                 verify=endpoints["ca"], timeout=10)
        assert response.ok, response.text

    def log_tail(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _own_database(database_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the suite's PostgreSQL server, and how to drop it."""
    import psycopg

    name = f"qxaas_browser_{secrets.token_hex(4)}"
    parts = urllib.parse.urlsplit(database_url)
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))  # libpq reads a %-encoded socket dir
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urllib.parse.urlunsplit(parts._replace(path="/" + name)), drop


@pytest.fixture(scope="session")
def portal_stack() -> Iterator[PortalStack]:
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        pytest.skip("browser tests run the stack on the suite's PostgreSQL and Redis (DATABASE_URL, REDIS_URL)")
    own_db, drop_db = _own_database(database_url)
    redis_parts = urllib.parse.urlsplit(redis_url)
    own_redis = urllib.parse.urlunsplit(redis_parts._replace(path=f"/{REDIS_DB}"))
    import redis

    redis.Redis.from_url(own_redis).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="qxaas-browser."))
    stack = PortalStack(tmp, own_db, own_redis)
    try:
        stack.start()
        yield stack
    finally:
        code = stack.stop()
        if code not in (0, None):
            print(stack.log_tail(), file=sys.stderr)
        drop_db()
        redis.Redis.from_url(own_redis).flushdb()
        shutil.rmtree(tmp, ignore_errors=True)


class Browser:
    """A headless Chromium on the portal with the helpers the tests share."""

    def __init__(self, base: str, downloads: Path, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--disable-extensions", f"--user-data-dir={profile}", "--window-size=1366,900"):
            options.add_argument(arg)
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.driver.set_page_load_timeout(60)
        self.base, self.downloads = base, downloads

    # --- navigation -------------------------------------------------------------------------------------------
    def get(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str, timeout: float = WAIT_S):
        """The first element matching ``css``, waited for (visible) up to ``timeout``."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def find_all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_until(self, condition: Callable[[], object], timeout: float = WAIT_S, what: str = "") -> object:
        """Poll ``condition`` (bounded by ``timeout``) until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                if value := condition():
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
            time.sleep(0.2)

    def text(self, css: str = "body") -> str:
        return self.find(css).text

    # --- signing in -------------------------------------------------------------------------------------------
    def sign_out(self) -> None:
        self.driver.delete_all_cookies()

    def sign_in(self, username: str, password: str, then: str = "/") -> None:
        self.sign_out()
        self.get("/accounts/login/?next=" + urllib.parse.quote(then))
        self.find("input[name=login]").send_keys(username)
        self.find("input[name=password]").send_keys(password)
        self.find("form button[type=submit], form input[type=submit]").click()
        self.wait_until(lambda: "/accounts/login" not in self.driver.current_url, what="the sign-in to finish")

    # --- artifacts --------------------------------------------------------------------------------------------
    def screenshot(self, name: str, widths: tuple[str, ...] = ("laptop", "phone")) -> list[Path]:
        """Full-page PNGs of the current page at each width: ``var/browser-artifacts/<name>-<width>.png``."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        paths = []
        for width_name in widths:
            width, height = WIDTHS[width_name]
            self.driver.set_window_size(width, height)
            time.sleep(0.2)  # the layout settles at the new width
            full = self.driver.execute_script("return Math.max(document.body.scrollHeight, "
                                              "document.documentElement.scrollHeight)")
            self.driver.set_window_size(width, min(max(height, int(full) + 120), 6000))
            path = ARTIFACTS / f"{name}-{width_name}.png"
            self.driver.save_screenshot(str(path))
            paths.append(path)
        self.driver.set_window_size(*WIDTHS["laptop"])
        return paths

    def axe(self, name: str = "") -> list[dict]:
        """Run axe-core (WCAG 2 A/AA rules) on the current page; return serious and critical violations.

        The full result is written to ``var/browser-artifacts/axe-<name>.json``."""
        script = axe_source()
        self.driver.execute_script(script)
        self.driver.set_script_timeout(60)
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',"
            " 'best-practice']}}).then(r => done(r)).catch(e => done({error: String(e)}));")
        assert "error" not in result, result
        if name:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / f"axe-{name}.json").write_text(json.dumps(result["violations"], indent=1))
        return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                 "nodes": [n["target"] for n in v["nodes"]][:5]}
                for v in result["violations"] if v["impact"] in ("serious", "critical")]

    def assert_accessible(self, name: str) -> None:
        bad = self.axe(name)
        assert not bad, f"axe-core: serious/critical violations on {name}: {json.dumps(bad, indent=1)}"

    # --- downloads --------------------------------------------------------------------------------------------
    def wait_for_download(self, before: set[str], timeout: float = WAIT_S) -> Path:
        """The file that appeared in the download folder since ``before`` (a set of names), once complete."""
        def done() -> Path | None:
            new = [p for p in self.downloads.iterdir() if p.name not in before]
            # Chromium writes to .org.chromium.Chromium.* or *.crdownload first, then renames.
            complete = [p for p in new if not p.name.startswith(".") and not p.name.endswith((".crdownload", ".tmp"))]
            return complete[0] if complete and len(complete) == len(new) else None

        return self.wait_until(done, timeout, "a download")

    def quit(self) -> None:
        self.driver.quit()


def axe_source() -> str:
    """axe-core's ``axe.min.js`` as shipped by the pinned ``selenium-axe-python`` wheel."""
    import selenium_axe_python

    return (Path(selenium_axe_python.__file__).parent / "axe-core" / "axe.min.js").read_text()


@pytest.fixture(scope="session")
def browser(portal_stack) -> Iterator[Browser]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"headless Chromium needs {path} (Debian: chromium chromium-driver)")
    tmp = Path(tempfile.mkdtemp(prefix="qxaas-chromium."))
    (tmp / "downloads").mkdir()
    browser = Browser(portal_stack.base, tmp / "downloads", tmp / "profile")
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def researcher(browser, portal_stack) -> Browser:
    """The browser, signed in as the demo tenant's researcher."""
    browser.sign_in("researcher", portal_stack.passwords["researcher"])
    return browser
