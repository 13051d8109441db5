"""Batching arithmetic and failure isolation, on toy servings, gated by events.

The trick that makes batch composition deterministic: a first item holds the
batcher busy inside inference (the toy's gate is closed), the test lines items
up behind it, then opens the gate. What the batcher then sees is fixed.
"""

from __future__ import annotations

import threading
from functools import partial

import pytest

import mlservices
from mlservices import Batcher, BatchRecord, InvalidInput, LoadedServing, Runtime, ServingFailed
from mlservices.batcher import batch_threads, retry_after, threads_for
from mlservices.errors import Overloaded
from mlservices.serving import usable_cpus
from mlservices.testing import Toy, Turnstile, Windows

WAIT = 10  # seconds; only ever reached when a test is failing


def busy_batcher(toy: Toy, batch_size: int, max_wait_ms: float) -> Batcher:
    """A batcher whose thread is stuck inside inference on item 'blocker'."""
    batcher = Batcher(partial(toy.inference, toy), max_batch_size=batch_size, max_wait_ms=max_wait_ms, name="toy")
    batcher.submit("blocker")
    assert toy.started.get(timeout=WAIT) == ["blocker"]
    return batcher


def sizes(batcher: Batcher) -> list[int]:
    return [r.size for r in batcher.records()]


def test_1_is_a_batch_of_1():
    batcher = Batcher(lambda xs: [x * 2 for x in xs], max_batch_size=4, max_wait_ms=1, name="double")
    assert batcher.submit(21).result(WAIT) == 42
    assert sizes(batcher) == [1]
    batcher.close()


def test_2_plus_2_is_one_batch_of_4():
    toy = Toy()
    # A full batch leaves at once: the 10-minute wait is never reached.
    batcher = Batcher(partial(toy.inference, toy), max_batch_size=4, max_wait_ms=600_000, name="toy")
    futures = [batcher.submit(i) for i in (1, 2)] + [batcher.submit(i) for i in (3, 4)]
    assert [f.result(WAIT) for f in futures] == [2, 4, 6, 8]
    assert sizes(batcher) == [4]
    batcher.close()


def test_3_then_timeout():
    toy = Toy(open_gate=False)
    batcher = busy_batcher(toy, batch_size=4, max_wait_ms=1)
    futures = [batcher.submit(i) for i in (1, 2, 3)]
    toy.gate.set()
    assert [f.result(WAIT) for f in futures] == [2, 4, 6]
    assert sizes(batcher) == [1, 3]  # the blocker, then 3 that gave up waiting for a 4th
    assert batcher.records()[1].wait_ms >= 1
    batcher.close()


def test_5_with_max_4_is_4_then_1():
    toy = Toy(open_gate=False)
    batcher = busy_batcher(toy, batch_size=4, max_wait_ms=1)
    futures = [batcher.submit(i) for i in range(5)]
    toy.gate.set()
    assert [f.result(WAIT) for f in futures] == [0, 2, 4, 6, 8]
    assert sizes(batcher) == [1, 4, 1]
    batcher.close()


def test_keys_never_share_a_batch():
    toy = Toy(open_gate=False)
    batcher = busy_batcher(toy, batch_size=8, max_wait_ms=1)
    short_a, long_b, short_c = batcher.submit(1, key=16), batcher.submit(2, key=32), batcher.submit(3, key=16)
    toy.gate.set()
    assert (short_a.result(WAIT), long_b.result(WAIT), short_c.result(WAIT)) == (2, 4, 6)
    batches = [toy.started.get(timeout=WAIT) for _ in range(2)]
    assert sorted(batches) == [[1, 3], [2]]
    assert sorted((r.key, r.size) for r in batcher.records()[1:]) == [(16, 2), (32, 1)]
    batcher.close()


def test_a_failed_batch_fails_its_items_and_the_next_batch_is_fine():
    toy = Toy(open_gate=False)
    batcher = busy_batcher(toy, batch_size=4, max_wait_ms=1)
    doomed = [batcher.submit(1), batcher.submit("boom-infer")]
    toy.gate.set()
    for future in doomed:
        with pytest.raises(ServingFailed, match="inference failed on a batch of 2: RuntimeError: toy: boom"):
            future.result(WAIT)
    assert batcher.submit(5).result(WAIT) == 10
    assert [r.failed for r in batcher.records()] == [False, True, False]
    batcher.close()


