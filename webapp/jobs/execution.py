"""Running work: claim a job, stream it through its serving, record and publish.

``execute_job(job_id)`` and ``execute_prediction(...)`` are what both
transports call: a thread of the web process in in-process mode, the Celery
tasks in distributed mode. Both go through ``run_stream``, hence through the
serving's batcher, so concurrent work shares batches.

``execute_job`` is idempotent: a job already finished is left alone (a
redelivered message does nothing), the outcome is recorded at most once even
when two deliveries of the same job run at the same time, and a job that has
started ``JOBS_MAX_ATTEMPTS`` times without finishing (its worker died, or was
stopped by the hard time limit, each time) is failed with a readable error
instead of being tried forever. A delivery that starts over resets the job's
progress, and a stale delivery no longer writes progress, so the partials
stored and the final result never hold an item twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import mlservices
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from webapp import metrics

from . import events, owners, uploads
from .models import Job

log = logging.getLogger(__name__)

# Who claims jobs in this process, recorded on each job it starts (Job.worker):
# "web:<pid>" here; a Celery worker sets "<node name>:<pid>" at start
# (webapp.worker), and webapp.jobs.liveness puts the running jobs of a worker
# that stopped answering back on the queue.
WORKER = f"web:{os.getpid()}"

# A guard wraps each step of a run: guard(serving, what) -> context manager.
# The worker installs its hard-time-limit watchdog here (webapp.worker).
Guard = Callable[[str, str], contextlib.AbstractContextManager]


def _no_guard(serving: str, what: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class TimeLimitExceeded(mlservices.ServingFailed):
    """A run waited longer than its serving's soft time limit."""

    code = "timeout"


class _Superseded(Exception):
    """Another delivery of the job has taken over (or finished it): stop quietly."""


def time_limits(serving: str) -> tuple[float, float]:
    """(soft, hard) time limits of ``serving`` in seconds."""
    limits = settings.MLSERVICES_TIME_LIMITS.get(serving, {})
    return (
        float(limits.get("soft", settings.MLSERVICES_SOFT_TIME_LIMIT)),
        float(limits.get("hard", settings.MLSERVICES_HARD_TIME_LIMIT)),
    )


def error_payload(exc: BaseException) -> dict:
    """What people are shown for a failure: a code and a plain message, no traceback."""
    if isinstance(exc, mlservices.ServingError):
        payload = {"code": exc.code, "message": str(exc)}
        if getattr(exc, "retry_after", None):  # Overloaded: when to try again, in seconds
            payload["retry_after"] = exc.retry_after
        return payload
    log.error("unexpected error in a serving", exc_info=exc)
    return {"code": "internal_error", "message": f"internal error ({type(exc).__name__}); the site's log has the details"}


def run_stream(
    name: str, input: Any, runtime: mlservices.Runtime | None = None, guard: Guard = _no_guard,
    what: str = "a run", owner: str | None = None,
) -> Iterator[mlservices.Progress | mlservices.Final]:
    """The events of ``input`` through serving ``name``'s batcher.

    Loading (when the serving is not loaded yet) is not timed. From then on
    each step (preprocess and the first item; each later item) waits at most
    the serving's soft time limit, then fails with ``TimeLimitExceeded`` (items
    still queued in the batcher are dropped), and runs under ``guard`` (the
    worker's hard limit): a long stream that keeps making progress is not stuck.
    ``owner`` (the owner's group name) is who the batcher shares batches fairly between.
    """
    runtime = runtime or mlservices.runtime.default()
    runtime.serving(name)
    soft, _ = time_limits(name)
    stream = runtime.stream(name, input, timeout=soft, owner=owner)
    try:
        while True:
            with guard(name, what):
                try:
                    event = next(stream)
                except StopIteration:
                    return
                except TimeoutError:
                    raise TimeLimitExceeded(
                        f"{name}: no answer within {soft:g} s (the serving's soft time limit, "
                        "MLSERVICES_TIME_LIMITS); the model is overloaded or stuck. Try again in a moment"
                    ) from None
            yield event
    finally:
        stream.close()


