"""Fixtures that run the real SD-QKD twin (``python -m services.sdqkd.twin``) in a subprocess, on 127.0.0.1
with ephemeral ports and HTTPS with mutual TLS, its state in a temporary directory.

``twin_factory`` (in ``tests/fixtures.py``, for every area) starts them::

    def test_something(twin_factory):
        twin = twin_factory("madqci")
        with twin.session("sae-cait-1") as s:
            s.post(twin.url("CAIT") + "/api/v1/keys/sae-rectorado-1/enc_keys", json={"number": 1})
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


@dataclass
class RunningTwin:
    """A twin process and what a client needs to talk to it."""

    topology: str
    state_dir: Path
    args: list[str]
    process: subprocess.Popen | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None

    # -- addresses and credentials -----------------------------------------------------------------------
    def url(self, node: str) -> str:
        return self.endpoints["nodes"][node]["url"]

    @property
    def ca(self) -> str:
        return self.endpoints["ca"]

    def sae_cert(self, sae: str) -> tuple[str, str]:
        entry = self.endpoints["saes"][sae]
        return entry["cert"], entry["key"]

    @property
    def portal_cert(self) -> tuple[str, str]:
        return self.endpoints["portal"]["cert"], self.endpoints["portal"]["key"]

    def node_of(self, sae: str) -> str:
        return self.endpoints["saes"][sae]["node"]

    def session(self, sae: str | None = None, *, portal: bool = False) -> requests.Session:
        """A keep-alive HTTPS session presenting an SAE's (or the portal's) client certificate."""
        s = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE in the environment silently replaces the session's CA (requests #3829).
        s.trust_env = False
        if self.endpoints.get("insecure"):
            if sae:
                s.headers["X-SAE-ID"] = sae
            return s
        s.verify = self.ca
        if portal:
            s.cert = self.portal_cert
            if sae:
                s.headers["X-SAE-ID"] = sae
        elif sae:
            s.cert = self.sae_cert(sae)
        return s

    # -- convenience for tests ---------------------------------------------------------------------------
    def enc_keys(self, master: str, slave: str, **body: Any) -> requests.Response:
        with self.session(master) as s:
            return s.post(f"{self.url(self.node_of(master))}/api/v1/keys/{slave}/enc_keys", json=body, timeout=20)

    def dec_keys(self, slave: str, master: str, key_ids: list[str]) -> requests.Response:
        with self.session(slave) as s:
            return s.post(
                f"{self.url(self.node_of(slave))}/api/v1/keys/{master}/dec_keys",
                json={"key_IDs": [{"key_ID": k} for k in key_ids]},
                timeout=20,
            )

    def admin(self, link: str, action: str, body: dict | None = None, node: str | None = None) -> dict:
        node = node or next(iter(self.endpoints["nodes"]))
        with self.session(portal=True) as s:
            r = s.post(f"{self.url(node)}/api/v1/admin/links/{link}/{action}", json=body or {}, timeout=20)
        r.raise_for_status()
        return r.json()

    def topology_view(self, node: str | None = None) -> dict:
        node = node or next(iter(self.endpoints["nodes"]))
        with self.session(portal=True) as s:
            r = s.get(f"{self.url(node)}/api/v1/topology", timeout=20)
        r.raise_for_status()
        return r.json()

    def link_view(self, link: str) -> dict:
        return next(item for item in self.topology_view()["links"] if item["id"] == link)

    def wait_for_key(self, master: str, slave: str, count: int = 1, timeout: float = 10.0) -> dict:
        """Wait until the master's KME reports at least ``count`` keys for the pair."""
        deadline = time.monotonic() + timeout
        with self.session(master) as s:
            while True:
                status = s.get(f"{self.url(self.node_of(master))}/api/v1/keys/{slave}/status", timeout=10).json()
                if status["stored_key_count"] >= count or time.monotonic() > deadline:
                    return status
                time.sleep(0.05)

    # -- process control ---------------------------------------------------------------------------------
    def start(self) -> RunningTwin:
        endpoints_file = self.state_dir / "endpoints.json"
        endpoints_file.unlink(missing_ok=True)
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.sdqkd.twin", *self.args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not endpoints_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"twin did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.02)
        self.endpoints = json.loads(endpoints_file.read_text())
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def kill(self) -> None:
        """kill -9: no clean shutdown."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self) -> RunningTwin:
        self.stop()
        return self.start()


def start_twin(
    state_dir: Path,
    topology: str = "madqci",
    time_scale: float = 50.0,
    insecure: bool = False,
    extra_args: tuple[str, ...] = (),
) -> RunningTwin:
    args = ["--topology", topology, "--state-dir", str(state_dir), "--base-port", "0",
            "--time-scale", str(time_scale), "--log-level", "WARNING", *extra_args]
    if insecure:
        args.append("--insecure-http")
    return RunningTwin(topology, state_dir, args).start()


@pytest.fixture(scope="module")
def madqci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTwin]:
    """One madqci twin shared by a test module (tests must not cut its links or drain its stores)."""
    twin = start_twin(tmp_path_factory.mktemp("madqci") / "state", "madqci", time_scale=50.0)
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=100)
    yield twin
    twin.stop()