def test_wrong_output_count_fails_the_batch_with_the_fix():
    batcher = Batcher(lambda xs: xs[:-1], max_batch_size=2, max_wait_ms=600_000, name="lossy")
    futures = [batcher.submit(1), batcher.submit(2)]
    for future in futures:
        with pytest.raises(ServingFailed, match="returned 1 outputs for 2 inputs"):
            future.result(WAIT)
    batcher.close()


def test_closed_batcher_refuses_new_items_and_finishes_queued_ones():
    toy = Toy(open_gate=False)
    batcher = busy_batcher(toy, batch_size=4, max_wait_ms=1)
    queued = batcher.submit(7)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    toy.gate.set()
    closer.join(WAIT)
    assert queued.result(WAIT) == 14
    with pytest.raises(ServingFailed, match="closed"):
        batcher.submit(1)


# --- the runtime: preprocess and postprocess failures stay with their item ---


@pytest.fixture
def toy_runtime():
    toy = Toy(open_gate=False)
    mlservices.register("toy")(lambda: toy.serving(batch_size=8, batch_timeout_ms=1))
    runtime = Runtime({"toy": {}}, device="cpu")
    yield toy, runtime
    runtime.close()
    mlservices.registry.unregister("toy")


def run_in_threads(runtime: Runtime, inputs: list) -> list:
    outcomes: list = [None] * len(inputs)

    def call(i):
        try:
            outcomes[i] = runtime.batched_run("toy", inputs[i])
        except Exception as exc:  # recorded, then checked
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    return threads, outcomes


def test_bad_items_fail_alone_in_a_batch_of_4(toy_runtime):
    toy, runtime = toy_runtime
    runtime.serving("toy")  # loaded; the gate still closed
    blocker_threads, _ = run_in_threads(runtime, [100])
    assert toy.started.get(timeout=WAIT) == [100]
    threads, outcomes = run_in_threads(runtime, [1, "boom-pre", "boom-post", 4])
    # 3 items reach the batcher (boom-pre fails before it); wait until they are queued.
    from tests.live_server import wait_until

    wait_until(lambda: runtime.batcher("toy").pending() == 3, timeout=WAIT, what="3 queued items")
    toy.gate.set()
    for t in [*blocker_threads, *threads]:
        t.join(WAIT)
    assert outcomes[0] == {"input": 1, "output": 2}
    assert isinstance(outcomes[1], InvalidInput) and "boom in preprocess" in str(outcomes[1])
    assert isinstance(outcomes[2], ServingFailed) and "postprocess failed: ValueError" in str(outcomes[2])
    assert outcomes[3] == {"input": 4, "output": 8}
    assert [r.size for r in runtime.batcher("toy").records()] == [1, 3]


def test_concurrent_first_calls_load_the_serving_once(toy_runtime):
    toy, runtime = toy_runtime
    toy.gate.set()
    threads, outcomes = run_in_threads(runtime, list(range(8)))
    for t in threads:
        t.join(WAIT)
    assert outcomes == [{"input": i, "output": 2 * i} for i in range(8)]
    assert toy.loads == 1


async def test_abatched_run_shares_the_batcher(toy_runtime):
    toy, runtime = toy_runtime
    toy.gate.set()
    assert await runtime.abatched_run("toy", 21) == {"input": 21, "output": 42}
    assert runtime.batcher("toy").records()[-1].size == 1


def test_a_run_that_times_out_while_queued_never_reaches_the_model(toy_runtime):
    toy, runtime = toy_runtime
    runtime.serving("toy")
    blockers, _ = run_in_threads(runtime, [100])
    assert toy.started.get(timeout=WAIT) == [100]
    with pytest.raises(TimeoutError):
        runtime.batched_run("toy", 1, timeout=0.01)  # the batcher is busy with 100
    toy.gate.set()
    for t in blockers:
        t.join(WAIT)
    assert runtime.batched_run("toy", 2) == {"input": 2, "output": 4}
    assert [toy.started.get(timeout=WAIT)] == [[2]]  # 1 was dropped, not run


