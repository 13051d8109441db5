"""The websocket a page keeps open: live predictions in, events out.

Client → server::

    {"type": "predict", "serving": "sentiment", "input": {"text": "I love it"}, "request_id": 7}

Server → client (docs/api.md)::

    {"type": "jobs", "jobs": [...]}          on connect: your recent jobs, from the database
    {"type": "job", "job": {...}}            whenever one of your jobs changes
    {"type": "job.progress", "job_id": ..., "progress": 0.5, "done": 1, "total": 2, "partial": {...}}
    {"type": "prediction", "request_id": 7, "result": {...}, "model_version": "..."}
    {"type": "error", "request_id": 7, "code": "model_not_installed", "message": "..."}
    {"type": "error", "code": "reconnecting", "message": "..."}   then close 4013: Redis is away, come back later

The consumer runs no model and does not know where servings run: a predict is
checked at the door and handed to ``dispatch``; answers and job events arrive
as channel-layer events, handled by the methods named after their types.

When the channel layer loses Redis (``webapp.redis_layer``), no answer
or update can reach the socket any more: each live prediction in flight gets
an error, then the page is told to reconnect (code ``reconnecting``, close
4013 "try again later"); a handshake during the outage is accepted and told
the same, never refused with a 500. A page that reconnects reads its jobs
from the database, so it misses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from kombu.exceptions import OperationalError

from webapp.outages import connection_errors

from . import dispatch, json_body, owners, validation
from .execution import error_payload

log = logging.getLogger(__name__)
SNAPSHOT_JOBS = 20
# Close code "try again later": the RFC's is 1013, but daphne (autobahn) sends only 1000 or 3000-4999.
TRY_AGAIN_LATER = 4013
RECONNECTING = {
    "type": "error", "code": "reconnecting",
    "message": "the site lost its connection to Redis; reconnecting, your jobs are safe",
}


@database_sync_to_async
def recent_jobs(owner: owners.Owner) -> list[dict]:
    return [job.as_json() for job in owner.jobs()[:SNAPSHOT_JOBS]]


@database_sync_to_async
def checked_input(owner: owners.Owner, serving, input):
    return validation.check(owner, serving, input, live=True)[0]


class JobsConsumer(AsyncJsonWebsocketConsumer):
    """Live predictions are latest-wins per socket: at most
    ``PREDICTIONS_PER_SOCKET`` run at once; a newer ``predict`` waiting for its
    turn replaces the one waiting before it (answered ``superseded``: the page
    only shows the newest). An owner has at most ``PREDICTIONS_PER_OWNER``
    running over all their sockets (in this process); past it a predict is
    answered ``too_many_predictions``. A prediction with no answer after
    ``PREDICTION_TIMEOUT_S`` (its worker died, say) is answered ``timeout``.
    """

    in_flight: dict | None = None  # our token -> the client's request_id, for predictions sent and not answered
    leaving = False  # closing because Redis is away
    running_by_owner: collections.Counter = collections.Counter()  # over every socket of this process

    async def connect(self):
        self.owner = owners.of_scope(self.scope)
        self.in_flight, self.waiting, self.tokens = {}, None, itertools.count(1)
        if self.owner.known:
            try:
                await self.channel_layer.group_add(self.owner.group, self.channel_name)
            except connection_errors():  # Redis is away: accept, then say so and close cleanly
                await self.accept()
                await self.reconnect_later()
                return
        await self.accept()
        # A page that connects (or reconnects) late still learns every outcome.
        await self.send_json({"type": "jobs", "jobs": await recent_jobs(self.owner)})

    async def disconnect(self, code):
        self.running_by_owner[self.owner.group] -= len(self.in_flight or ())
        self.in_flight = {}
        if self.owner.known:
            try:
                await self.channel_layer.group_discard(self.owner.group, self.channel_name)
            except connection_errors():  # Redis is away; the membership expires with the group
                pass

    async def reconnect_later(self):
        """Redis is away: answer the live predictions in flight, tell the page, close with 4013."""
        if self.leaving:
            return
        self.leaving = True
        for request_id in self.in_flight.values():
            await self.send_json({**RECONNECTING, "request_id": request_id})
        self.running_by_owner[self.owner.group] -= len(self.in_flight)
        self.in_flight.clear()
        await self.send_json(RECONNECTING)
        await self.close(code=TRY_AGAIN_LATER)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            content = json_body.loads(text_data if text_data is not None else bytes_data or b"")
        except json_body.InvalidJSON as exc:
            await self.send_json({"type": "error", "request_id": None, "code": exc.code, "message": exc.message})
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
        if len(self.in_flight) < settings.PREDICTIONS_PER_SOCKET:
            await self.predict(content)
            return
        if self.waiting is not None:  # latest wins: the older one would only be shown to be replaced
            await self.send_json({"type": "error", "request_id": self.waiting.get("request_id"), "code": "superseded",
                                  "message": "a newer prediction from this page replaced this one before it ran"})
        self.waiting = content

    async def predict(self, content: dict):
        request_id = content.get("request_id")
        serving, input = content.get("serving"), content.get("input")
        if self.running_by_owner[self.owner.group] >= settings.PREDICTIONS_PER_OWNER:
            await self.send_json({"type": "error", "request_id": request_id, "code": "too_many_predictions",
                                  "message": f"you have {settings.PREDICTIONS_PER_OWNER} live predictions running "
                                             "(PREDICTIONS_PER_OWNER, over all your pages); wait for one to answer"})
            return
        token = f"{next(self.tokens)}"
        self.in_flight[token] = request_id  # the place is taken before anything is awaited
        self.running_by_owner[self.owner.group] += 1
        try:
            if validation.reads_database(serving):
                input = await checked_input(self.owner, serving, input)
            else:  # pure and quick: no thread hop for a keystroke's prediction
                input = validation.check(self.owner, serving, input, live=True)[0]
            await dispatch.apredict(serving, input, self.channel_name, token, self.owner.group)
        except Exception as exc:
            self.answered(token)
            error = error_payload(exc) if not isinstance(exc, OperationalError) else {  # the broker is away
                "code": "queue_unavailable", "message": "the site's task queue is unreachable; try again in a moment"}
            await self.send_json({"type": "error", "request_id": request_id, **error})
        else:
            asyncio.get_running_loop().call_later(
                settings.PREDICTION_TIMEOUT_S, lambda: asyncio.ensure_future(self.expire(token))
            )

    def answered(self, token) -> tuple[bool, object]:
        """Forget ``token``'s prediction; start the waiting one. (Known?, the client's request_id.)"""
        if token not in (self.in_flight or {}):
            return False, None
        request_id = self.in_flight.pop(token)
        self.running_by_owner[self.owner.group] -= 1
        return True, request_id

    async def next_waiting(self):
        if self.waiting is not None and not self.leaving and len(self.in_flight) < settings.PREDICTIONS_PER_SOCKET:
            content, self.waiting = self.waiting, None
            await self.predict(content)

    async def expire(self, token):
        known, request_id = self.answered(token)
        if known:
            await self.send_json({"type": "error", "request_id": request_id, "code": "timeout",
                                  "message": f"no answer within {settings.PREDICTION_TIMEOUT_S:g} s; "
                                             "the servings are overloaded or restarting. Try again"})
            await self.next_waiting()

    # Channel-layer events, named after their type.

    async def job_update(self, event):
        await self.send_json({"type": "job", "job": event["job"]})

    async def job_progress(self, event):
        await self.send_json({**event, "type": "job.progress"})

    async def prediction(self, event):
        known, request_id = self.answered(event.get("request_id"))
        if known:  # an answer after its timeout is not shown twice
            await self.send_json({**event, "request_id": request_id})
        await self.next_waiting()

    async def prediction_error(self, event):
        known, request_id = self.answered(event.get("request_id"))
        if known:
            await self.send_json({"type": "error", "request_id": request_id, **event["error"]})
        await self.next_waiting()

    async def channel_layer_down(self, event):
        """From ``webapp.redis_layer``: Redis is away, nothing more can reach this socket."""
        if self.in_flight is None:  # before connect(), which finds out by itself
            return
        await self.reconnect_later()
