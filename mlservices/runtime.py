"""The servings loaded in this process, and the calls that run them.

A ``Runtime`` maps serving names to their options (from settings), loads each
serving the first time it is used (or all at once with ``load()``, as a worker
does at start), and keeps one ``Batcher`` per serving. The same runtime backs
the web process in in-process mode and the Celery worker in distributed mode:
only the transport in front of it differs.

- ``run(name, input)``: inline, a batch of one, in the calling thread.
- ``batched_run(name, input)``: through the serving's batcher; blocks.
- ``await abatched_run(name, input)``: the same for asyncio code; the event
  loop is never blocked by loading, preprocessing or waiting.

``mlservices.run`` & co. use a module-level default runtime that
``configure(config)`` sets up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from . import registry
from .batcher import Batcher
from .devices import best_device
from .serving import LoadedServing


InferWrapper = Callable[[str, Callable[[list], list]], Callable[[list], list]]


class Runtime:
    """``wrap_infer(name, infer) -> infer`` wraps every model call (one batch) of
    every serving, e.g. with a watchdog; the default is to call the model as is."""

    def __init__(
        self,
        config: dict[str, dict] | None = None,
        device: str | None = None,
        wrap_infer: InferWrapper | None = None,
    ):
        self.config = {name: dict(opts) for name, opts in (config or {}).items()}
        self.device = device
        self.wrap_infer = wrap_infer
        self._loaded: dict[str, LoadedServing] = {}
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def serving(self, name: str) -> LoadedServing:
        """The loaded serving ``name``, loading it (once) if needed."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        with self._lock:
            name_lock = self._loading.setdefault(name, threading.Lock())
        with name_lock:  # one load per name; other names load in parallel
            if name not in self._loaded:
                registry.factory(name)  # unknown names fail before anything loads
                serving = registry.build(name, **self.config.get(name, {}))
                loaded = serving.setup(self.device or best_device())
                self._batchers[name] = Batcher(
                    self.wrap_infer(name, loaded.infer) if self.wrap_infer else loaded.infer,
                    max_batch_size=serving.batch_size,
                    max_wait_ms=serving.batch_timeout_ms,
                    name=name,
                    parallel=serving.parallel_batches,
                )
                self._loaded[name] = loaded
        return self._loaded[name]

    def batcher(self, name: str) -> Batcher:
        self.serving(name)
        return self._batchers[name]

    def load(self, names: list[str] | None = None) -> list[LoadedServing]:
        """Load ``names`` (default: every configured serving) now."""
        return [self.serving(n) for n in (names if names is not None else list(self.config))]

    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    def run(self, name: str, input: Any) -> Any:
        return self.serving(name).run(input)

    def batched_run(self, name: str, input: Any, timeout: float | None = None) -> Any:
        """``timeout``: seconds to wait for the batch once preprocessed; past it the
        item, if still queued, is dropped (it never reaches the model) and
        ``TimeoutError`` is raised."""
        loaded = self.serving(name)
        prepared = loaded.prepare(input)
        future = self._batchers[name].submit(prepared.item, prepared.key)
        try:
            output = future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise
        return loaded.finish(output, prepared.context)

    async def abatched_run(self, name: str, input: Any) -> Any:
        loaded = await asyncio.to_thread(self.serving, name)
        prepared = await asyncio.to_thread(loaded.prepare, input)
        future = self._batchers[name].submit(prepared.item, prepared.key)
        output = await asyncio.wrap_future(future)
        return await asyncio.to_thread(loaded.finish, output, prepared.context)

    def close(self) -> None:
        with self._lock:
            batchers, self._batchers, self._loaded = self._batchers, {}, {}
        for b in batchers.values():
            b.close()


_default = Runtime()


def configure(
    config: dict[str, dict] | None = None, device: str | None = None, wrap_infer: InferWrapper | None = None
) -> Runtime:
    """Replace the default runtime (closing the old one's batchers)."""
    global _default
    old, _default = _default, Runtime(config, device, wrap_infer)
    old.close()
    return _default


def default() -> Runtime:
    return _default


def run(name: str, input: Any) -> Any:
    return _default.run(name, input)


def batched_run(name: str, input: Any) -> Any:
    return _default.batched_run(name, input)


async def abatched_run(name: str, input: Any) -> Any:
    return await _default.abatched_run(name, input)
