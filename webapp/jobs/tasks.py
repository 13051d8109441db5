"""Celery tasks: thin wrappers that call a serving and publish.

Both go through this process's runtime, hence through the serving's batcher:
concurrent tasks in one worker (threads pool) share batches. Both run under
the worker's hard-time-limit watchdog (``webapp.worker.guard``) and the
serving's soft time limit (``execution.run_serving``).

- ``jobs.execute`` is acknowledged late and rejected (so delivered again) when
  its worker is lost; ``execute_job`` makes a second delivery harmless.
- ``jobs.predict`` (a live, unsaved prediction) is acknowledged on receipt:
  it expires within a minute anyway, and a request that crashed a worker must
  not crash the next one too.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from celery import shared_task
from channels.layers import get_channel_layer
from django.db import InterfaceError, OperationalError

from webapp import worker

from .execution import error_payload, execute_job, run_serving

log = logging.getLogger(__name__)
DATABASE_RETRIES = 5


@shared_task(bind=True, name="jobs.execute", acks_late=True, reject_on_worker_lost=True, max_retries=DATABASE_RETRIES)
def execute(self, job_id: str) -> str | None:
    try:
        job = execute_job(job_id, guard=worker.guard)
    except (OperationalError, InterfaceError) as exc:  # the database is away: try again later
        log.warning("job %s: database error (%s); retry %d of %d", job_id, exc, self.request.retries + 1, DATABASE_RETRIES)
        raise self.retry(exc=exc, countdown=min(30, 2**self.request.retries))
    return job.status if job else None


@shared_task(name="jobs.predict", ignore_result=False, acks_late=False)
def predict(serving: str, input, reply_channel: str | None = None, request_id=None) -> dict:
    """A live prediction: nothing is saved; the answer goes to ``reply_channel``."""
    try:
        result, _version = run_serving(serving, input, guard=worker.guard, what="a live prediction")
        message = {"result": result}
    except Exception as exc:
        message = {"error": error_payload(exc)}
    if reply_channel:
        try:
            async_to_sync(get_channel_layer().send)(
                reply_channel, {"type": "prediction.result", "request_id": request_id, **message}
            )
        except Exception:  # the page has gone, or Redis is away: nobody to tell
            log.warning("could not send a live prediction to %s", reply_channel, exc_info=True)
    return message
