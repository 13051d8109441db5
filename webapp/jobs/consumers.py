"""The websocket a page keeps open: live predictions in, job updates out.

Client → server::

    {"type": "predict", "serving": "sentiment", "input": {"text": "I love it"}, "request_id": 7}

Server → client::

    {"type": "jobs", "jobs": [...]}                     on connect: your recent jobs, from the database
    {"type": "job", "job": {...}}                       whenever one of your jobs changes
    {"type": "prediction", "request_id": 7, "result": {...}}
    {"type": "error", "request_id": 7, "code": "model_not_installed", "message": "..."}

The consumer runs no model and touches the database only through the small
helpers below; predictions go through ``dispatch``, the same as jobs.
"""

from __future__ import annotations

import asyncio
import logging

import mlservices
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import dispatch, owners, validation
from .execution import error_payload, remember_server_loop

log = logging.getLogger(__name__)
SNAPSHOT_JOBS = 20


@database_sync_to_async
def recent_jobs(owner: owners.Owner) -> list[dict]:
    return [job.as_json() for job in owner.jobs()[:SNAPSHOT_JOBS]]


class JobsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        remember_server_loop()
        self.owner = owners.of_scope(self.scope)
        self.tasks: set[asyncio.Task] = set()
        if self.owner.known:
            await self.channel_layer.group_add(self.owner.group, self.channel_name)
        await self.accept()
        # A page that connects (or reconnects) late still learns every outcome.
        await self.send_json({"type": "jobs", "jobs": await recent_jobs(self.owner)})

    async def disconnect(self, code):
        if self.owner.known:
            await self.channel_layer.group_discard(self.owner.group, self.channel_name)
        for task in self.tasks:
            task.cancel()

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or content.get("type") != "predict":
            await self.send_json(
                {"type": "error", "code": "invalid_message", "message": 'send {"type": "predict", ...}'}
            )
            return
        task = asyncio.create_task(self.predict(content))  # keep reading while it runs
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def predict(self, content: dict):
        request_id = content.get("request_id")
        serving, input = content.get("serving"), content.get("input")
        try:
            await asyncio.to_thread(validation.check, serving, input)
            result = await dispatch.predict(serving, input, self.channel_name, request_id)
        except Exception as exc:
            await self.send_json({"type": "error", "request_id": request_id, **error_payload(exc)})
            return
        if result is not None:
            await self.send_json({"type": "prediction", "request_id": request_id, "result": result})

    # Channel-layer events, named after their type.

    async def job_update(self, event):
        await self.send_json({"type": "job", "job": event["job"]})

    async def prediction_result(self, event):
        """A worker's answer to a ``predict`` sent in Celery mode."""
        if "error" in event:
            await self.send_json({"type": "error", "request_id": event.get("request_id"), **event["error"]})
        else:
            await self.send_json({"type": "prediction", "request_id": event.get("request_id"), "result": event["result"]})
