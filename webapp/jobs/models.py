import uuid

from django.conf import settings
from django.db import models


class Job(models.Model):
    """One request to a serving, kept until its owner no longer needs it.

    The owner is a user, or for anonymous visitors their session. ``input``
    holds what the serving needs to run again if a worker dies mid-way.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    FINISHED = (Status.DONE, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    session_key = models.CharField(max_length=40, blank=True, db_index=True)
    serving = models.CharField(max_length=64)
    input = models.JSONField()
    input_summary = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    model_version = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-queued_at"]

    def __str__(self):
        return f"{self.serving} job {self.id} ({self.status})"

    def as_json(self) -> dict:
        def iso(t):
            return t.isoformat() if t else None

        return {
            "id": str(self.id),
            "serving": self.serving,
            "status": self.status,
            "input_summary": self.input_summary,
            "result": self.result,
            "error": self.error,
            "error_code": self.error_code,
            "model_version": self.model_version,
            "attempts": self.attempts,
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }
