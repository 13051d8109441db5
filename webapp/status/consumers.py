"""``/ws/status/``: the status page's websocket, pushing a snapshot every ``STATUS_REFRESH_S`` seconds.

Staff only: anyone else is accepted and closed at once with code 4003 (a
refusal the page can read; a refused handshake only says "failed"), and a
socket whose user stops being staff is closed the same way at the next
refresh. Snapshots are collected on one thread of their own (they wait for
the workers' answers): the event loop never blocks, and open status pages
never take the threads other work of the process runs on. Server → client::

    {"type": "status", "mode": ..., "taken_at": ..., "workers": [...], "queues": {...}}   (snapshot.py)
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from . import snapshot

NOT_STAFF = 4003  # "forbidden", in the range daphne can send
_collector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-snapshot")


@database_sync_to_async
def is_staff(user) -> bool:
    """Whether ``user`` is (still) active staff, read again from the database."""
    from django.contrib.auth import get_user_model

    if user is None or not user.is_authenticated:
        return False
    return get_user_model().objects.filter(pk=user.pk, is_active=True, is_staff=True).exists()


class StatusConsumer(AsyncJsonWebsocketConsumer):
    pusher: asyncio.Task | None = None

    async def connect(self):
        await self.accept()
        if not await is_staff(self.scope.get("user")):
            await self.close(code=NOT_STAFF)
            return
        self.pusher = asyncio.create_task(self.push())

    async def push(self):
        """A snapshot now, then one every ``STATUS_REFRESH_S`` seconds, while the user is staff."""
        while True:
            await self.send_json(await asyncio.get_running_loop().run_in_executor(_collector, snapshot.latest))
            await asyncio.sleep(settings.STATUS_REFRESH_S)
            if not await is_staff(self.scope.get("user")):
                await self.close(code=NOT_STAFF)
                return

    async def disconnect(self, code):
        if self.pusher is not None:
            self.pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pusher

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        """The page sends nothing; anything it does send is ignored (never parsed)."""
