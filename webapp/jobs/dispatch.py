"""The transport: where servings run, chosen by ``MLSERVICES_MODE``.

- ``inprocess``: jobs run on a small thread pool of this process and live
  predictions are awaited on the process's own runtime (batched all the same).
- ``celery``: jobs and live predictions become Celery tasks on the serving's
  queue; the worker pushes results back through the channel layer.

Everything else (validation, persistence, pushing) is the same in both modes.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import mlservices
from django.conf import settings
from django.db import transaction

from .execution import execute_job, fail_job
from .models import Job

log = logging.getLogger(__name__)
_pool: ThreadPoolExecutor | None = None


def _inprocess_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="jobs")
    return _pool


def distributed() -> bool:
    return settings.MLSERVICES_MODE == "celery"


def enqueue_job(job: Job) -> None:
    """Start ``job`` once the transaction that created it commits."""
    if distributed():
        transaction.on_commit(lambda: _send(job))
    else:
        transaction.on_commit(lambda: _inprocess_pool().submit(_run_and_close, job.pk))


def _send(job: Job) -> None:
    """Put ``job`` on its serving's queue; if the broker refuses, fail it visibly."""
    from .tasks import execute

    try:
        execute.apply_async((str(job.pk),), queue=job.serving)
    except Exception as exc:  # the broker is away: a job nobody will run must not look queued
        log.error("could not enqueue job %s on queue %s", job.pk, job.serving, exc_info=True)
        fail_job(
            job,
            "queue_unavailable",
            f"the job could not be queued ({type(exc).__name__}); the site's task queue is "
            "unreachable. Try again in a moment",
        )


def _run_and_close(job_id) -> None:
    from django.db import close_old_connections

    try:
        execute_job(job_id)
    finally:
        close_old_connections()


async def predict(serving: str, input, reply_channel: str, request_id) -> dict | None:
    """A live (unsaved) prediction. Returns the result in in-process mode; in
    Celery mode returns None and the worker sends ``prediction.result`` to
    ``reply_channel``."""
    if distributed():
        from .tasks import predict as predict_task

        await asyncio.to_thread(
            predict_task.apply_async, (serving, input, reply_channel, request_id), queue=serving, expires=60
        )
        return None
    return await mlservices.abatched_run(serving, input)