def test_wrap_infer_sees_every_batch():
    toy = Toy()
    seen = []
    mlservices.register("toy")(lambda: toy.serving(batch_size=4, batch_timeout_ms=1))

    def wrap(name, infer):
        def counted(items):
            seen.append((name, len(items)))
            return infer(items)

        return counted

    runtime = Runtime({"toy": {}}, device="cpu", wrap_infer=wrap)
    try:
        assert runtime.batched_run("toy", 3) == {"input": 3, "output": 6}
        assert seen == [("toy", 1)]
    finally:
        runtime.close()
        mlservices.registry.unregister("toy")


def test_parallel_batches_run_at_once():
    toy = Toy(open_gate=False)
    batcher = Batcher(partial(toy.inference, toy), max_batch_size=2, max_wait_ms=600_000, name="toy", parallel=2)
    futures = [batcher.submit(i) for i in (1, 2, 3, 4)]
    # Both threads are inside inference, each on its own full batch, before the gate opens.
    assert sorted(map(sorted, (toy.started.get(timeout=WAIT), toy.started.get(timeout=WAIT)))) == [[1, 2], [3, 4]]
    toy.gate.set()
    assert [f.result(WAIT) for f in futures] == [2, 4, 6, 8]
    assert sizes(batcher) == [2, 2]
    batcher.close()
    assert not any(t.is_alive() for t in batcher._threads)


def test_parallel_batches_is_a_serving_option():
    mlservices.register("toy-parallel")(lambda: Toy().serving("toy-parallel"))
    try:
        assert mlservices.build("toy-parallel", parallel_batches=2).parallel_batches == 2
        with pytest.raises(InvalidInput):
            mlservices.build("toy-parallel", parallel_batches=0)
        runtime = Runtime({"toy-parallel": {"parallel_batches": 2}})
        assert runtime.batcher("toy-parallel").parallel == 2
        assert runtime.batched_run("toy-parallel", 21) == {"input": 21, "output": 42}
        runtime.close()
    finally:
        mlservices.registry.unregister("toy-parallel")


# --- fairness across owners and the bound on what waits ---


def turnstile_batcher(batch_size: int, **options) -> tuple[Toy, Turnstile, Batcher]:
    """A batcher busy on 'blocker' behind a closed turnstile: ``release(n)`` lets n batches through.

    Everything a test queues is queued before it releases, so each batch's
    contents are fixed however short the wait (1 ms) for company is."""
    toy = Toy(open_gate=False)
    toy.gate = turnstile = Turnstile()
    batcher = Batcher(
        partial(toy.inference, toy), max_batch_size=batch_size, max_wait_ms=1, name="toy", **options
    )
    batcher.submit("blocker")
    assert toy.started.get(timeout=WAIT) == ["blocker"]
    return toy, turnstile, batcher


def test_owner_a_800_then_owner_b_1_takes_b_in_the_next_batch():
    toy, turnstile, batcher = turnstile_batcher(batch_size=8)
    a = [batcher.submit(i, owner="a") for i in range(800)]
    b = batcher.submit(1000, owner="b")
    turnstile.release(2)  # the blocker, then exactly one more batch
    assert toy.started.get(timeout=WAIT) == [0, 1000, 1, 2, 3, 4, 5, 6]  # b's turn comes second
    assert b.result(WAIT) == 2000
    assert [f.result(WAIT) for f in a[:7]] == [0, 2, 4, 6, 8, 10, 12]
    assert toy.started.get(timeout=WAIT) == list(range(7, 15))  # held at the turnstile
    assert not a[7].done() and batcher.pending() == 785
    turnstile.release(100)  # the held batch and 99 more: 785 = 98 x 8 + 1
    assert a[-1].result(WAIT) == 1598
    assert sizes(batcher) == [1] + [8] * 100 + [1]  # the blocker, then 801 items
    batcher.close()


