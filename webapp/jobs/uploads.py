"""Files in and out of storage: uploads from clients, artifacts from servings.

Only references cross Celery and the channel layer: a job's input names its
upload by id, and ``resolve`` reads the bytes back from storage in the process
that runs the serving (web or worker; they share ``STORAGES``). Artifacts a
serving returns are written as the job's files by ``store_artifacts``.
"""

from __future__ import annotations

import mlservices
from django.conf import settings
from django.core.files.base import ContentFile
from django.db.models import Sum
from mlservices.artifacts import Artifact, collect, replace
from mlservices.formats import CONTENT_TYPES, sniff
from mlservices.spec import FILE_FIELD

from . import validation
from .models import Job, JobFile, Upload


class TooLarge(mlservices.InvalidInput):
    code = "too_large"


class QuotaExceeded(mlservices.InvalidInput):
    code = "quota_exceeded"


def stored_bytes(owner) -> int:
    uploads = owner.uploads().aggregate(n=Sum("size"))["n"] or 0
    files = JobFile.objects.filter(job__in=owner.owned(Job.objects.all()).values("pk")).aggregate(n=Sum("size"))["n"] or 0
    return uploads + files


def shown_name(name: str | None) -> str:
    """The client's file name as it may be shown: printable, valid Unicode, at most 200 characters."""
    name = (name or "").encode("utf-8", "replace").decode("utf-8")
    return "".join(c for c in name if c.isprintable())[-200:]


def save_upload(owner, serving: str, file, live: bool = False) -> Upload:
    """Store an uploaded ``file`` (a Django ``UploadedFile``) for ``serving``, checked first.
    A ``live`` upload serves one live prediction and is deleted once that is answered."""
    spec = validation.definition(serving).spec
    if not spec.is_file:
        raise mlservices.InvalidInput(f"{serving} takes {spec.kind}, not a file; send it as JSON")
    max_bytes = validation.limits(serving)["max_bytes"]
    if file.size > max_bytes:
        raise TooLarge(f"{serving}: the file is {file.size:,} bytes; the limit is {max_bytes:,}. Send a smaller file")
    if file.size == 0:
        raise mlservices.InvalidInput(f"{serving}: the file is empty; send a {'/'.join(spec.formats)} file")
    file.seek(0)
    format = spec.check_format(serving, sniff(file.read(64)))
    used, quota = stored_bytes(owner), settings.OWNER_STORAGE_MAX_BYTES
    if used + file.size > quota:
        raise QuotaExceeded(
            f"your files take {used:,} bytes and this one {file.size:,}; the limit is {quota:,} "
            "(OWNER_STORAGE_MAX_BYTES). Delete old jobs or wait for them to expire"
        )
    file.seek(0)
    upload = owner.stamp(
        Upload(serving=serving, name=shown_name(file.name), format=format,
               content_type=CONTENT_TYPES[format], size=file.size, live=live)
    )
    upload.file.save("upload", file, save=False)
    upload.save()
    return upload


def resolve(serving: str, input, *, consume_live: bool = False):
    """The input as the serving takes it: an upload reference replaced by the file's bytes.
    With ``consume_live`` (a live prediction), a live upload is deleted once read."""
    if not validation.definition(serving).spec.is_file:
        return input
    upload = Upload.objects.filter(pk=input[FILE_FIELD]).first()
    if upload is None:
        raise mlservices.InvalidInput(f"{serving}: the uploaded file is gone (deleted or expired); upload it again")
    with upload.file.open("rb") as f:
        data = f.read()
    if consume_live and upload.live:
        upload.file.delete(save=False)
        upload.delete()
    return {**input, FILE_FIELD: data}


def write_artifacts(job: Job, result) -> tuple[list[JobFile], object]:
    """Write the result's artifacts to storage as (unsaved) files of ``job``; return them
    and the result with a reference in place of each."""
    rows = []
    for artifact in collect(result):
        row = JobFile(job=job, name=artifact.name, content_type=artifact.content_type, size=len(artifact.data))
        row.file.save("artifact", ContentFile(artifact.data), save=False)
        rows.append(row)

    def reference(artifact: Artifact) -> dict:
        return {"name": artifact.name, "url": job.file_url(artifact.name),
                "content_type": artifact.content_type, "size": len(artifact.data)}

    return rows, replace(result, reference)


def described(result):
    """A live prediction's result (nothing is stored): each artifact described, without its bytes."""
    return replace(result, lambda a: {"name": a.name, "content_type": a.content_type, "size": len(a.data), "url": None})
