"""The websocket a page keeps open: live predictions in, events out.

Client → server::

    {"type": "predict", "serving": "sentiment", "input": {"text": "I love it"}, "request_id": 7}

Server → client (docs/api.md)::

    {"type": "jobs", "jobs": [...]}          on connect: your recent jobs, from the database
    {"type": "job", "job": {...}}            whenever one of your jobs changes
    {"type": "job.progress", "job_id": ..., "progress": 0.5, "done": 1, "total": 2, "partial": {...}}
    {"type": "prediction", "request_id": 7, "result": {...}, "model_version": "..."}
    {"type": "error", "request_id": 7, "code": "model_not_installed", "message": "..."}

The consumer runs no model and does not know where servings run: a predict is
checked at the door and handed to ``dispatch``; answers and job events arrive
as channel-layer events, handled by the methods named after their types.
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import dispatch, owners, validation
from .execution import error_payload

log = logging.getLogger(__name__)
SNAPSHOT_JOBS = 20


@database_sync_to_async
def recent_jobs(owner: owners.Owner) -> list[dict]:
    return [job.as_json() for job in owner.jobs()[:SNAPSHOT_JOBS]]


@database_sync_to_async
def checked_input(owner: owners.Owner, serving, input):
    return validation.check(owner, serving, input)[0]


class JobsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.owner = owners.of_scope(self.scope)
        if self.owner.known:
            await self.channel_layer.group_add(self.owner.group, self.channel_name)
        await self.accept()
        # A page that connects (or reconnects) late still learns every outcome.
        await self.send_json({"type": "jobs", "jobs": await recent_jobs(self.owner)})

    async def disconnect(self, code):
        if self.owner.known:
            await self.channel_layer.group_discard(self.owner.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            content = json.loads(text_data) if text_data else None
        except ValueError as exc:
            await self.refuse(f"the message is not JSON ({exc})")
            return
        await self.receive_json(content)

    async def refuse(self, why: str, request_id=None):
        await self.send_json(
            {"type": "error", "request_id": request_id, "code": "invalid_message",
             "message": f'{why}; send {{"type": "predict", "serving": ..., "input": ..., "request_id": ...}}'}
        )

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or content.get("type") != "predict":
            await self.refuse("unknown message")
            return
        request_id = content.get("request_id")
        serving, input = content.get("serving"), content.get("input")
        try:
            input = await checked_input(self.owner, serving, input)
            await asyncio.to_thread(dispatch.predict, serving, input, self.channel_name, request_id)
        except Exception as exc:
            await self.send_json({"type": "error", "request_id": request_id, **error_payload(exc)})

    # Channel-layer events, named after their type.

    async def job_update(self, event):
        await self.send_json({"type": "job", "job": event["job"]})

    async def job_progress(self, event):
        await self.send_json({**event, "type": "job.progress"})

    async def prediction(self, event):
        await self.send_json(event)

    async def prediction_error(self, event):
        await self.send_json({"type": "error", "request_id": event.get("request_id"), **event["error"]})
