"""Every metric a Grafana panel or a Prometheus rule asks for is one the running system exports: the names are
collected by scraping the live web listener (with a Celery worker), the key gateway and, through the portal,
the twin."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import requests
import yaml

from services import pki, registry
from tenants.tasks import expire_api_tokens

from .stack import web_and_gateway

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULES = yaml.safe_load((ROOT / "deploy" / "prometheus" / "qxaas.rules.yml").read_text())
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
PROMETHEUS_OWN = {"up"}  # made by Prometheus for every target, not exported


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group(0) in KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def test_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, group) (rate(x_bucket{a=~"b"}[5m]))) / y > 1e9') \
        == {"x_bucket", "y"}
    assert metric_names("qxaas:a:rate5m > (14.4 * 0.001) and z or vector(0)") == {"qxaas:a:rate5m", "z"}


def exported_names(text: str) -> set[str]:
    """Sample names, plus every name a family declares (a family with no sample yet still counts)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "counter":
                names |= {name.removesuffix("_total") + "_total"}
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_panel_and_rule_names_exported_metrics(transactional_db, backend_twin, make_lab, tmp_path):
    registry.register_twin(backend_twin.endpoints)
    lab = make_lab("dashlab")
    auth = {"Authorization": f"Bearer {lab.client.token_secret}"}
    with web_and_gateway(tmp_path, celery_worker=True, workers=1, gateway_processes=1,
                         QKD_TWIN_STATE_DIR=str(backend_twin.state_dir)) as stack:
        verify = str(pki.pki_dir() / "ca.crt")
        r = requests.post(f"{stack.base}/api/v1/keys/dashlab-rect/enc_keys", json={"number": 1, "size": 256},
                          headers={**auth, "X-SAE-ID": "dashlab-cait"}, verify=verify, timeout=30)
        assert r.status_code == 200, r.text
        assert requests.get(f"{stack.web}/api/qkd/keys?src=CAIT&dst=Rectorado", headers=auth,
                            timeout=30).status_code == 200
        requests.get(f"{stack.web}/api/entropy?bytes=16&format=hex", headers=auth, timeout=30)
        expire_api_tokens.delay()
        deadline = time.monotonic() + 60
        while True:  # the worker's task metrics reach the web listener's /metrics through METRICS_EXTRA_DIRS
            web = requests.get(f"{stack.web}/metrics", timeout=30).text
            if "qxaas_celery_tasks_total{" in web or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        gateway = requests.get(f"{stack.base}/gateway/metrics", verify=verify, timeout=30).text
    assert 'qxaas_celery_tasks_total{outcome="success",task="tenants.tasks.expire_api_tokens"}' in web, web[-3000:]
    exported = exported_names(web) | exported_names(gateway)
    recorded = {r["record"] for group in RULES["groups"] for r in group["rules"] if "record" in r}
    known = exported | recorded | PROMETHEUS_OWN

    asked: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["panels"], path.name
        for panel in board["panels"]:
            for target in panel["targets"]:
                for name in metric_names(target["expr"]):
                    asked.setdefault(name, set()).add(f"{path.name}: {panel['title']}")
        for variable in board["templating"]["list"]:
            asked.setdefault(re.search(r"label_values\((\w+)", variable["definition"]).group(1), set()).add(path.name)
    for group in RULES["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                asked.setdefault(name, set()).add(f"rule {rule.get('alert') or rule.get('record')}")
    missing = {name: where for name, where in asked.items() if name not in known}
    assert not missing, missing
    # The four dashboards and what each is about.
    assert {p.stem for p in DASHBOARDS} == {"qxaas-network", "qxaas-tenants", "qxaas-services", "qxaas-performance"}
    assert {"qkd_link_qber", "qkd_link_block_excess_noise_snu", "qxaas_tenant_live_orders",
            "qxaas_gateway_request_duration_seconds_bucket", "qxaas_celery_queue_length"} <= set(asked)
