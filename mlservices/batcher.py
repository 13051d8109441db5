"""Dynamic batching: many callers, few model calls.

``Batcher(infer, max_batch_size=..., max_wait_ms=..., parallel=1)`` owns
``parallel`` threads that call ``infer(items) -> outputs``, each on its own
batch (on a CPU, two batches on one torch thread each keep both cores busy
while the other work of the process, e.g. a Celery worker's, runs beside them,
where one batch on two threads stalls whenever either core is taken).
Callers, from any thread, ``submit(item, key)`` and get a
``concurrent.futures.Future``. A batch leaves when it is full
or when its oldest item has waited ``max_wait_ms``, whichever comes first;
items with different keys never share a batch. If ``infer`` raises, every item
of that batch fails with the error; the next batch is unaffected.

Each batch is recorded (``records()``: size, key, how long its oldest item
waited, how long inference took) for metrics and tests::

    b = Batcher(lambda xs: [x * 2 for x in xs], max_batch_size=4, max_wait_ms=5)
    b.submit(21).result()           # -> 42
    b.records()[-1].size            # -> 1
    b.close()
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future

from .errors import ServingError, ServingFailed

RECORDS_KEPT = 1000


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    size: int
    key: Hashable
    wait_ms: float  # how long the batch's oldest item waited before inference
    inference_ms: float
    failed: bool


@dataclasses.dataclass
class _Pending:
    item: object
    future: Future
    arrived: float


class Batcher:
    def __init__(
        self,
        infer: Callable[[list], list],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        name: str = "batcher",
        parallel: int = 1,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}; use 1 or more")
        if parallel < 1:
            raise ValueError(f"parallel={parallel}; use 1 or more")
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self._queues: dict[Hashable, collections.deque[_Pending]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._records: collections.deque[BatchRecord] = collections.deque(maxlen=RECORDS_KEPT)
        self.parallel = parallel
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher:{name}" + (f":{i}" if parallel > 1 else ""), daemon=True)
            for i in range(parallel)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item, key: Hashable = None) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise ServingFailed(f"{self.name}: the batcher is closed; the serving is shutting down")
            self._queues.setdefault(key, collections.deque()).append(
                _Pending(item, future, time.monotonic())
            )
            self._cond.notify()
        return future

    def records(self) -> list[BatchRecord]:
        with self._cond:
            return list(self._records)

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking items; finish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _next_batch(self) -> tuple[Hashable, list[_Pending]] | None:
        with self._cond:
            while True:
                heads = {k: q[0].arrived for k, q in self._queues.items() if q}
                if not heads:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                full = [k for k in heads if len(self._queues[k]) >= self.max_batch_size]
                key = min(full or heads, key=heads.__getitem__)
                wait_left = heads[key] + self.max_wait - time.monotonic()
                if full or wait_left <= 0 or self._closed:
                    queue = self._queues[key]
                    batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch_size))]
                    if not queue:
                        del self._queues[key]
                    return key, batch
                self._cond.wait(wait_left)

    def _loop(self) -> None:
        while (taken := self._next_batch()) is not None:
            key, batch = taken
            batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.monotonic()
            error: BaseException | None = None
            try:
                outputs = self._infer([p.item for p in batch])
                if len(outputs) != len(batch):
                    raise ServingFailed(
                        f"{self.name}: inference returned {len(outputs)} outputs for "
                        f"{len(batch)} inputs; it must return one output per input"
                    )
            except BaseException as exc:  # noqa: BLE001 - every item must learn of it
                error = exc if isinstance(exc, ServingError) else ServingFailed(
                    f"{self.name}: inference failed on a batch of {len(batch)}: "
                    f"{type(exc).__name__}: {exc}"
                )
            finished = time.monotonic()
            with self._cond:  # recorded before callers wake, so they see it
                self._records.append(
                    BatchRecord(
                        size=len(batch),
                        key=key,
                        wait_ms=(started - batch[0].arrived) * 1000.0,
                        inference_ms=(finished - started) * 1000.0,
                        failed=error is not None,
                    )
                )
            for i, p in enumerate(batch):
                if error is not None:
                    p.future.set_exception(error)
                else:
                    p.future.set_result(outputs[i])
