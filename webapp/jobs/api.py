"""The JSON API (docs/api.md): submit a job, read it, list yours.

Views validate and enqueue; they never run a model. Every error is JSON
``{"error": {"code": ..., "message": ...}}`` with a fitting status code.
CSRF protection stays on: browsers send the ``X-CSRFToken`` header.
"""

from __future__ import annotations

import json

import mlservices
from django.http import JsonResponse
from django.views.decorators.http import require_GET, require_http_methods

from . import dispatch, owners, validation
from .models import Job

LIST_LIMIT = 50


def error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@require_http_methods(["GET", "POST"])
def jobs(request):
    if request.method == "GET":
        owner = owners.of_request(request)
        return JsonResponse({"jobs": [j.as_json() for j in owner.jobs()[:LIST_LIMIT]]})
    if request.content_type != "application/json":
        return error(415, "unsupported_media_type", "send the job as JSON (Content-Type: application/json)")
    try:
        body = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, "invalid_json", f"the body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "invalid_json", 'send an object: {"serving": "sentiment", "input": {"text": "..."}}')
    unknown = sorted(set(body) - {"serving", "input"})
    if unknown:
        return error(400, "invalid_input", f"unknown field(s) {', '.join(unknown)}; send 'serving' and 'input'")
    serving, input = body.get("serving"), body.get("input")
    try:
        validation.check(serving, input)
    except mlservices.ServingNotFound as exc:
        return error(404, exc.code, str(exc))
    except mlservices.ServingError as exc:
        return error(400, exc.code, str(exc))
    owner = owners.of_request(request, create_session=True)
    job = owner.stamp(Job(serving=serving, input=input, input_summary=validation.summary(input)))
    job.save()
    dispatch.enqueue_job(job)
    return JsonResponse(job.as_json(), status=201, headers={"Location": f"/api/jobs/{job.pk}"})


@require_GET
def job_detail(request, job_id):
    job = owners.of_request(request).jobs().filter(pk=job_id).first()
    if job is None:  # someone else's job is as absent as a missing one
        return error(404, "not_found", f"no job {job_id} among yours")
    return JsonResponse(job.as_json())


@require_GET
def servings(request):
    return JsonResponse(
        {"servings": [{"name": n, "description": mlservices.build(n).description} for n in mlservices.names()]}
    )
