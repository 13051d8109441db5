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
from mlservices import Batcher, InvalidInput, Runtime, ServingFailed
from mlservices.testing import Toy

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
