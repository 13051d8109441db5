"""What happens inside the servings, for whoever watches (metrics, status pages).

The runtime and the batchers report events here; ``subscribe(fn)`` to get
every one of them, in the thread that produced it (keep ``fn`` quick: it runs
on a batcher's thread between two batches). A subscriber that raises is
logged and kept; it never fails a request. Nothing is recorded when nobody
subscribes::

    from mlservices import observers

    seen = []
    observers.subscribe(seen.append)
    ...                                  # run something through a batcher
    seen[-1]                             # -> BatchDone(serving='sentiment', version='v2@…', record=BatchRecord(...))
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from .batcher import BatchRecord

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchDone:
    """One batch went through inference (``record`` says how big, how long it waited and ran)."""

    serving: str
    version: str
    record: BatchRecord


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A version of a serving was loaded and warmed up in this process, in ``seconds``."""

    serving: str
    version: str
    device: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class Unloaded:
    """A version of a serving was drained and freed in this process."""

    serving: str
    version: str


Event = BatchDone | Loaded | Unloaded
_subscribers: list[Callable[[Event], None]] = []
_lock = threading.Lock()


def subscribe(fn: Callable[[Event], None]) -> Callable[[Event], None]:
    """Call ``fn(event)`` for every event from now on; returns ``fn`` (usable as a decorator)."""
    with _lock:
        if fn not in _subscribers:
            _subscribers.append(fn)
    return fn


def unsubscribe(fn: Callable[[Event], None]) -> None:
    with _lock:
        if fn in _subscribers:
            _subscribers.remove(fn)


def publish(event: Event) -> None:
    for fn in list(_subscribers):
        try:
            fn(event)
        except Exception:  # a broken watcher must not break serving
            log.exception("observer %r failed on %s", fn, type(event).__name__)
