"""The one event transport: every state change goes through the channel layer.

In both modes, whoever runs the work (a thread of the web process, or the
Celery worker) publishes the same events, and the websocket consumer relays
them, not caring which mode produced them:

- ``job.update`` to the owner's group: a job's state changed (the whole job);
- ``job.progress`` to the owner's group: one more item of a fanned-out job is
  done (fraction done and that item's partial output);
- ``prediction`` / ``prediction.error`` to the asking socket's channel: the
  answer to a live prediction.

A push that fails is logged, never raised: the state is in the database, and
a page that reconnects reads it there.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from . import owners
from .models import Job

log = logging.getLogger(__name__)


def _send(what: str, group: str | None = None, channel: str | None = None, **message) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        if group is not None:
            async_to_sync(layer.group_send)(group, message)
        else:
            async_to_sync(layer.send)(channel, message)
    except Exception:  # the page has gone, or the layer is away: the database has the state
        log.warning("could not push %s", what, exc_info=True)


def job_changed(job: Job) -> None:
    _send(f"the update of job {job.pk}", group=owners.of_job(job).group, type="job.update", job=job.as_json())


def job_progressed(job: Job, done: int, total: int, partial) -> None:
    _send(
        f"the progress of job {job.pk}",
        group=owners.of_job(job).group,
        type="job.progress",
        job_id=str(job.pk),
        progress=job.progress,
        done=done,
        total=total,
        partial=partial,
    )


def prediction_ready(reply_channel: str, request_id, result, version: str) -> None:
    _send("a live prediction", channel=reply_channel, type="prediction", request_id=request_id,
          result=result, model_version=version)


def prediction_failed(reply_channel: str, request_id, error: dict) -> None:
    _send("a live prediction's error", channel=reply_channel, type="prediction.error", request_id=request_id,
          error=error)
