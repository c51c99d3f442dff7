"""Operations tests: /metrics against the real twin and PostgreSQL, the Prometheus rules with promtool, the
deployment files with their own checkers (systemd-analyze, nginx -t)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services import metrics, registry


@pytest.fixture
def own_twin(db, settings, twin_factory):
    """A madqci twin of this test alone (tests cut its links), registered as the portal's network."""
    twin = twin_factory("madqci", time_scale=50.0)
    twin.wait_for_key("sae-cait-1", "sae-rectorado-1", count=50)
    settings.QKD_AUTO_REGISTER_TWIN = False
    registry.forget_status_cache()
    registry.register_twin(twin.endpoints)
    metrics._federated = None  # no cached scrape of another test's twin
    yield twin
    metrics._federated = None


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value), ...]} of a Prometheus text exposition."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def scrape(client) -> str:
    metrics._federated = None
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()