def test_round_robin_3_owners_fill_a_batch_of_6_two_each():
    toy, turnstile, batcher = turnstile_batcher(batch_size=6)
    for owner in "abc":
        for i in range(4):
            batcher.submit(f"{owner}{i}", owner=owner)
    turnstile.release(3)
    assert toy.started.get(timeout=WAIT) == ["a0", "b0", "c0", "a1", "b1", "c1"]
    assert toy.started.get(timeout=WAIT) == ["a2", "b2", "c2", "a3", "b3", "c3"]
    batcher.close()


def test_the_turn_order_carries_over_3_owners_in_batches_of_4():
    # a, b, c, a | b, c, a, b | c: nobody gets the odd place twice in a row
    toy, turnstile, batcher = turnstile_batcher(batch_size=4)
    for owner in "abc":
        for i in range(3):
            batcher.submit(f"{owner}{i}", owner=owner)
    turnstile.release(4)
    assert toy.started.get(timeout=WAIT) == ["a0", "b0", "c0", "a1"]
    assert toy.started.get(timeout=WAIT) == ["b1", "c1", "a2", "b2"]
    assert toy.started.get(timeout=WAIT) == ["c2"]
    batcher.close()


def test_owner_none_is_one_owner_like_any_other_2_plus_2_in_a_batch_of_4():
    toy, turnstile, batcher = turnstile_batcher(batch_size=4)
    for i in range(3):
        batcher.submit(i)  # owner None
    for i in range(3):
        batcher.submit(10 + i, owner="a")
    turnstile.release(3)
    assert toy.started.get(timeout=WAIT) == [0, 10, 1, 11]
    assert toy.started.get(timeout=WAIT) == [2, 12]
    batcher.close()


def test_owners_never_mix_keys_2_owners_2_keys_make_2_batches():
    toy, turnstile, batcher = turnstile_batcher(batch_size=8)
    for owner in "ab":
        batcher.submit(f"{owner}16", key=16, owner=owner)
        batcher.submit(f"{owner}32", key=32, owner=owner)
    turnstile.release(3)  # the blocker and one batch per key
    batches = [toy.started.get(timeout=WAIT) for _ in range(2)]
    assert sorted(batches) == [["a16", "b16"], ["a32", "b32"]]
    batcher.close()


def test_3_queued_1_cancelled_is_a_batch_of_2():
    toy, turnstile, batcher = turnstile_batcher(batch_size=3)
    futures = [batcher.submit(i, owner="a") for i in (1, 2, 3)]
    assert futures[1].cancel()
    turnstile.release(2)
    assert [futures[0].result(WAIT), futures[2].result(WAIT)] == [2, 6]
    assert toy.started.get(timeout=WAIT) == [1, 3]
    assert sizes(batcher) == [1, 2]
    batcher.close()


def test_max_queued_4_refuses_the_5th_with_retry_after():
    toy, turnstile, batcher = turnstile_batcher(batch_size=8, max_queued=4)
    queued = [batcher.submit(i, owner="a") for i in range(4)]  # the blocker is in inference, not queued
    with pytest.raises(Overloaded) as refused:
        batcher.submit(4, owner="b")
    assert refused.value.code == "overloaded"
    assert refused.value.retry_after == 1  # no batch has finished yet: nothing to learn the speed from
    assert str(refused.value) == (
        "toy is overloaded: 4 items are queued, max_queued=4, no room for 1 more item; try again in 1 s"
    )
    assert batcher.pending() == 4
    turnstile.release(3)  # the blocker, 0..3, then 4
    assert [f.result(WAIT) for f in queued] == [0, 2, 4, 6]
    assert batcher.submit(4, owner="b").result(WAIT) == 8  # room again
    batcher.close()


def test_max_queued_2_with_1_cancelled_takes_1_more():
    toy, turnstile, batcher = turnstile_batcher(batch_size=8, max_queued=2)
    first, second = batcher.submit(1), batcher.submit(2)
    assert second.cancel()
    third = batcher.submit(3)  # the cancelled item gave its place back
    with pytest.raises(Overloaded):
        batcher.submit(4)
    turnstile.release(2)  # the blocker, then 1 and 3
    assert (first.result(WAIT), third.result(WAIT)) == (2, 6)
    batcher.close()


