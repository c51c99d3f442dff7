"""Suite-wide fixtures and rules.

Under CI (``CI`` set) a test that would be skipped for a missing component fails instead: CI must
exercise the real PostgreSQL, Redis and daemons, never pass by skipping them.
"""

from __future__ import annotations

import os

import pytest

# The shared fixtures (tenants, members, API clients, the live lab): one place for every app's tests.
pytest_plugins = ["tests.fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not item.get_closest_marker("allow_skip_in_ci"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI, which must run every component: {reason}"


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_skip_in_ci: a skip that is legitimate even under CI")


def uses_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
