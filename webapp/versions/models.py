"""Model versions of each serving, and the audit log of what admins did with them.

A ``ModelVersion`` is the database record of a version in the model repository
(``mlservices.model_repository``: its files, their sha256, where it came
from). Its ``status`` says whether it serves: ``staged`` (added, not
validated, or refused by its last validation), ``validated`` (passed; may be
activated), ``active`` (serves the serving's traffic), ``canary`` (serves
``canary_percent`` % of it beside the active one), ``retired`` (kept on disk,
never served). At most one version of a serving is active and at most one is
a canary (database constraints). ``ModelAction`` rows record every action:
who (the user, and their name so the row outlives the account), what, when.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        STAGED = "staged"
        VALIDATED = "validated"
        ACTIVE = "active"
        CANARY = "canary"
        RETIRED = "retired"

    serving = models.CharField(max_length=64, db_index=True)
    version = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.STAGED, db_index=True)
    source = models.JSONField(default=dict, blank=True)  # {"kind": "upload"|"hub"|"path", ...}
    sha256 = models.JSONField(default=str, blank=True)  # one file: its sha256; a folder: {file: sha256}
    size = models.PositiveBigIntegerField(default=0)
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    canary_percent = models.PositiveSmallIntegerField(default=0)
    # The last validation run: smoke outputs, load_time_s, latency_ms (p50), quality, error; pending while it runs.
    validation = models.JSONField(default=dict, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["serving", "-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["serving", "version"], name="one_version_name_per_serving"),
            models.UniqueConstraint(
                fields=["serving"], condition=models.Q(status="active"), name="one_active_version_per_serving"
            ),
            models.UniqueConstraint(
                fields=["serving"], condition=models.Q(status="canary"), name="one_canary_version_per_serving"
            ),
        ]

    def __str__(self):
        return f"{self.serving} {self.version} ({self.status})"

    def sha256_short(self) -> str:
        """12 hex of a one-file version's sha256, or how many files a folder's manifest pins."""
        if isinstance(self.sha256, dict):
            return f"{len(self.sha256)} files"
        return str(self.sha256)[:12]

    def figures(self) -> str:
        """The last validation run in a line: load time, median latency, quality; or why it was refused."""
        run = self.validation or {}
        if run.get("pending"):
            return "validating…"
        if run.get("error"):
            return f"refused: {run['error']}"
        parts = []
        if "load_time_s" in run:
            parts.append(f"load {run['load_time_s']:g} s")
        if "latency_ms" in run:
            parts.append(f"latency {run['latency_ms']:g} ms p50")
        parts += [f"{k} {v:g}" for k, v in (run.get("quality") or {}).items()]
        return ", ".join(parts)

    def as_json(self) -> dict:
        """What ``manage.py models list --json`` prints for this version."""
        return {
            "version": self.version,
            "status": self.status,
            "sha256": self.sha256,
            "source": self.source,
            "canary_percent": self.canary_percent,
        }


class ModelAction(models.Model):
    """One thing someone did to a serving's versions (read-only in the admin)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=20, db_index=True)
    serving = models.CharField(max_length=64, db_index=True)
    version = models.CharField(max_length=64, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or '?'} {self.action} {self.serving} {self.version}"
