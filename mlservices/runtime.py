"""The servings loaded in this process, and the calls that run them.

A ``Runtime`` maps serving names to their options (from settings), loads each
serving the first time it is used (or all at once with ``load()``, as a worker
does at start), and keeps one ``Batcher`` per serving. The same runtime backs
the web process in in-process mode and the Celery worker in distributed mode:
only the transport in front of it differs.

- ``run(name, input)``: inline, a batch of one, in the calling thread.
- ``stream(name, input, timeout, owner)``: through the serving's batcher; yields a
  ``Progress`` per finished item of a fanned-out input, in input order, then
  the ``Final`` result with the version of the weights (``mlservices.events``).
- ``batched_run(name, input)``: the final result of ``stream``; blocks.
- ``astream`` / ``await abatched_run(name, input)``: the same for asyncio
  code; the event loop is never blocked by loading, preprocessing or waiting.

All items of one input are submitted at once, so they share batches with each
other and with other requests, or none is (``Overloaded`` when the serving's
``max_queued`` would be passed). ``owner`` (a session, a user; default
``None``) is who the batcher shares batches fairly between, round-robin. If
one item fails, the input fails with that error and its other items still
queued are dropped; other inputs in the same batches are unaffected.

``mlservices.run`` & co. use a module-level default runtime that
``configure(config)`` sets up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from concurrent.futures import Future
from typing import Any

from . import registry
from .batcher import Batcher
from .devices import best_device
from .events import Event, Final, Progress
from .serving import LoadedServing, Serving


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
        self._definitions: dict[str, Serving] = {}
        self._loaded: dict[str, LoadedServing] = {}
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def definition(self, name: str) -> Serving:
        """Serving ``name`` built with this runtime's options, not loaded (no I/O); built once."""
        serving = self._definitions.get(name)
        if serving is None:
            registry.factory(name)  # unknown names fail with the list of known ones
            serving = self._definitions[name] = registry.build(name, **self.config.get(name, {}))
        return serving

    def serving(self, name: str) -> LoadedServing:
        """The loaded serving ``name``, loading it (once) if needed."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        with self._lock:
            name_lock = self._loading.setdefault(name, threading.Lock())
        with name_lock:  # one load per name; other names load in parallel
            if name not in self._loaded:
                serving = self.definition(name)
                loaded = serving.setup(self.device or best_device())
                self._batchers[name] = Batcher(
                    self.wrap_infer(name, loaded.infer) if self.wrap_infer else loaded.infer,
                    max_batch_size=serving.batch_size,
                    max_wait_ms=serving.batch_timeout_ms,
                    name=name,
                    parallel=serving.parallel_batches,
                    max_queued=serving.max_queued,
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

    def _submit(self, name: str, items, owner) -> list[Future]:
        return self._batchers[name].submit_many([(p.item, p.key) for p in items], owner)

    def stream(
        self, name: str, input: Any, timeout: float | None = None, owner: Hashable = None
    ) -> Iterator[Event]:
        """Progress events, then the final result (see the module docstring).

        ``timeout``: seconds to wait for each item once the previous one is done
        (a stream that makes progress is not stuck); past it the items still
        queued are dropped (they never reach the model) and ``TimeoutError``
        is raised. ``owner``: whose items these are, for fair batching.
        """
        loaded = self.serving(name)
        items, fanned = loaded.prepare(input)
        futures = self._submit(name, items, owner)
        try:
            results = []
            for i, (prepared, future) in enumerate(zip(items, futures)):
                results.append(loaded.finish(future.result(timeout=timeout), prepared.context))
                if fanned:
                    yield Progress(i + 1, len(items), results[-1])
            yield Final(loaded.combine(results, fanned), loaded.version)
        finally:
            for future in futures:  # after a failure or a timeout: drop what still waits
                future.cancel()

    async def astream(
        self, name: str, input: Any, timeout: float | None = None, owner: Hashable = None
    ) -> AsyncIterator[Event]:
        loaded = await asyncio.to_thread(self.serving, name)
        items, fanned = await asyncio.to_thread(loaded.prepare, input)
        futures = self._submit(name, items, owner)
        try:
            results = []
            for i, (prepared, future) in enumerate(zip(items, futures)):
                output = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
                results.append(await asyncio.to_thread(loaded.finish, output, prepared.context))
                if fanned:
                    yield Progress(i + 1, len(items), results[-1])
            yield Final(await asyncio.to_thread(loaded.combine, results, fanned), loaded.version)
        finally:
            for future in futures:
                future.cancel()

    def batched_run(self, name: str, input: Any, timeout: float | None = None, owner: Hashable = None) -> Any:
        """The final result of ``stream(name, input, timeout, owner)``."""
        for event in self.stream(name, input, timeout, owner):
            if isinstance(event, Final):
                return event.result
        raise AssertionError("a stream always ends with its Final event")

    async def abatched_run(
        self, name: str, input: Any, timeout: float | None = None, owner: Hashable = None
    ) -> Any:
        async for event in self.astream(name, input, timeout, owner):
            if isinstance(event, Final):
                return event.result
        raise AssertionError("a stream always ends with its Final event")

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


def stream(name: str, input: Any) -> Iterator[Event]:
    return _default.stream(name, input)


def astream(name: str, input: Any) -> AsyncIterator[Event]:
    return _default.astream(name, input)
