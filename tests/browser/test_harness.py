"""The harness itself: the stack serves, the researcher signs in, screenshots and the axe-core check work."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_researcher_signs_in_and_sees_the_dashboard(researcher):
    researcher.get("/")
    assert "researcher" in researcher.text("header")
    shots = researcher.screenshot("harness-dashboard")
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in shots)


def test_axe_reports_a_known_violation(researcher):
    """The check finds what it must: an image without a text alternative is a critical violation."""
    researcher.get("/")
    researcher.driver.execute_script(
        "const i = document.createElement('img'); i.src = 'data:,'; document.body.appendChild(i);")
    assert any(v["id"] == "image-alt" for v in researcher.axe())
