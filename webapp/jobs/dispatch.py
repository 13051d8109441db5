"""The transport: where servings run, chosen by ``MLSERVICES_MODE``.

- ``inprocess``: jobs and live predictions run on thread pools of this
  process (batched all the same, by this process's runtime).
- ``celery``: they become Celery tasks on the serving's queue, run by a worker.

Either way the work is ``execution.execute_job`` / ``execute_prediction``,
and its results travel back as channel-layer events (``webapp.jobs.events``);
only the hop in between differs. Nothing else knows the mode.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, transaction

from .execution import execute_job, execute_prediction, fail_job
from .models import Job

log = logging.getLogger(__name__)
PREDICTION_EXPIRES_S = 60  # a live prediction nobody ran within a minute is not wanted any more
_pools: dict[str, ThreadPoolExecutor] = {}


def _pool(kind: str) -> ThreadPoolExecutor:
    """One pool for jobs and one for live predictions, so a backlog of jobs never delays typing."""
    if kind not in _pools:
        _pools[kind] = ThreadPoolExecutor(max_workers=16, thread_name_prefix=kind)
    return _pools[kind]


def distributed() -> bool:
    return settings.MLSERVICES_MODE == "celery"


def enqueue_job(job: Job) -> None:
    """Start ``job`` once the transaction that created it commits."""
    if distributed():
        transaction.on_commit(lambda: _send(job))
    else:
        transaction.on_commit(lambda: _pool("jobs").submit(_closing, execute_job, job.pk))


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


def predict(serving: str, input, reply_channel: str, request_id, owner: str | None = None) -> None:
    """Start a live (unsaved) prediction; its answer is sent to ``reply_channel``. Blocking
    (it may talk to the broker): call it from a thread."""
    if distributed():
        from .tasks import predict as predict_task

        predict_task.apply_async(
            (serving, input, reply_channel, request_id), {"owner": owner}, queue=serving, expires=PREDICTION_EXPIRES_S
        )
    else:
        _pool("predictions").submit(_closing, execute_prediction, serving, input, reply_channel, request_id, owner)


async def apredict(serving: str, input, reply_channel: str, request_id, owner: str | None = None) -> None:
    """``predict`` for the event loop: in-process the work is only handed to a thread pool (no
    wait, no thread hop); through Celery the broker call runs on a thread."""
    if distributed():
        await asyncio.to_thread(predict, serving, input, reply_channel, request_id, owner)
    else:
        predict(serving, input, reply_channel, request_id, owner)


def resume_unfinished(**signal_kwargs) -> int:
    """In-process mode, once per process, at its first request: run again the jobs an earlier
    web process left behind (queued, or running on a ``web:<pid>`` that no longer exists on
    this machine). Running one twice is harmless: ``execute_job`` is idempotent."""
    from django.core.signals import request_started

    request_started.disconnect(resume_unfinished, dispatch_uid="resume-unfinished-jobs")
    if distributed():
        return 0
    resumed = 0
    try:
        for job in Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING)).only("pk", "status", "worker"):
            if job.status == Job.Status.RUNNING and _alive(job.worker):
                continue
            _pool("jobs").submit(_closing, execute_job, job.pk)
            resumed += 1
    except Exception:  # the database is not there yet: nothing to resume
        log.warning("could not look for unfinished jobs to resume", exc_info=True)
        return 0
    if resumed:
        log.info("resuming %d job(s) an earlier web process left unfinished", resumed)
    return resumed


def _alive(worker: str) -> bool:
    """Whether ``worker`` (``web:<pid>``, or a Celery worker's name) may still be running it."""
    kind, _, pid = worker.partition(":")
    if kind != "web" or not pid.isdigit():
        return True  # not ours to judge: the workers' liveness checks handle theirs
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _closing(run, *args) -> None:
    try:
        run(*args)
    except Exception:
        log.exception("%s failed outside the serving", run.__name__)
    finally:
        close_old_connections()
