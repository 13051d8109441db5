"""Dynamic batching: many callers, few model calls, fair to every caller.

``Batcher(infer, max_batch_size=..., max_wait_ms=..., parallel=None, threads=None,
max_queued=None)`` owns ``parallel`` threads that call ``infer(items) -> outputs``,
each on its own batch. Callers, from any thread, ``submit(item, key, owner)``
(or ``submit_many``: all the items of one input, or none) and get
``concurrent.futures.Future``s.

How many batches run at once, and on how many intra-op threads each, is
decided batch by batch when ``threads`` (the intra-op threads the batches
share, e.g. the CPUs) is given; the model learns its count from
``batch_threads()``, called in ``infer``'s thread (``LoadedServing.infer``
hands it to the serving's ``set_threads``):

- a batch that starts with no other batch running and none waiting behind it
  gets all ``threads``: a request alone is as fast as the model can be;
- when other batches run or wait, each gets ``threads // k`` (at least 1),
  ``k`` being how many run together (at most ``parallel``, default
  ``threads``): on 2 CPUs, two batches on one thread each. One batch on two
  threads stalls whenever either core is taken (each parallel region waits
  for its slower thread), e.g. by a Celery worker's own work; two batches on
  one thread each lose only the time actually taken;
- a batch waits while the running ones hold every thread (``max(threads,
  parallel)``): threads are never oversubscribed;
- a batch that will run alone is left to the thread that ran the last one
  when it is idle: its OpenMP threads are still awake (they spin a while after
  each batch), where another thread's would be woken while those spin on.

Without ``threads``, ``parallel`` (default 1) batches run at once and the
model keeps its own thread settings (``batch_threads()`` is ``None``).

- A batch leaves when it is full or when the oldest item of its key has
  waited ``max_wait_ms``, whichever comes first; items with different keys
  never share a batch.
- Within a key, items are taken round-robin by ``owner`` (a session, a user;
  ``None`` is one owner like any other), oldest first within an owner: one
  owner's backlog of 800 items cannot hold another owner's single item
  behind it, since the next batch takes its fair share from every owner
  waiting. The turn order carries over from batch to batch.
- ``max_queued`` bounds the items waiting (not those in inference): a submit
  past it raises ``Overloaded`` with ``retry_after`` seconds estimated from
  recent batch times; an input that could never fit is ``InvalidInput``.
- If ``infer`` raises, every item of that batch fails with the error; the
  next batch is unaffected. Cancelled futures are skipped and free their place.

Each batch is recorded (``records()``: size, key, how long its oldest item
waited, how long inference took, when it started, its threads) for metrics, tests and
``retry_after``, and handed to ``observer(record)`` when one is given::

    b = Batcher(lambda xs: [x * 2 for x in xs], max_batch_size=4, max_wait_ms=5)
    b.submit(21).result()           # -> 42
    b.records()[-1].size            # -> 1
    b.close()
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future

from .errors import InvalidInput, Overloaded, ServingError, ServingFailed

RECORDS_KEPT = 1000
RECENT_RECORDS = 32  # the batches retry_after learns the speed from

_this_batch = threading.local()


def batch_threads() -> int | None:
    """The intra-op threads the batch being inferred on this thread was given
    (``None`` outside a batch, or when the batcher does not share threads)."""
    return getattr(_this_batch, "threads", None)


def threads_for(threads: int, parallel: int, running: int, used: int, waiting: int) -> int:
    """The intra-op threads of a batch that starts now: ``threads`` shared by
    the batches that will run together (this one, the ``running`` ones and the
    ``waiting`` ones, at most ``parallel``), never more than the running ones
    (holding ``used``) leave free, at least 1::

        threads_for(2, 2, running=0, used=0, waiting=0)   # -> 2: alone
        threads_for(2, 2, running=0, used=0, waiting=1)   # -> 1: another batch is ready
        threads_for(2, 2, running=1, used=1, waiting=0)   # -> 1: another batch runs
    """
    together = min(parallel, running + 1 + waiting)
    return max(1, min(threads // together, max(threads, parallel) - used))


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    size: int
    key: Hashable
    wait_ms: float  # how long the batch's oldest item waited before inference
    inference_ms: float
    failed: bool
    started_at: float = 0.0  # wall clock (time.time()) when inference started
    threads: int | None = None  # intra-op threads it was given (None: the model's own setting)


def retry_after(items: int, records: Iterable[BatchRecord], parallel: int = 1) -> int:
    """Whole seconds (at least 1) until ``items`` queued items have gone through
    inference, at the per-item speed of ``records``; 1 when there are none::

        retry_after(25, [BatchRecord(4, None, 0, 400, False)] * 2)   # -> 3 (25 x 100 ms)
    """
    records = list(records)
    done = sum(r.size for r in records)
    if not done:
        return 1
    seconds_per_item = sum(r.inference_ms for r in records) / 1000.0 / done
    return max(1, math.ceil(items * seconds_per_item / parallel))


@dataclasses.dataclass
class _Pending:
    item: object
    future: Future
    arrived: float


class _Lane:
    """The items of one batch key: a queue per owner, served round-robin.

    ``owners`` is the ring: its first owner gives the next item and goes to
    the back if it has more waiting, so the order carries over from one batch
    to the next.
    """

    def __init__(self):
        self.owners: collections.OrderedDict[Hashable, collections.deque[_Pending]] = collections.OrderedDict()
        self.size = 0

    def append(self, owner: Hashable, pending: _Pending) -> None:
        self.owners.setdefault(owner, collections.deque()).append(pending)
        self.size += 1

    def oldest(self) -> float:
        return min(queue[0].arrived for queue in self.owners.values())

    def take(self, n: int) -> list[_Pending]:
        """Up to ``n`` live items, one per owner in turn; cancelled ones are dropped."""
        batch: list[_Pending] = []
        while len(batch) < n and self.owners:
            owner, queue = next(iter(self.owners.items()))
            pending = queue.popleft()
            self.size -= 1
            if pending.future.cancelled():  # not a turn: the owner keeps its place
                if not queue:
                    del self.owners[owner]
                continue
            batch.append(pending)
            if queue:
                self.owners.move_to_end(owner)  # to the back of the ring
            else:
                del self.owners[owner]
        return batch

    def drop_cancelled(self) -> None:
        for owner, queue in list(self.owners.items()):
            live = collections.deque(p for p in queue if not p.future.cancelled())
            self.size -= len(queue) - len(live)
            if live:
                self.owners[owner] = live  # same key: keeps its place in the ring
            else:
                del self.owners[owner]


class Batcher:
    def __init__(
        self,
        infer: Callable[[list], list],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        name: str = "batcher",
        parallel: int | None = None,
        max_queued: int | None = None,
        observer: Callable[[BatchRecord], None] | None = None,
        threads: int | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}; use 1 or more")
        if parallel is not None and parallel < 1:
            raise ValueError(f"parallel={parallel}; use 1 or more, or None for as many as threads (else 1)")
        if threads is not None and threads < 1:
            raise ValueError(f"threads={threads}; use 1 or more, or None to leave the model's threads alone")
        if max_queued is not None and max_queued < 1:
            raise ValueError(f"max_queued={max_queued}; use 1 or more, or None for no bound")
        parallel = parallel or threads or 1
        self.threads = threads
        self._capacity = max(threads or 0, parallel)  # threads the running batches may hold together
        self._running = 0  # batches in inference
        self._used = 0  # threads they hold
        self._busy: set[int] = set()  # the loops (by index) running a batch
        self._last: int | None = None  # the loop that ran the last batch
        self._infer = infer
        self._observer = observer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queued = max_queued
        self.name = name
        self._lanes: dict[Hashable, _Lane] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._records: collections.deque[BatchRecord] = collections.deque(maxlen=RECORDS_KEPT)
        self.parallel = parallel
        self._threads = [
            threading.Thread(
                target=self._loop, args=(i,), name=f"batcher:{name}" + (f":{i}" if parallel > 1 else ""), daemon=True
            )
            for i in range(parallel)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item, key: Hashable = None, owner: Hashable = None) -> Future:
        """Queue one item of ``owner``; raises ``Overloaded`` when the queue is full."""
        return self.submit_many([(item, key)], owner)[0]

    def submit_many(self, items: Sequence[tuple[object, Hashable]], owner: Hashable = None) -> list[Future]:
        """Queue every ``(item, key)`` of ``items`` (e.g. the windows of one
        input) for ``owner``, or none of them: ``Overloaded`` if they do not
        all fit under ``max_queued`` now, ``InvalidInput`` if they never can."""
        with self._cond:
            if self._closed:
                raise ServingFailed(f"{self.name}: the batcher is closed; the serving is shutting down")
            self._make_room(len(items))
            arrived = time.monotonic()
            futures = []
            for item, key in items:
                future: Future = Future()
                self._lanes.setdefault(key, _Lane()).append(owner, _Pending(item, future, arrived))
                futures.append(future)
            self._cond.notify_all()  # every idle thread: the items may make several batches
        return futures

    def records(self) -> list[BatchRecord]:
        with self._cond:
            return list(self._records)

    def pending(self) -> int:
        """Items waiting for a batch (cancelled ones included until dropped)."""
        with self._cond:
            return self._queued()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking items; finish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _queued(self) -> int:
        return sum(lane.size for lane in self._lanes.values())

    def _make_room(self, n: int) -> None:
        """Raise unless ``n`` more items fit under ``max_queued`` (call holding the lock)."""
        if self.max_queued is None or self._queued() + n <= self.max_queued:
            return
        if n > self.max_queued:
            raise InvalidInput(
                f"{self.name}: this input makes {n} batch items and at most max_queued={self.max_queued} "
                "can wait; send a smaller input, or raise the serving's max_queued option"
            )
        for lane in self._lanes.values():
            lane.drop_cancelled()
        self._lanes = {key: lane for key, lane in self._lanes.items() if lane.size}
        queued = self._queued()
        if queued + n <= self.max_queued:
            return
        recent = itertools.islice(reversed(self._records), RECENT_RECORDS)
        seconds = retry_after(queued + n - self.max_queued, recent, self.parallel)
        wanted = "1 more item" if n == 1 else f"{n} more items (one input, all or none)"
        raise Overloaded(
            f"{self.name} is overloaded: {queued} items are queued, max_queued={self.max_queued}, "
            f"no room for {wanted}; try again in {seconds} s",
            retry_after=seconds,
        )

    def _warm_loop_waits(self, loop: int) -> bool:
        """Whether another loop, idle, ran the last batch (call holding the lock, with nothing running)."""
        last = self._last
        return last is not None and last != loop and last not in self._busy and self._threads[last].is_alive()

    def _next_batch(self, loop: int) -> tuple[Hashable, list[_Pending], int | None] | None:
        """The next batch, its key and its threads, once one is due and threads are free."""
        with self._cond:
            while True:
                heads = {k: lane.oldest() for k, lane in self._lanes.items()}  # no lane is empty
                if not heads:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if self.threads is not None and self._used >= self._capacity:
                    self._cond.wait()  # the running batches hold every thread; the next to end wakes us
                    continue
                full = [k for k in heads if self._lanes[k].size >= self.max_batch_size]
                key = min(full or heads, key=heads.__getitem__)
                wait_left = heads[key] + self.max_wait - time.monotonic()
                if full or wait_left <= 0 or self._closed:
                    if self.threads is not None and not self._running and self._warm_loop_waits(loop):
                        self._cond.wait(wait_left if wait_left > 0 else None)  # it takes this one; it notifies
                        continue
                    lane = self._lanes[key]
                    batch = lane.take(self.max_batch_size)
                    if not lane.size:
                        del self._lanes[key]
                    threads = None
                    if self.threads is not None:
                        waiting = sum(math.ceil(lane.size / self.max_batch_size) for lane in self._lanes.values())
                        threads = threads_for(self.threads, self.parallel, self._running, self._used, waiting)
                        if waiting:
                            self._cond.notify_all()  # more batches are ready: the idle loops may start them
                    self._running += 1
                    self._used += threads or 0
                    self._busy.add(loop)
                    return key, batch, threads
                self._cond.wait(wait_left)

    def _done(self, loop: int, threads: int | None) -> None:
        """A batch has left inference: its threads are free for the next."""
        with self._cond:
            self._running -= 1
            self._busy.discard(loop)
            self._last = loop
            if threads is not None:
                self._used -= threads
                self._cond.notify_all()

    def _loop(self, loop: int) -> None:
        while (taken := self._next_batch(loop)) is not None:
            key, batch, threads = taken
            batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
            try:
                ran = self._inference(batch, threads) if batch else None
            finally:
                self._done(loop, threads)  # before the callers wake: their next items find the threads free
            if ran is not None:
                self._deliver(key, batch, threads, *ran)

    def _inference(self, batch: list[_Pending], threads: int | None) -> tuple:
        """Run one batch: (outputs, error, started, started_at, finished); never raises."""
        started, started_at = time.monotonic(), time.time()
        outputs, error = None, None
        _this_batch.threads = threads
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
        finally:
            _this_batch.threads = None
        return outputs, error, started, started_at, time.monotonic()

    def _deliver(self, key, batch: list[_Pending], threads, outputs, error, started, started_at, finished) -> None:
        """Record the batch, then hand each caller its output (or the batch's error)."""
        record = BatchRecord(
            size=len(batch),
            key=key,
            wait_ms=(started - min(p.arrived for p in batch)) * 1000.0,
            inference_ms=(finished - started) * 1000.0,
            failed=error is not None,
            started_at=started_at,
            threads=threads,
        )
        with self._cond:  # recorded before callers wake, so they see it
            self._records.append(record)
        for i, p in enumerate(batch):
            if error is not None:
                p.future.set_exception(error)
            else:
                p.future.set_result(outputs[i])
        if self._observer is not None:  # after the callers have their results
            self._observer(record)
