"""Celery tasks: thin wrappers that run the work and publish (``execution``).

Both run under the worker's hard-time-limit watchdog (``webapp.worker.guard``)
and the serving's soft time limit.

- ``jobs.execute`` is acknowledged late and rejected (so delivered again) when
  its worker is lost; ``execute_job`` makes a second delivery harmless.
- ``jobs.predict`` (a live, unsaved prediction) is acknowledged on receipt and
  stores no result: its answer is an event on the asking socket's channel; it
  expires within a minute anyway, and a request that crashed a worker must
  not crash the next one too.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .execution import execute_job, execute_prediction

log = logging.getLogger(__name__)
DATABASE_RETRIES = 5


@shared_task(bind=True, name="jobs.execute", acks_late=True, reject_on_worker_lost=True, max_retries=DATABASE_RETRIES)
def execute(self, job_id: str) -> str | None:
    from webapp.worker import guard

    try:
        job = execute_job(job_id, guard=guard)
    except (OperationalError, InterfaceError) as exc:  # the database is away: try again later
        log.warning("job %s: database error (%s); retry %d of %d", job_id, exc, self.request.retries + 1, DATABASE_RETRIES)
        raise self.retry(exc=exc, countdown=min(30, 2**self.request.retries))
    return job.status if job else None


@shared_task(name="jobs.predict", ignore_result=True, acks_late=False)
def predict(serving: str, input, reply_channel: str, request_id=None, owner: str | None = None) -> dict:
    from webapp.worker import guard

    return execute_prediction(serving, input, reply_channel, request_id, owner, guard=guard)
