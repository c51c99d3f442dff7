"""The Prometheus rules: promtool checks them and runs their unit tests (synthetic series), and the link-down
alert fires on series scraped from the portal's /metrics after a twin link is cut (promtool evaluates it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from django.test import Client

from .conftest import parse, scrape

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "qxaas.rules.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def run(*args: str, cwd: Path = PROM) -> str:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_and_config_pass_promtool_check():
    assert "SUCCESS" in run("check", "rules", str(RULES))
    assert "SUCCESS" in run("check", "config", str(PROM / "prometheus.yml"))


def test_alert_unit_tests_pass():
    assert "SUCCESS" in run("test", "rules", str(PROM / "tests" / "qxaas_test.yml"))


def test_every_alert_has_a_runbook_section_and_a_unit_test():
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"] if "alert" in r]
    assert len(alerts) >= 10
    docs = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", docs, flags=re.M)}
    tests = (PROM / "tests" / "qxaas_test.yml").read_text()
    for alert in alerts:
        runbook = alert["annotations"]["runbook_url"]
        assert runbook.startswith("docs/operations.md#"), alert["alert"]
        assert runbook.split("#", 1)[1] in anchors, f"no runbook heading for {alert['alert']}"
        assert f"alertname: {alert['alert']}" in tests, f"no unit test for {alert['alert']}"


def _series_file(samples: dict, names: tuple[str, ...], repeat: int) -> list[dict]:
    series = []
    for name in names:
        for labels, value in samples.get(name, []):
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            series.append({"series": f"{name}{{{text}}}", "values": f"{value:g}+0x{repeat}"})
    return series


def test_cutting_a_twin_link_makes_the_link_down_alert_fire_on_scraped_series(own_twin, tmp_path):
    before = parse(scrape(Client()))
    assert {lab["link"]: v for lab, v in before["qkd_link_up"]}["ccs-rectorado"] == 1.0
    own_twin.admin("ccs-rectorado", "cut")
    deadline = time.monotonic() + 20
    while True:  # the cut reaches every node's view within a moment
        after = parse(scrape(Client()))
        down = {lab["link"]: (lab, v) for lab, v in after["qkd_link_up"]}
        if down["ccs-rectorado"][1] == 0.0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    cut_labels, value = down["ccs-rectorado"]
    assert value == 0.0
    assert all(v == 1.0 for link, (_, v) in down.items() if link != "ccs-rectorado")
    assert one_rate(after, "ccs-rectorado") == 0.0

    # promtool evaluates the rule file's own expression on the scraped values, held for 3 minutes.
    test_file = tmp_path / "scraped_test.yml"
    expected = {"severity": "page", **cut_labels}
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(RULES)],
        "evaluation_interval": "30s",
        "tests": [
            {"interval": "30s",
             "input_series": _series_file(before, ("qkd_link_up",), 6),
             "alert_rule_test": [{"eval_time": "3m", "alertname": "QkdLinkDown", "exp_alerts": []}]},
            {"interval": "30s",
             "input_series": _series_file(after, ("qkd_link_up",), 6),
             "alert_rule_test": [
                 {"eval_time": "30s", "alertname": "QkdLinkDown", "exp_alerts": []},  # pending: "for: 1m"
                 {"eval_time": "3m", "alertname": "QkdLinkDown", "exp_alerts": [{
                     "exp_labels": expected,
                     "exp_annotations": {
                         "summary": f"QKD link ccs-rectorado is down (reported by {cut_labels['node']})",
                         "runbook_url": "docs/operations.md#qkdlinkdown"}}]}]},
        ],
    }))
    assert "SUCCESS" in run("test", "rules", str(test_file), cwd=tmp_path)


def one_rate(samples: dict, link: str) -> float:
    return next(v for lab, v in samples["qkd_link_secret_key_rate_bps"] if lab["link"] == link)


@pytest.mark.skipif(not os.environ.get("CI") and shutil.which("promtool") is None, reason="no promtool")
def test_promtool_is_there_under_ci():
    assert promtool()
