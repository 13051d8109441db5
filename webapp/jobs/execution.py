"""Running a job: claim it, call the serving, record the outcome, push it.

``execute_job(job_id)`` is what both transports call: a thread of the web
process in in-process mode, the Celery task in distributed mode. It is
idempotent: a job already finished is left alone (a redelivered message does
nothing), the outcome is recorded at most once even when two deliveries of
the same job run at the same time, and a job that has started
``JOBS_MAX_ATTEMPTS`` times without finishing (its worker died, or was
stopped by the hard time limit, each time) is failed with a readable error
instead of being tried forever.

``run_serving`` is the one call into the serving: through this process's
batcher, so concurrent jobs share batches, with the serving's soft time limit
as a bound on the wait (``MLSERVICES_TIME_LIMITS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import mlservices
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import owners
from .models import Job

log = logging.getLogger(__name__)

# A guard wraps each run of a serving: guard(serving, what) -> context manager.
# The worker installs its hard-time-limit watchdog here (webapp.worker).
Guard = Callable[[str, str], contextlib.AbstractContextManager]


def _no_guard(serving: str, what: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class TimeLimitExceeded(mlservices.ServingFailed):
    """A run waited longer than its serving's soft time limit."""

    code = "timeout"


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
        return {"code": exc.code, "message": str(exc)}
    log.error("unexpected error in a serving", exc_info=exc)
    return {"code": "internal_error", "message": f"internal error ({type(exc).__name__}); the site's log has the details"}


def run_serving(
    name: str, input: Any, runtime: mlservices.Runtime | None = None, guard: Guard = _no_guard, what: str = "a run"
) -> tuple[Any, str]:
    """Run ``input`` through serving ``name``'s batcher; return (result, model version).

    Loading (when the serving is not loaded yet) is not timed; from then on the
    run waits at most the serving's soft time limit for its batch, then fails
    with ``TimeLimitExceeded`` (a run still queued in the batcher is dropped).
    """
    runtime = runtime or mlservices.runtime.default()
    loaded = runtime.serving(name)
    soft, _ = time_limits(name)
    with guard(name, what):
        try:
            return runtime.batched_run(name, input, timeout=soft), loaded.version
        except TimeoutError:
            raise TimeLimitExceeded(
                f"{name}: no answer within {soft:g} s (the serving's soft time limit, "
                "MLSERVICES_TIME_LIMITS); the model is overloaded or stuck. Try again in a moment"
            ) from None


_server_loop: asyncio.AbstractEventLoop | None = None


def remember_server_loop() -> None:
    """Record the ASGI server's event loop (the consumer calls this on connect)."""
    global _server_loop
    _server_loop = asyncio.get_running_loop()


def publish(job: Job) -> None:
    """Push the job's current state to its owner's browsers."""
    layer = get_channel_layer()
    if layer is None:
        return
    group, message = owners.of_job(job).group, {"type": "job.update", "job": job.as_json()}
    try:
        loop = _server_loop
        if isinstance(layer, InMemoryChannelLayer) and loop is not None and loop.is_running():
            # The in-memory layer's queues belong to the server's loop; a send from
            # another loop would sit unseen until that loop next wakes (up to ~1 s).
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop).result(timeout=10)
        else:
            async_to_sync(layer.group_send)(group, message)
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
    if not updated:  # another delivery finished first (or the job is gone): keep its outcome
        with contextlib.suppress(Job.DoesNotExist):
            job.refresh_from_db()
        return False
    for name, value in fields.items():
        setattr(job, name, value)
    return True


def fail_job(job: Job, code: str, message: str) -> bool:
    """Fail ``job`` (unless it has finished) and push it; True if this call failed it."""
    done = _finish(job, status=Job.Status.FAILED, error_code=code, error=message)
    if done:
        publish(job)
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
    publish(job)
    try:
        result, version = run_serving(job.serving, job.input, runtime, guard, what=f"job {job.pk}")
    except Exception as exc:  # every failure ends the job visibly
        payload = error_payload(exc)
        done = _finish(job, status=Job.Status.FAILED, error=payload["message"], error_code=payload["code"])
    else:
        if isinstance(result, dict) and result.get("model"):
            version = str(result["model"])
        done = _finish(job, status=Job.Status.DONE, result=result, model_version=version)
    if done:
        publish(job)
    return job
