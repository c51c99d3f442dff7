"""``examples/`` run as a user runs them: each curl script against the live stack of ``make run`` (the browser
tests' stack: PostgreSQL, Redis, the twin, the Celery worker, the key gateway), with the demo token it wrote."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPT_BOUND_S = 240
UNAVAILABLE = 3  # the script's code for "cannot run here" (IPsec without the lab), with the reason printed


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]-*.sh")))
def test_example_runs_against_the_live_stack(script, portal_stack):
    env = {**os.environ, "BASE": portal_stack.base, "QXAAS_VAR_DIR": str(portal_stack.var), "BOUND_S": "90"}
    env.pop("TOKEN", None)  # the scripts read the demo token make run wrote, as a user's shell would
    result = subprocess.run(["bash", str(EXAMPLES / script)], env=env, capture_output=True, text=True,
                            timeout=SCRIPT_BOUND_S)
    output = result.stdout[-4000:] + result.stderr[-4000:]
    if result.returncode == UNAVAILABLE and not os.environ.get("CI"):
        pytest.skip(f"{script} cannot run here: {output.strip().splitlines()[-1]}")
    assert result.returncode == 0, output
    assert "OK " in result.stdout.splitlines()[-1], output