def test_submit_many_3_into_2_free_places_queues_none():
    toy, turnstile, batcher = turnstile_batcher(batch_size=8, max_queued=4)
    batcher.submit_many([(1, None), (2, None)], owner="a")
    with pytest.raises(Overloaded, match="no room for 3 more items .one input, all or none.; try again in 1 s"):
        batcher.submit_many([(3, None), (4, None), (5, None)], owner="b")
    assert batcher.pending() == 2
    assert len(batcher.submit_many([(3, None), (4, None)], owner="b")) == 2
    turnstile.release(2)  # the blocker, then 1, 2, 3, 4
    batcher.close()


def test_an_input_of_5_items_never_fits_max_queued_4_and_is_invalid():
    batcher = Batcher(lambda xs: xs, max_batch_size=8, max_wait_ms=1, name="toy", max_queued=4)
    with pytest.raises(InvalidInput, match="makes 5 batch items and at most max_queued=4 can wait"):
        batcher.submit_many([(i, None) for i in range(5)])
    assert batcher.pending() == 0
    batcher.close()


def test_retry_after_25_items_at_100_ms_each_is_3_s_on_1_thread_and_2_s_on_2():
    recent = [BatchRecord(size=4, key=None, wait_ms=0, inference_ms=400, failed=False)] * 2
    assert retry_after(25, recent) == 3  # 2.5 s, rounded up
    assert retry_after(25, recent, parallel=2) == 2  # 1.25 s, rounded up
    assert retry_after(1, recent) == 1  # 0.1 s: never less than 1
    assert retry_after(25, []) == 1  # nothing measured yet


def test_retry_after_is_worked_out_from_the_recorded_batches():
    toy, turnstile, batcher = turnstile_batcher(batch_size=1, max_queued=1)
    turnstile.release(1)
    batcher.submit(1)
    assert toy.started.get(timeout=WAIT) == [1]  # held in inference; the blocker's batch is recorded
    batcher.submit(2)
    with pytest.raises(Overloaded) as refused:
        batcher.submit(3)
    assert len(batcher.records()) == 1
    assert refused.value.retry_after == retry_after(1, batcher.records())
    assert str(refused.value).endswith(f"try again in {refused.value.retry_after} s")
    turnstile.release(2)  # 1 and 2, a batch each
    batcher.close()


@pytest.fixture
def windows_runtime():
    """``make(max_queued)``: a runtime of the ``Windows`` toy (batches of 4, gate closed)."""
    toy = Windows(open_gate=False)
    runtimes = []

    def make(max_queued: int) -> Runtime:
        mlservices.register("windows")(lambda: toy.serving(batch_size=4, batch_timeout_ms=1, max_queued=max_queued))
        runtimes.append(Runtime({"windows": {}}, device="cpu"))
        runtimes[-1].serving("windows")
        return runtimes[-1]

    yield toy, make
    toy.gate.set()
    for runtime in runtimes:
        runtime.close()
    mlservices.registry.unregister("windows")


def run_windows(runtime: Runtime, inputs: list[tuple[dict, str | None]]) -> tuple[list[threading.Thread], list]:
    """``batched_run`` of each (input, owner) in its own thread; outcomes filled in as they finish."""
    outcomes: list = [None] * len(inputs)

    def call(i):
        input, owner = inputs[i]
        try:
            outcomes[i] = runtime.batched_run("windows", input, owner=owner)
        except Exception as exc:  # recorded, then checked
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    return threads, outcomes


def test_a_fanned_out_input_that_would_not_fit_is_refused_whole(windows_runtime):
    from tests.live_server import wait_until

    toy, make = windows_runtime
    runtime = make(max_queued=4)
    blocker, _ = run_windows(runtime, [({"windows": 1, "value": 100}, None)])
    assert toy.started.get(timeout=WAIT) == [100]
    queued, outcomes = run_windows(runtime, [({"windows": 2, "value": 0}, "a")])
    wait_until(lambda: runtime.batcher("windows").pending() == 2, timeout=WAIT, what="2 queued windows")
    with pytest.raises(Overloaded, match="2 items are queued, max_queued=4, no room for 3 more items"):
        runtime.batched_run("windows", {"windows": 3, "value": 10}, owner="b")
    assert runtime.batcher("windows").pending() == 2  # none of the 3 was queued
    toy.gate.set()
    for t in [*blocker, *queued]:
        t.join(WAIT)
    assert outcomes == [{"outputs": [0, 2], "total": 2}]
    assert runtime.batched_run("windows", {"windows": 3, "value": 10}, owner="b") == {
        "outputs": [20, 22, 24],
        "total": 66,
    }