def _claim(job_id) -> Job | None:
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status in Job.FINISHED:
            return None
        job.attempts += 1
        job.status = Job.Status.RUNNING
        job.started_at = timezone.now()
        job.worker = WORKER
        job.progress, job.items, job.partials = 0.0, 0, []  # a delivery that starts over starts from nothing
        job.save(update_fields=["attempts", "status", "started_at", "worker", "progress", "items", "partials"])
        return job


def _record_progress(job: Job, event: mlservices.Progress) -> None:
    job.partials.append(event.partial)
    job.progress, job.items = round(event.fraction, 4), event.total
    mine = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts)
    if not mine.update(progress=job.progress, items=job.items, partials=job.partials):
        raise _Superseded
    events.job_progressed(job, event.done, event.total, event.partial)


def _finish(job: Job, files=(), **fields) -> bool:
    """Record the outcome unless someone else already did (at most once)."""
    fields["finished_at"] = timezone.now()
    with transaction.atomic():
        current = Job.objects.select_for_update().filter(pk=job.pk).first()
        if current is None or current.status in Job.FINISHED:  # another delivery won: keep its outcome
            for row in files:
                row.file.delete(save=False)
            if current is not None:
                job.refresh_from_db()
            return False
        Job.objects.filter(pk=job.pk).update(**fields)
        for row in files:
            row.save()
    for name, value in fields.items():
        setattr(job, name, value)
    metrics.job_finished(job)
    return True


def fail_job(job: Job, code: str, message: str) -> bool:
    """Fail ``job`` (unless it has finished) and push it; True if this call failed it."""
    done = _finish(job, status=Job.Status.FAILED, error_code=code, error=message)
    if done:
        events.job_changed(job)
    return done


def execute_job(job_id, runtime: mlservices.Runtime | None = None, guard: Guard = _no_guard) -> Job | None:
    job = _claim(job_id)
    if job is None:
        return None
    if job.attempts > settings.JOBS_MAX_ATTEMPTS:
        fail_job(
            job,
            "gave_up",
            f"gave up after {job.attempts - 1} attempts: each time, the worker running this job "
            "stopped before it finished (it crashed, or the job ran past its hard time limit)",
        )
        return job
    events.job_changed(job)
    try:
        input = uploads.resolve(job.serving, job.input)
        owner = owners.of_job(job).group
        for event in run_stream(job.serving, input, runtime, guard, what=f"job {job.pk}", owner=owner):
            if isinstance(event, mlservices.Progress):
                _record_progress(job, event)
            else:
                files, result = uploads.write_artifacts(job, event.result)
                done = _finish(job, files, status=Job.Status.DONE, result=result, model_version=event.version)
    except _Superseded:
        log.info("job %s: another delivery took over; this one stops", job.pk)
        return job
    except Exception as exc:  # every failure ends the job visibly
        payload = error_payload(exc)
        done = _finish(job, status=Job.Status.FAILED, error=payload["message"], error_code=payload["code"])
    if done:
        events.job_changed(job)
    return job


def execute_prediction(
    serving: str, input: Any, reply_channel: str, request_id=None, owner: str | None = None,
    runtime: mlservices.Runtime | None = None, guard: Guard = _no_guard,
) -> dict:
    """A live prediction: nothing is saved; the answer goes to ``reply_channel``."""
    try:
        resolved = uploads.resolve(serving, input, consume_live=True)
        for event in run_stream(serving, resolved, runtime, guard, what="a live prediction", owner=owner):
            if isinstance(event, mlservices.Final):
                result = uploads.described(event.result)
                events.prediction_ready(reply_channel, request_id, result, event.version)
                metrics.prediction_finished(serving, event.version, None)
                return {"result": result, "model_version": event.version}
    except Exception as exc:
        error = error_payload(exc)
        events.prediction_failed(reply_channel, request_id, error)
        metrics.prediction_finished(serving, "", error["code"])
        return {"error": error}
    raise AssertionError("a stream always ends with its Final event")
