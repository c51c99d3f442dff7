"""What the QRNG service keeps in the database: health alarms and quality-report jobs. Never entropy."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from tenants.models import Tenant
from tenants.scoping import TenantScopedManager


class SourceAlarm(models.Model):
    """A health-test failure of an entropy source (operator data, not tenant-owned).

    The source stays stopped in every process until an operator resets it (``reset_at``); each process then
    reruns the SP 800-90B start-up test before serving again.
    """

    source = models.CharField(max_length=100, db_index=True)
    kind = models.CharField(max_length=20, blank=True)
    simulated = models.BooleanField(default=False)
    test = models.CharField(max_length=50, help_text="the failing test: rct, apt, startup/rct, startup/apt")
    sample_index = models.BigIntegerField(help_text="index of the failing sample in the source's stream")
    detail = models.CharField(max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)
    reset_at = models.DateTimeField(null=True, blank=True)
    reset_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.source}: {self.test} at sample {self.sample_index}"


class QualityReport(models.Model):
    """An on-demand statistical report on N bytes of a source, run by a Celery job.

    ``result`` holds p-values and statistics only: the drawn bytes are tested and dropped, never stored.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    n_bytes = models.PositiveIntegerField()
    source = models.CharField(max_length=100, blank=True, help_text="a pinned source, or empty for the pool")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    progress = models.FloatField(default=0.0, help_text="fraction done, 0..1")
    stage = models.CharField(max_length=100, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TenantScopedManager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "state"])]

    def __str__(self) -> str:
        return f"quality report {self.id} ({self.state})"

    @property
    def active(self) -> bool:
        return self.state in (self.State.QUEUED, self.State.RUNNING)
