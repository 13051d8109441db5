"""The servings loaded in this process, and the calls that run them.

A ``Runtime`` maps serving names to their options (from settings), loads each
serving the first time it is used (or all at once with ``load()``, as a worker
does at start), and keeps one ``Batcher`` per loaded serving. The same runtime
backs the web process in in-process mode and the Celery worker in distributed
mode: only the transport in front of it differs.

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

**Model versions, swapped without downtime.** ``deploy(name, routes)`` serves
``name`` with the versions ``routes`` list, each a ``Route(version, options,
weight)``: ``options`` are the factory options of that version (e.g.
``{"model": "/models/sentiment/v2"}``), ``weight`` its share of requests. It
loads (and warms up) every version not loaded yet *beside* those serving, then
switches the route table at once (each version keeps its own serving and
batcher), then drains the versions no longer routed on a background thread:
streams that started on one finish on it, then its batcher stops and the
model is freed (CUDA cache included). Requests are shared by smooth weighted
round-robin, so a 10 % canary gets exactly one request in ten::

    rt.deploy("sentiment", [Route("v1", {"model": "/m/v1"}, 90), Route("v2", {"model": "/m/v2"}, 10)])
    [rt.batched_run("sentiment", "fine")["model"][:3] for _ in range(10)]
    # -> ['v1@', 'v1@', 'v1@', 'v1@', 'v1@', 'v2@', 'v1@', 'v1@', 'v1@', 'v1@']

The ``Final`` event names the version that produced the result; for a route
with a version name it always starts with ``"<version>@"``. Until something
is deployed, the first use of a serving deploys ``first_routes(name)`` (e.g. the
active versions a database names), by default ``Route()``: the settings'
own options. ``mlservices.observers`` hears of every load, unload and batch.

``mlservices.run`` & co. use a module-level default runtime that
``configure(config)`` sets up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping
from typing import Any

from . import observers, registry
from .batcher import Batcher
from .devices import best_device, release_memory
from .errors import InvalidInput
from .events import Event, Final, Progress
from .serving import LoadedServing, Serving

log = logging.getLogger(__name__)

InferWrapper = Callable[[str, Callable[[list], list]], Callable[[list], list]]


@dataclasses.dataclass(frozen=True)
class Route:
    """One version of a serving and its share of requests.

    ``version``: a name people see ("" for the settings' own model);
    ``options``: factory options overriding the settings' for this version;
    ``weight``: its share, relative to the other routes' (> 0).
    """

    version: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weight: float = 100.0

    def same_version(self, other: Route) -> bool:
        return self.version == other.version and dict(self.options) == dict(other.options)


class Deployed:
    """A loaded version with its own batcher, and the streams now using it."""

    def __init__(self, route: Route, loaded: LoadedServing, batcher: Batcher):
        self.route, self.loaded, self.batcher = route, loaded, batcher
        self._users = 0
        self._idle = threading.Condition()

    def acquire(self) -> None:
        with self._idle:
            self._users += 1

    def release(self) -> None:
        with self._idle:
            self._users -= 1
            if not self._users:
                self._idle.notify_all()

    def drain(self) -> None:
        """Wait until no stream uses it, then stop its batcher."""
        with self._idle:
            self._idle.wait_for(lambda: not self._users)
        self.batcher.close(timeout=None)


class _Table:
    """The routes of one serving: smooth weighted round-robin over its versions."""

    def __init__(self, deployed: list[Deployed]):
        self.deployed = deployed
        self.weights = [d.route.weight for d in deployed]
        self.current = [0.0] * len(deployed)
        self.main = max(deployed, key=lambda d: d.route.weight)

    def pick(self) -> Deployed:
        total = sum(self.weights)
        for i, weight in enumerate(self.weights):
            self.current[i] += weight
        best = max(range(len(self.deployed)), key=self.current.__getitem__)
        self.current[best] -= total
        return self.deployed[best]


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
        self._tables: dict[str, _Table] = {}
        self._lock = threading.Lock()
        self._deploying: dict[str, threading.Lock] = {}
        self._draining: list[threading.Thread] = []
        # What a serving's first use deploys (e.g. the active versions a database
        # names); None: the settings' own model, ``[Route()]``.
        self.first_routes: Callable[[str], list[Route]] | None = None

    def definition(self, name: str, options: Mapping[str, Any] | None = None) -> Serving:
        """Serving ``name`` built with this runtime's options (and ``options`` over
        them), not loaded (no I/O); without ``options``, built once."""
        if options:
            return registry.build(name, **{**self.config.get(name, {}), **options})
        serving = self._definitions.get(name)
        if serving is None:
            registry.factory(name)  # unknown names fail with the list of known ones
            serving = self._definitions[name] = registry.build(name, **self.config.get(name, {}))
        return serving

    # --- versions -------------------------------------------------------------

    def deploy(self, name: str, routes: list[Route], *, first: bool = False) -> None:
        """Serve ``name`` with ``routes`` (see the module docstring); blocks while loading.

        A version that fails to load raises its error and nothing is switched.
        ``first=True``: only if nothing serves ``name`` yet (a first use racing
        an explicit deploy never replaces it).
        """
        routes = _checked_routes(name, routes)
        with self._deploy_lock(name):
            table = self._tables.get(name)
            if first and table is not None:
                return
            current = table.deployed if table else []
            if table and [d.route for d in current] == routes:
                return
            fresh: list[Deployed] = []
            try:
                for route in routes:
                    old = next((d for d in current if d.route.same_version(route)), None)
                    fresh.append(old if old is not None else self._load(name, route))
            except BaseException:
                for d in fresh:
                    if d not in current:
                        self._retire(name, d)
                raise
            with self._lock:
                for d, route in zip(fresh, routes):
                    d.route = route  # a kept version may get a new weight
                self._tables[name] = _Table(fresh)
            for d in current:
                if d not in fresh:
                    thread = threading.Thread(target=self._retire, args=(name, d), name=f"drain:{name}", daemon=True)
                    self._draining.append(thread)
                    thread.start()
            log.info("serving %s now routes %s", name, ", ".join(
                f"{d.loaded.version} ({d.route.weight:g})" for d in fresh))

    def routes(self, name: str) -> list[Route]:
        table = self._tables.get(name)
        return [d.route for d in table.deployed] if table else []

    def deployed(self, name: str) -> list[Deployed]:
        """The versions ``name`` routes requests to now (empty: not loaded yet)."""
        table = self._tables.get(name)
        return list(table.deployed) if table else []

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait for the versions being drained to be freed; False if some still are after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._draining):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._draining = [t for t in self._draining if t.is_alive()]
        return not self._draining

    def _deploy_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._deploying.setdefault(name, threading.Lock())

    def _load(self, name: str, route: Route) -> Deployed:
        serving = self.definition(name, route.options)
        device = self.device or best_device()
        started = time.monotonic()
        loaded = serving.setup(device)
        if route.version and not loaded.version.startswith(f"{route.version}@"):
            loaded.version = f"{route.version}@{loaded.version}"
        version = loaded.version
        batcher = Batcher(
            self.wrap_infer(name, loaded.infer) if self.wrap_infer else loaded.infer,
            max_batch_size=serving.batch_size,
            max_wait_ms=serving.batch_timeout_ms,
            name=name,
            parallel=serving.parallel_batches,
            threads=loaded.batch_threads,
            max_queued=serving.max_queued,
            observer=lambda record: observers.publish(observers.BatchDone(name, version, record)),
        )
        observers.publish(observers.Loaded(name, version, device, time.monotonic() - started))
        return Deployed(route, loaded, batcher)

    def _retire(self, name: str, deployed: Deployed) -> None:
        deployed.drain()
        version = deployed.loaded.version
        deployed.loaded = None
        release_memory()
        observers.publish(observers.Unloaded(name, version))
        log.info("serving %s: version %s drained and freed", name, version)

    def _pick(self, name: str, version: str | None) -> Deployed:
        """The version this request runs on, counted as in use until released."""
        if name not in self._tables:
            self._first_deploy(name)
        with self._lock:
            table = self._tables[name]
            if version is None:
                chosen = table.pick()
            else:
                chosen = next((d for d in table.deployed if d.route.version == version), None)
                if chosen is None:
                    known = ", ".join(repr(d.route.version) for d in table.deployed)
                    raise InvalidInput(f"{name} has no deployed version {version!r}; deployed: {known}")
            chosen.acquire()
            return chosen

    # --- serving ----------------------------------------------------------------

    def serving(self, name: str) -> LoadedServing:
        """The loaded serving ``name`` (its main version), loading it if needed."""
        return self._main(name).loaded

    def batcher(self, name: str) -> Batcher:
        return self._main(name).batcher

    def _main(self, name: str) -> Deployed:
        table = self._tables.get(name)
        if table is None:
            self._first_deploy(name)
            table = self._tables[name]
        return table.main

    def _first_deploy(self, name: str) -> None:
        self.deploy(name, self.first_routes(name) if self.first_routes else [Route()], first=True)

    def load(self, names: list[str] | None = None) -> list[LoadedServing]:
        """Load ``names`` (default: every configured serving) now."""
        return [self.serving(n) for n in (names if names is not None else list(self.config))]

    def loaded(self) -> list[str]:
        return sorted(self._tables)

    def run(self, name: str, input: Any) -> Any:
        return self.serving(name).run(input)

    def stream(
        self, name: str, input: Any, timeout: float | None = None, owner: Hashable = None,
        version: str | None = None,
    ) -> Iterator[Event]:
        """Progress events, then the final result (see the module docstring).

        ``timeout``: seconds to wait for each item once the previous one is done
        (a stream that makes progress is not stuck); past it the items still
        queued are dropped (they never reach the model) and ``TimeoutError``
        is raised. ``owner``: whose items these are, for fair batching.
        ``version``: run on that deployed version (default: by the routes' weights).
        """
        deployed = self._pick(name, version)
        futures = []
        try:
            loaded = deployed.loaded
            items, fanned = loaded.prepare(input)
            futures = deployed.batcher.submit_many([(p.item, p.key) for p in items], owner)
            results = []
            for i, (prepared, future) in enumerate(zip(items, futures)):
                results.append(loaded.finish(future.result(timeout=timeout), prepared.context))
                if fanned:
                    yield Progress(i + 1, len(items), results[-1])
            yield Final(loaded.combine(results, fanned), loaded.version)
        finally:
            for future in futures:  # after a failure or a timeout: drop what still waits
                future.cancel()
            deployed.release()

    async def astream(
        self, name: str, input: Any, timeout: float | None = None, owner: Hashable = None,
        version: str | None = None,
    ) -> AsyncIterator[Event]:
        deployed = await asyncio.to_thread(self._pick, name, version)
        futures = []
        try:
            loaded = deployed.loaded
            items, fanned = await asyncio.to_thread(loaded.prepare, input)
            futures = deployed.batcher.submit_many([(p.item, p.key) for p in items], owner)
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
            deployed.release()

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
            tables, self._tables = self._tables, {}
        for table in tables.values():
            for d in table.deployed:
                d.batcher.close()


def _checked_routes(name: str, routes: list[Route]) -> list[Route]:
    routes = list(routes)
    if not routes:
        raise InvalidInput(f"deploy({name!r}): no routes; give at least one Route")
    for route in routes:
        if not isinstance(route, Route):
            raise InvalidInput(f"deploy({name!r}): {route!r} is not an mlservices.runtime.Route")
        if not isinstance(route.weight, (int, float)) or not route.weight > 0:
            raise InvalidInput(f"deploy({name!r}): version {route.version!r} has weight {route.weight!r}; use a number above 0")
        if "@" in route.version or "/" in route.version:
            raise InvalidInput(f"deploy({name!r}): version name {route.version!r} holds '@' or '/'; use letters, digits, . _ -")
    versions = [r.version for r in routes]
    if len(set(versions)) != len(versions):
        raise InvalidInput(f"deploy({name!r}): a version is routed twice ({', '.join(map(repr, versions))})")
    return routes


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
