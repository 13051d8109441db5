"""The channel layer of a single process (no Redis): Channels' in-memory layer,
safe to send to from any thread.

Jobs and live predictions run on worker threads, which publish their events
through the channel layer exactly as a Celery worker does through Redis
(``webapp.jobs.events``). The in-memory layer's queues belong to the event
loop that receives from them (the ASGI server's); a send from another thread's
loop would sit unseen until that loop next wakes. This layer hands such sends
to the receiving loop, so the code that publishes is the same in both modes.
"""

from __future__ import annotations

import asyncio

from channels.layers import InMemoryChannelLayer


class InProcessChannelLayer(InMemoryChannelLayer):
    _receiving_loop: asyncio.AbstractEventLoop | None = None

    async def receive(self, channel):
        self._receiving_loop = asyncio.get_running_loop()
        return await super().receive(channel)

    def receiving_loop(self) -> asyncio.AbstractEventLoop | None:
        """The running loop that receives from this layer, if any: a thread's send is
        scheduled straight onto it (``webapp.jobs.events``)."""
        loop = self._receiving_loop
        return loop if loop is not None and loop.is_running() and not loop.is_closed() else None

    def _foreign_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self._receiving_loop
        if loop is None or loop.is_closed() or not loop.is_running() or loop is asyncio.get_running_loop():
            return None
        return loop

    async def send(self, channel, message):
        loop = self._foreign_loop()
        if loop is None:
            return await super().send(channel, message)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(super().send(channel, message), loop))

    async def group_send(self, group, message):
        loop = self._foreign_loop()
        if loop is None:
            return await super().group_send(group, message)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(super().group_send(group, message), loop)
        )
