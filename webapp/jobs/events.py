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

Events are published from threads (a job's, a Celery task's). Each send runs
on an event loop that lives as long as the process (the in-process layer's
receiving loop when it has one, else a publisher thread's), so the layer's
connections stay open between events: no new event loop, and no new Redis
connection, per event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from channels.layers import get_channel_layer

from . import owners
from .models import Job

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 20.0  # above the Redis layer's socket timeout (15 s): an outage fails the send, not the wait


class _Publisher:
    """An event loop on a daemon thread of this process (a fresh one after a fork)."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop, self._pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=self._loop.run_forever, name="events-publisher", daemon=True).start()
            return self._loop


_publisher = _Publisher()


def _send(what: str, group: str | None = None, channel: str | None = None, **message) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    receiving = getattr(layer, "receiving_loop", None)
    loop = (receiving() if receiving else None) or _publisher.loop()
    sending = layer.group_send(group, message) if group is not None else layer.send(channel, message)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    try:
        if running is loop:  # already on that loop: send without waiting on ourselves
            loop.create_task(sending)
            return
        asyncio.run_coroutine_threadsafe(sending, loop).result(timeout=SEND_TIMEOUT_S)
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
