"""The deployment files pass their own checkers: systemd-analyze verify (units), nginx -t (the site)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = [*sorted((DEPLOY / "systemd").glob("qxaas*.service")), DEPLOY / "systemd" / "qxaas.target"]


def tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                      None)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def test_systemd_units_verify(tmp_path):
    """Units as installed (/opt/qxaas = this checkout, whose .venv/bin/python exists), checked by systemd."""
    analyze = tool("systemd-analyze")
    names = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/qxaas", str(ROOT))
        (tmp_path / unit.name).write_text(text)
        names.append(unit.name)
    assert {"qxaas-web.service", "qxaas-gateway.service", "qxaas-worker.service", "qxaas-beat.service",
            "qxaas-twin.service"} <= set(names)
    done = subprocess.run([analyze, "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    # A user that does not exist on this machine (qxaas) is the installer's job, not an error of the unit.
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "qxaas" not in line.split(":")[-1].lower()]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_units_give_each_service_its_own_metrics_folder():
    dirs = {}
    for unit in UNITS:
        for line in unit.read_text().splitlines():
            if "PROMETHEUS_MULTIPROC_DIR=" in line:
                dirs[unit.name] = line.split("PROMETHEUS_MULTIPROC_DIR=")[1].split()[0]
    # web, worker, the quality-report worker, gateway: never shared (docs/operations.md)
    assert len(set(dirs.values())) == len(dirs) == 4
    web = (DEPLOY / "systemd" / "qxaas-web.service").read_text()
    extra = web.split("METRICS_EXTRA_DIRS=")[1].split()[0].split(",")
    assert set(extra) == {dirs["qxaas-worker.service"], dirs["qxaas-worker-quality.service"]}


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qxaas.example.org")])
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    crt, pem = directory / "portal.crt", directory / "portal.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def test_nginx_site_passes_nginx_t(tmp_path):
    nginx = tool("nginx")
    for sub in ("tls", "logs", "static"):
        (tmp_path / sub).mkdir()
    self_signed(tmp_path / "tls")
    text = (DEPLOY / "nginx" / "qxaas.conf").read_text()
    for real, temporary in (("/etc/qxaas/tls/", f"{tmp_path}/tls/"), ("/var/log/nginx/", f"{tmp_path}/logs/"),
                            ("/run/nginx.pid", f"{tmp_path}/nginx.pid"), ("/var/lib/qxaas/static/",
                                                                          f"{tmp_path}/static/")):
        assert real in text
        text = text.replace(real, temporary)
    if os.geteuid() != 0:
        text = text.replace("user www-data;", "")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr
    assert "location = /metrics { return 404; }" in text  # never public


def test_make_run_gives_web_worker_and_gateway_their_own_emptied_metrics_folders(tmp_path, monkeypatch):
    from portal import runstack

    monkeypatch.setenv("QXAAS_VAR_DIR", str(tmp_path))
    stale = tmp_path / "metrics" / "web" / "counter_1.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    web, worker, gateway = (runstack.child_env(n) for n in ("web", "worker", "etsi-https"))
    assert not stale.exists()  # counters of a previous run are not summed into this one
    assert {web["PROMETHEUS_MULTIPROC_DIR"], worker["PROMETHEUS_MULTIPROC_DIR"], gateway["PROMETHEUS_MULTIPROC_DIR"]} \
        == {str(tmp_path / "metrics" / n) for n in ("web", "worker", "gateway")}
    assert web["METRICS_EXTRA_DIRS"].split(",") == [worker["PROMETHEUS_MULTIPROC_DIR"],
                                                    runstack.child_env("worker-quality")["PROMETHEUS_MULTIPROC_DIR"]]
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert "PROMETHEUS_MULTIPROC_DIR" not in runstack.child_env("beat")  # beat serves no requests and runs no tasks
