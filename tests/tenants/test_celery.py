"""A real Celery worker process runs the periodic jobs through the configured broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from tenants import quota
from tenants.models import ApiToken, UsageRollup
from tenants.tasks import expire_api_tokens, rollup_usage
from tests.conftest import uses_postgres

ROOT = Path(__file__).resolve().parents[2]


def test_rollup_sums_the_ledger_per_hour_and_is_idempotent(two_tenants):
    quota.consume(two_tenants["a"], "qkd_key_bits", 256, "r1")
    quota.consume(two_tenants["a"], "qkd_key_bits", 512, "r2")
    quota.release(two_tenants["a"], "qkd_key_bits", 256, "r3")
    quota.consume(two_tenants["b"], "entropy_bytes", 10, "r4")
    assert rollup_usage() == 2
    assert rollup_usage() == 2
    row = UsageRollup.objects.for_tenant(two_tenants["a"]).get()
    assert (row.meter, row.quantity, row.records) == ("qkd_key_bits", 512, 3)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not (uses_postgres() and os.environ.get("REDIS_URL")), reason="needs PostgreSQL and Redis")
def test_a_worker_process_runs_tasks_from_the_redis_broker(two_tenants, tmp_path):
    token = ApiToken.objects.for_tenant(two_tenants["a"]).first()
    ApiToken.objects.for_tenant(two_tenants["a"]).filter(pk=token.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1))
    db = connection.settings_dict
    test_db_url = f"postgres://{db['USER']}@{db['HOST'].replace('/', '%2F')}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": test_db_url, "DJANGO_SETTINGS_MODULE": "portal.settings.base",
           "QXAAS_VAR_DIR": str(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        expire_api_tokens.delay()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ApiToken.objects.for_tenant(two_tenants["a"]).get(pk=token.pk).revoked_at is not None:
                break
            time.sleep(0.3)
        else:
            worker.terminate()
            pytest.fail("the worker did not run the task:\n" + worker.communicate(timeout=20)[0][-3000:])
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