def test_runtime_owner_a_5_windows_and_b_1_make_batches_a_b_a_a_then_a_a(windows_runtime):
    from tests.live_server import wait_until

    toy, make = windows_runtime
    runtime = make(max_queued=10)
    blocker, _ = run_windows(runtime, [({"windows": 1, "value": 100}, None)])
    assert toy.started.get(timeout=WAIT) == [100]
    a, a_out = run_windows(runtime, [({"windows": 5, "value": 0}, "a")])
    wait_until(lambda: runtime.batcher("windows").pending() == 5, timeout=WAIT, what="a's 5 windows")
    b, b_out = run_windows(runtime, [({"windows": 1, "value": 50}, "b")])
    wait_until(lambda: runtime.batcher("windows").pending() == 6, timeout=WAIT, what="b's window")
    toy.gate.set()
    for t in [*blocker, *a, *b]:
        t.join(WAIT)
    assert toy.started.get(timeout=WAIT) == [0, 50, 1, 2]
    assert toy.started.get(timeout=WAIT) == [3, 4]
    assert b_out == [{"outputs": [100], "total": 100}]
    assert a_out == [{"outputs": [0, 2, 4, 6, 8], "total": 20}]


async def test_abatched_run_refuses_5_windows_over_max_queued_4_and_runs_4(windows_runtime):
    toy, make = windows_runtime
    runtime = make(max_queued=4)
    with pytest.raises(InvalidInput, match="makes 5 batch items and at most max_queued=4 can wait"):
        await runtime.abatched_run("windows", {"windows": 5, "value": 0}, owner="a")
    assert runtime.batcher("windows").pending() == 0
    toy.gate.set()
    assert await runtime.abatched_run("windows", {"windows": 4, "value": 0}, owner="a") == {
        "outputs": [0, 2, 4, 6],
        "total": 12,
    }
    assert runtime.batcher("windows").records()[-1].size == 4


def test_max_queued_is_a_serving_option():
    mlservices.register("toy-bounded")(lambda: Toy().serving("toy-bounded"))
    try:
        assert mlservices.build("toy-bounded").max_queued == 1000
        assert mlservices.build("toy-bounded", max_queued=2).max_queued == 2
        with pytest.raises(InvalidInput, match="max_queued=0; use an integer of at least 1"):
            mlservices.build("toy-bounded", max_queued=0)
        runtime = Runtime({"toy-bounded": {"max_queued": 2}})
        assert runtime.batcher("toy-bounded").max_queued == 2
        runtime.close()
    finally:
        mlservices.registry.unregister("toy-bounded")


# --- the adaptive strategy: threads shared out batch by batch (Batcher(threads=...)) ---


def test_threads_for_2_threads_alone_is_2_and_beside_another_batch_is_1():
    assert threads_for(2, 2, running=0, used=0, waiting=0) == 2  # alone: all of them
    assert threads_for(2, 2, running=0, used=0, waiting=1) == 1  # another batch is ready behind it
    assert threads_for(2, 2, running=0, used=0, waiting=9) == 1  # at most 2 run together
    assert threads_for(2, 2, running=1, used=1, waiting=0) == 1  # another runs on the other thread


def test_threads_for_4_threads_on_2_batches_is_2_each_and_16_alone_beside_8_is_8():
    assert threads_for(4, 2, running=0, used=0, waiting=3) == 2
    assert threads_for(4, 2, running=1, used=2, waiting=0) == 2
    assert threads_for(16, 16, running=1, used=8, waiting=0) == 8  # what the running one leaves
    assert threads_for(16, 16, running=0, used=0, waiting=3) == 4


