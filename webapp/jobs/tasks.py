"""Celery tasks: thin wrappers that call a serving and publish.

Both go through this process's runtime, hence through the serving's batcher:
concurrent tasks in one worker (threads pool) share batches.
"""

from __future__ import annotations

import mlservices
from asgiref.sync import async_to_sync
from celery import shared_task
from channels.layers import get_channel_layer

from .execution import error_payload, execute_job


@shared_task(name="jobs.execute", acks_late=True, reject_on_worker_lost=True)
def execute(job_id: str) -> str | None:
    job = execute_job(job_id)
    return job.status if job else None


@shared_task(name="jobs.predict", ignore_result=False)
def predict(serving: str, input, reply_channel: str | None = None, request_id=None) -> dict:
    """A live prediction: nothing is saved; the answer goes to ``reply_channel``."""
    try:
        message = {"result": mlservices.batched_run(serving, input)}
    except Exception as exc:
        message = {"error": error_payload(exc)}
    if reply_channel:
        async_to_sync(get_channel_layer().send)(
            reply_channel, {"type": "prediction.result", "request_id": request_id, **message}
        )
    return message
