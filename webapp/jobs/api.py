"""The JSON API (docs/api.md): upload files, submit jobs, read them, fetch their files.

Views validate and enqueue; they never run a model. Every error is JSON
``{"error": {"code": ..., "message": ...}}`` with a fitting status code.
CSRF protection stays on: browsers send the ``X-CSRFToken`` header.
"""

from __future__ import annotations

import mlservices
from django.conf import settings
from django.http import FileResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import dispatch, json_body, owners, uploads, validation
from .models import Job

LIST_LIMIT = 50
MULTIPART = "multipart/form-data"


def error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def serving_error(exc: mlservices.ServingError) -> JsonResponse:
    status = {"unknown_serving": 404, "too_large": 413, "quota_exceeded": 413}.get(exc.code, 400)
    return error(status, exc.code, str(exc))


def _uploaded_file(request):
    files = request.FILES.getlist("file")
    if len(files) != 1 or set(request.FILES) - {"file"}:
        raise mlservices.InvalidInput("send exactly one file, in the form field 'file'")
    return files[0]


@require_http_methods(["GET", "POST"])
def jobs(request):
    if request.method == "GET":
        owner = owners.of_request(request)
        return JsonResponse({"jobs": [j.as_json() for j in owner.jobs()[:LIST_LIMIT]]})
    if request.content_type == MULTIPART:
        return _submit_multipart(request)
    if request.content_type != "application/json":
        return error(415, "unsupported_media_type",
                     "send the job as JSON (Content-Type: application/json) or as multipart/form-data with a file")
    try:
        body = json_body.loads(request.body)
    except json_body.InvalidJSON as exc:
        return error(400, exc.code, exc.message)
    if not isinstance(body, dict):
        return error(400, "invalid_json", 'send an object: {"serving": "sentiment", "input": {"text": "..."}}')
    unknown = sorted(set(body) - {"serving", "input"})
    if unknown:
        return error(400, "invalid_input", f"unknown field(s) {', '.join(unknown)}; send 'serving' and 'input'")
    owner = owners.of_request(request, create_session=True)
    if refused := _too_many_jobs(owner):
        return refused
    try:
        input, upload = validation.check(owner, body.get("serving"), body.get("input"))
    except mlservices.ServingError as exc:
        return serving_error(exc)
    return _create(owner, body["serving"], input, upload)


def _submit_multipart(request):
    """``serving``, the file in ``file`` (for a file serving), and the other input fields as
    form fields (``text`` for a text serving, options): one upload, one job."""
    owner = owners.of_request(request, create_session=True)
    if refused := _too_many_jobs(owner):
        return refused
    serving = request.POST.get("serving", "")
    fields = {k: v for k, v in request.POST.items() if k not in ("serving", "csrfmiddlewaretoken")}
    try:
        if validation.definition(serving).spec.is_file:
            upload = uploads.save_upload(owner, serving, _uploaded_file(request))
            fields["file"] = str(upload.pk)
        elif request.FILES:
            raise mlservices.InvalidInput(f"{serving} takes no file; send its input as form fields or JSON")
        input, upload = validation.check(owner, serving, fields)
    except mlservices.ServingError as exc:
        return serving_error(exc)
    return _create(owner, serving, input, upload)


def _too_many_jobs(owner) -> JsonResponse | None:
    """429 when the owner already has ``JOBS_MAX_ACTIVE_PER_OWNER`` jobs queued or running."""
    limit = settings.JOBS_MAX_ACTIVE_PER_OWNER
    active = owner.jobs().filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).count()
    if active < limit:
        return None
    response = error(
        429, "too_many_jobs",
        f"you have {active} jobs queued or running; the limit is {limit} (JOBS_MAX_ACTIVE_PER_OWNER). "
        "Wait for some to finish, then send this one again",
    )
    response["Retry-After"] = str(settings.JOBS_RETRY_AFTER_S)
    return response


def _create(owner, serving: str, input, upload) -> JsonResponse:
    job = owner.stamp(Job(serving=serving, input=input, upload=upload, input_summary=validation.summary(input, upload)))
    job.save()
    dispatch.enqueue_job(job)
    return JsonResponse(job.as_json(), status=201, headers={"Location": f"/api/jobs/{job.pk}"})


@require_POST
def upload(request):
    """``serving`` and ``file`` (multipart): store the file for later jobs and predictions.
    ``live=true``: for one live prediction; deleted once that is answered (e.g. the audio
    recorded so far, sent every few seconds while recording)."""
    if request.content_type != MULTIPART:
        return error(415, "unsupported_media_type", "send the file as multipart/form-data (fields 'serving' and 'file')")
    owner = owners.of_request(request, create_session=True)
    try:
        live = request.POST.get("live", "false").lower() in ("1", "true", "yes", "on")
        stored = uploads.save_upload(owner, request.POST.get("serving", ""), _uploaded_file(request), live=live)
    except mlservices.ServingError as exc:
        return serving_error(exc)
    return JsonResponse(stored.as_json(), status=201)


@require_GET
def job_detail(request, job_id):
    job = owners.of_request(request).jobs().filter(pk=job_id).first()
    if job is None:  # someone else's job is as absent as a missing one
        return error(404, "not_found", f"no job {job_id} among yours")
    return JsonResponse(job.as_json())


@require_GET
def job_file(request, job_id, name):
    """A file of one of your jobs: ``input`` (what you uploaded) or an artifact the serving made."""
    job = owners.of_request(request).jobs().filter(pk=job_id).first()
    if job is not None and name == "input" and job.upload is not None:
        stored, content_type = job.upload.file, job.upload.content_type
    else:
        row = job.files.filter(name=name).first() if job is not None and job.status == Job.Status.DONE else None
        if row is None:
            return error(404, "not_found", f"no file {name!r} of job {job_id} among yours")
        stored, content_type = row.file, row.content_type
    response = FileResponse(stored.open("rb"), content_type=content_type)
    response["Content-Disposition"] = f'inline; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
def servings(request):
    return JsonResponse(
        {
            "servings": [
                {"name": n, "description": validation.definition(n).description, "spec": validation.spec_json(n)}
                for n in mlservices.names()
            ]
        }
    )
