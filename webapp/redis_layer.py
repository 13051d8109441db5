"""The Redis channel layer of the distributed mode, made to live through Redis outages.

``channels_redis``' layer with three changes (docs/worker.md, "Redis outages"):

- **No stale connections after a restart.** redis-py 8 hands out an idle
  pooled connection without checking it (its "maintenance notifications"
  default, ``"auto"``, skips the check), so after Redis restarted the first
  command on each idle connection failed with "Connection closed by server":
  the first socket after an outage was refused or closed again. After a
  connection error the layer drops its idle connections and tries the call
  once more on a fresh one.
- **A receive never raises a connection error into a consumer** (which would
  end it with close 1011 and a traceback). It returns
  ``{"type": "channel_layer.down"}`` instead, to that receiver and to every
  other one waiting in this process, once each per outage; the consumer
  answers its in-flight requests, tells the page to reconnect and closes with
  4013 (``webapp.jobs.consumers``). A receiver that is already told and keeps
  receiving retries every ``RETRY_DELAY`` seconds, quietly.
- **One warning per outage** in this process's log, and one line when Redis
  answers again (``webapp.outages.Outage``).

Its sockets' timeouts come from the settings (``redis_channel_layer``): reads
must be allowed longer than channels_redis' 5 s blocking pop, or every idle
socket is torn down (the "closed again 6 s later" after an outage).
"""

from __future__ import annotations

import asyncio
import logging

from channels_redis import core

from webapp.outages import Outage, connection_errors

log = logging.getLogger(__name__)

LAYER_DOWN = "channel_layer.down"
RETRY_DELAY = 1.0  # seconds between the receives of a receiver already told


class RedisChannelLayer(core.RedisChannelLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outage = Outage(
            log, "Redis (channel layer)", "open websockets are told to reconnect (close 4013) until it is back"
        )
        self._told: set[str] = set()  # receivers that got LAYER_DOWN during this outage

    async def receive(self, channel):
        try:
            while True:
                try:
                    message = await super().receive(channel)
                except connection_errors() as exc:
                    self.outage.failed(exc)
                    await self._drop_idle_connections()
                    if channel not in self._told:
                        self._tell_everyone(channel)
                        return {"type": LAYER_DOWN}
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                if message.get("type") != LAYER_DOWN:
                    self.outage.ok()
                    self._told.discard(channel)
                return message
        except asyncio.CancelledError:
            self._told.discard(channel)  # its consumer has gone
            raise

    def _tell_everyone(self, channel: str) -> None:
        """LAYER_DOWN to ``channel`` and to every receiver of this process waiting on its buffer."""
        self._told.add(channel)
        for waiting in list(self.receive_buffer):
            if waiting not in self._told:
                self._told.add(waiting)
                self.receive_buffer[waiting].put_nowait({"type": LAYER_DOWN})

    async def group_add(self, group, channel):
        return await self._retried(super().group_add, group, channel)

    async def group_discard(self, group, channel):
        return await self._retried(super().group_discard, group, channel)

    async def group_send(self, group, message):
        return await self._retried(super().group_send, group, message)

    async def send(self, channel, message):
        return await self._retried(super().send, channel, message)

    async def _retried(self, call, *args):
        """``call(*args)``, once more on fresh connections if a connection failed; outages recorded."""
        try:
            result = await call(*args)
        except connection_errors():
            await self._drop_idle_connections()
            try:
                result = await call(*args)
            except connection_errors() as exc:
                self.outage.failed(exc)
                raise
        self.outage.ok()
        return result

    async def _drop_idle_connections(self) -> None:
        """Disconnect this loop's idle connections (the next command connects afresh); busy ones carry on."""
        for index in range(self.ring_size):
            await self.connection(index).connection_pool.disconnect(inuse_connections=False)