def test_threads_for_1_thread_and_2_parallel_batches_is_1_each():
    # ``threads: 1, parallel_batches: 2``: two batches at once, one thread each, as configured.
    assert threads_for(1, 2, running=0, used=0, waiting=0) == 1
    assert threads_for(1, 2, running=1, used=1, waiting=0) == 1


class Threaded(Toy):
    """The toy, also recording the threads each batch was given (``batch_threads()``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.threads: list[tuple[list, int | None]] = []

    def inference(self, model, items: list) -> list:
        self.threads.append((list(items), batch_threads()))
        return super().inference(model, items)


def sharing_batcher(toy: Toy, batch_size: int, threads: int, **options) -> Batcher:
    return Batcher(
        partial(toy.inference, toy), max_batch_size=batch_size, max_wait_ms=1, name="toy", threads=threads, **options
    )


def test_one_batch_alone_gets_2_threads():
    toy = Threaded()
    batcher = sharing_batcher(toy, batch_size=4, threads=2)
    assert batcher.parallel == 2  # parallel defaults to the threads shared
    assert batcher.submit(21).result(WAIT) == 42
    assert toy.threads == [([21], 2)]
    assert batcher.records()[-1].threads == 2
    assert batch_threads() is None  # only inside a batch's inference
    batcher.close()


def test_two_ready_batches_get_1_thread_each_and_run_at_once():
    toy = Threaded(open_gate=False)
    toy.gate = turnstile = Turnstile()
    batcher = sharing_batcher(toy, batch_size=2, threads=2)
    batcher.submit("blocker")
    assert toy.started.get(timeout=WAIT) == ["blocker"]  # alone: it holds both threads
    futures = [batcher.submit(i) for i in (1, 2, 3, 4)]
    assert batcher.pending() == 4  # no batch starts beside it: no thread is free
    turnstile.release(1)  # the blocker ends; 2 batches are ready
    batches = sorted(sorted(toy.started.get(timeout=WAIT)) for _ in range(2))  # both inside inference at once
    assert batches == [[1, 2], [3, 4]]
    turnstile.release(2)
    assert [f.result(WAIT) for f in futures] == [2, 4, 6, 8]
    assert toy.threads[0] == (["blocker"], 2)
    assert sorted((sorted(items), n) for items, n in toy.threads[1:]) == [([1, 2], 1), ([3, 4], 1)]
    assert sorted(r.threads for r in batcher.records()) == [1, 1, 2]
    batcher.close()


def test_a_batch_that_starts_beside_a_running_one_gets_the_1_thread_left():
    toy = Threaded(open_gate=False)
    toy.gate = turnstile = Turnstile()
    batcher = sharing_batcher(toy, batch_size=2, threads=2)
    batcher.submit("blocker")
    assert toy.started.get(timeout=WAIT) == ["blocker"]
    first = [batcher.submit(i) for i in (1, 2, 3, 4)]
    turnstile.release(1)  # the blocker ends; [1, 2] and [3, 4] start on 1 thread each
    for _ in range(2):
        toy.started.get(timeout=WAIT)
    turnstile.release(1)  # one of them ends; the other still runs
    late = batcher.submit(5)  # alone in the queue, beside a running batch
    assert toy.started.get(timeout=WAIT) == [5]
    turnstile.set()
    assert late.result(WAIT) == 10 and [f.result(WAIT) for f in first] == [2, 4, 6, 8]
    assert toy.threads[-1] == ([5], 1)
    assert batcher.submit(6).result(WAIT) == 12  # all done: alone again, all threads
    assert toy.threads[-1] == ([6], 2)
    batcher.close()


def test_a_cancelled_batch_and_a_failed_batch_give_their_threads_back():
    toy = Threaded(open_gate=False)
    toy.gate = turnstile = Turnstile()
    batcher = sharing_batcher(toy, batch_size=2, threads=2)
    batcher.submit("blocker")
    assert toy.started.get(timeout=WAIT) == ["blocker"]
    doomed = batcher.submit(1)
    assert doomed.cancel()
    failing = batcher.submit("boom-infer")
    turnstile.set()
    with pytest.raises(ServingFailed, match="boom"):
        failing.result(WAIT)
    assert batcher.submit(7).result(WAIT) == 14  # every thread is free again: it runs, alone, on 2
    assert toy.threads[-1] == ([7], 2)
    batcher.close()


def test_without_threads_batches_keep_the_model_settings():
    toy = Threaded()
    batcher = Batcher(partial(toy.inference, toy), max_batch_size=2, max_wait_ms=1, name="toy")
    assert batcher.parallel == 1
    assert batcher.submit(1).result(WAIT) == 2
    assert toy.threads == [([1], None)] and batcher.records()[-1].threads is None
    batcher.close()


def test_a_serving_with_set_threads_is_told_2_then_1_by_the_batcher():
    toy = Toy(open_gate=False)
    toy.gate = turnstile = Turnstile()
    told: list[int] = []
    loaded = toy.serving(batch_size=2, threads=2, set_threads=lambda model, n: told.append(n)).setup("cpu")
    assert loaded.serving.parallel_batches is None and loaded.batch_threads == 2
    batcher = Batcher(loaded.infer, max_batch_size=2, max_wait_ms=1, name="toy", threads=loaded.batch_threads)
    assert batcher.parallel == 2
    batcher.submit("blocker")
    assert toy.started.get(timeout=WAIT) == ["blocker"]
    futures = [batcher.submit(i) for i in (1, 2, 3, 4)]
    turnstile.release(1)  # the blocker ends; [1, 2] and [3, 4] start together
    for _ in range(2):
        toy.started.get(timeout=WAIT)
    turnstile.set()
    assert [f.result(WAIT) for f in futures] == [2, 4, 6, 8]
    assert told == [2, 1, 1]
    batcher.close()


def test_threads_are_shared_only_on_a_cpu_and_only_for_a_serving_that_takes_them():
    toy = Toy()
    sharing = toy.serving(set_threads=lambda model, n: None)
    assert LoadedServing(sharing, toy, "cpu").batch_threads == usable_cpus()  # threads=None: every CPU
    assert LoadedServing(sharing, toy, "cuda").batch_threads is None
    plain = toy.serving()
    assert plain.parallel_batches == 1  # nothing to share out: one batch at a time, as before
    assert LoadedServing(plain, toy, "cpu").batch_threads is None
    assert toy.serving(parallel_batches=3, set_threads=lambda model, n: None).parallel_batches == 3
    with pytest.raises(InvalidInput, match="threads=0; use an integer of at least 1"):
        toy.serving(threads=0)
    with pytest.raises(ValueError, match="threads=0; use 1 or more"):
        Batcher(lambda xs: xs, max_batch_size=1, max_wait_ms=0, threads=0)


def test_5_requests_alone_one_after_another_run_on_the_loop_that_ran_the_last():
    # Its OpenMP threads are the ones still awake; the other loop leaves it the batch.
    loops: list[str] = []

    def infer(items):
        loops.append(threading.current_thread().name)
        return [x * 2 for x in items]

    batcher = Batcher(infer, max_batch_size=4, max_wait_ms=0, name="toy", threads=2)
    assert [batcher.submit(i).result(WAIT) for i in range(5)] == [0, 2, 4, 6, 8]
    assert len(loops) == 5 and len(set(loops)) == 1, loops
    assert [r.threads for r in batcher.records()] == [2] * 5
    batcher.close()


def test_the_runtime_shares_2_threads_with_a_serving_that_takes_them():
    told: list[int] = []
    toy = Toy()
    mlservices.register("toy-threads")(
        lambda: toy.serving("toy-threads", threads=2, set_threads=lambda model, n: told.append(n))
    )
    runtime = Runtime({"toy-threads": {}}, device="cpu")
    try:
        batcher = runtime.batcher("toy-threads")
        assert (batcher.parallel, batcher.threads) == (2, 2)
        assert runtime.batched_run("toy-threads", 21) == {"input": 21, "output": 42}
        assert told == [2] and batcher.records()[-1].threads == 2  # alone: both threads
    finally:
        runtime.close()
        mlservices.registry.unregister("toy-threads")
