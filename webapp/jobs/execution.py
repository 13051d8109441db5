"""Running a job: claim it, call the serving, record the outcome, push it.

``execute_job(job_id)`` is what both transports call: a thread of the web
process in in-process mode, the Celery task in distributed mode. It is
idempotent: a job already finished is left alone (a redelivered message does
nothing), and a job that has started ``JOBS_MAX_ATTEMPTS`` times without
finishing (its worker died each time) is failed with a readable error instead
of being tried forever.
"""

from __future__ import annotations

import logging

import mlservices
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import owners
from .models import Job

log = logging.getLogger(__name__)


def error_payload(exc: BaseException) -> dict:
    """What people are shown for a failure: a code and a plain message, no traceback."""
    if isinstance(exc, mlservices.ServingError):
        return {"code": exc.code, "message": str(exc)}
    log.error("unexpected error in a serving", exc_info=exc)
    return {"code": "internal_error", "message": f"internal error ({type(exc).__name__}); the site's log has the details"}


def publish(job: Job) -> None:
    """Push the job's current state to its owner's browsers."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(owners.of_job(job).group, {"type": "job.update", "job": job.as_json()})
    except Exception:  # a push that fails is not a job that fails: a reload shows the state
        log.warning("could not push the update of job %s", job.id, exc_info=True)


def _claim(job_id) -> Job | None:
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status in Job.FINISHED:
            return None
        job.attempts += 1
        job.status = Job.Status.RUNNING
        job.started_at = timezone.now()
        job.save(update_fields=["attempts", "status", "started_at"])
        return job


def _finish(job: Job, **fields) -> bool:
    """Record the outcome unless someone else already did (at most once)."""
    fields["finished_at"] = timezone.now()
    updated = Job.objects.filter(pk=job.pk).exclude(status__in=Job.FINISHED).update(**fields)
    for name, value in fields.items():
        setattr(job, name, value)
    return bool(updated)


def execute_job(job_id, runtime: mlservices.Runtime | None = None) -> Job | None:
    job = _claim(job_id)
    if job is None:
        return None
    if job.attempts > settings.JOBS_MAX_ATTEMPTS:
        _finish(
            job,
            status=Job.Status.FAILED,
            error_code="gave_up",
            error=f"gave up after {job.attempts - 1} attempts: the worker stopped while running this job each time",
        )
        publish(job)
        return job
    publish(job)
    runtime = runtime or mlservices.runtime.default()
    try:
        result = runtime.batched_run(job.serving, job.input)
    except Exception as exc:  # every failure ends the job visibly
        payload = error_payload(exc)
        done = _finish(job, status=Job.Status.FAILED, error=payload["message"], error_code=payload["code"])
    else:
        version = result.get("model", "") if isinstance(result, dict) else ""
        done = _finish(job, status=Job.Status.DONE, result=result, model_version=version)
    if done:
        publish(job)
    return job
