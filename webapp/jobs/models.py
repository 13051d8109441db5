"""What the site keeps: uploads, jobs, and the files jobs produce.

Owners are a signed-in user, or for anonymous visitors their session
(``webapp.jobs.owners``). Files live in Django's default storage (``STORAGES``;
the file system under ``MEDIA_ROOT`` unless configured otherwise) under random
names, never the client's; they are only ever served through owner-checked
views (``GET /api/jobs/<id>/files/<name>``), never from a public media URL.
"""

import uuid

from django.conf import settings
from django.db import models


def _random_key(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}"


def upload_key(instance, filename) -> str:
    return _random_key("uploads")


def artifact_key(instance, filename) -> str:
    return _random_key("artifacts")


class Owned(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    session_key = models.CharField(max_length=40, blank=True, db_index=True)

    class Meta:
        abstract = True


class Upload(Owned):
    """A file a client sent, sniffed and size-checked at the door."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    serving = models.CharField(max_length=64)
    file = models.FileField(upload_to=upload_key, max_length=200)
    name = models.CharField(max_length=200, blank=True)  # the client's name, shown only
    format = models.CharField(max_length=16)  # sniffed from the bytes (mlservices.formats)
    content_type = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()
    live = models.BooleanField(default=False)  # for one live prediction only: deleted once it is answered
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def as_json(self) -> dict:
        return {
            "id": str(self.id),
            "live": self.live,
            "serving": self.serving,
            "name": self.name,
            "size": self.size,
            "format": self.format,
            "content_type": self.content_type,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


class Job(Owned):
    """One request to a serving, kept until its owner no longer needs it.

    ``input`` holds what the serving needs to run again if a worker dies
    mid-way: JSON, with a file referenced by its upload's id, never its bytes.
    ``progress`` and ``partials`` record a streamed run as it goes, so a page
    that reconnects mid-job sees what it missed.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    FINISHED = (Status.DONE, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    serving = models.CharField(max_length=64)
    input = models.JSONField()
    input_summary = models.CharField(max_length=200)
    upload = models.ForeignKey(Upload, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0)
    items = models.PositiveIntegerField(default=0)  # how many items a fanned-out input became (0: not known yet)
    partials = models.JSONField(default=list, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    model_version = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)  # who runs it: "<celery node>:<pid>" or "web:<pid>"
    queued_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-queued_at"]

    def __str__(self):
        return f"{self.serving} job {self.id} ({self.status})"

    def file_url(self, name: str) -> str:
        return f"/api/jobs/{self.id}/files/{name}"

    def as_json(self) -> dict:
        def iso(t):
            return t.isoformat() if t else None

        upload = self.upload
        return {
            "id": str(self.id),
            "serving": self.serving,
            "status": self.status,
            "input_summary": self.input_summary,
            "input_file": None if upload is None else {
                "name": upload.name or f"input.{upload.format}",
                "url": self.file_url("input"),
                "content_type": upload.content_type,
                "size": upload.size,
            },
            "progress": self.progress,
            "items": self.items,
            "partials": self.partials,
            "result": self.result,
            "files": [f.as_json() for f in self.files.all()] if self.status == self.Status.DONE else [],
            "error": self.error,
            "error_code": self.error_code,
            "model_version": self.model_version,
            "attempts": self.attempts,
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


class JobFile(models.Model):
    """A file a serving returned (an ``mlservices.Artifact``), stored beside its job."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=100)
    file = models.FileField(upload_to=artifact_key, max_length=200)
    content_type = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["job", "name"], name="one_file_per_name_per_job")]

    def as_json(self) -> dict:
        return {"name": self.name, "url": self.job.file_url(self.name), "content_type": self.content_type, "size": self.size}
