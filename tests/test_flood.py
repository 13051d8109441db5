"""One client floods; everyone else is still served (Hardening, finding 1).

A socket pipelining hundreds of predictions keeps one running and one
waiting (latest wins); the rest are answered ``superseded`` at once, so
another visitor's single prediction goes into the next batch, not behind
hundreds. A session posting hundreds of jobs gets 429 past its cap, and
another session's job is accepted and runs. The toy serving's gate is a
``Turnstile``: batch composition is arithmetic, not timing.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from django.test import Client

import mlservices
from mlservices.testing import Toy, Turnstile
from tests.test_files_and_streams import TIMEOUT, connected, finished, new_session

pytestmark = pytest.mark.django_db(transaction=True)
FLOOD = 300


@pytest.fixture
def toy(settings, tmp_path):
    settings.MLSERVICES_MODE = "inprocess"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "webapp.channel_layer.InProcessChannelLayer"}}
    settings.PREDICTIONS_PER_SOCKET, settings.PREDICTIONS_PER_OWNER = 1, 4
    toy = Toy()
    toy.gate = Turnstile()
    mlservices.register("toy")(lambda: toy.serving("toy", batch_size=8, batch_timeout_ms=0))
    mlservices.configure({"toy": {}}, device="cpu")
    yield toy
    toy.gate.set()
    mlservices.configure({})
    mlservices.registry.unregister("toy")


async def test_300_pipelined_predictions_leave_another_visitors_one_in_the_next_batch(toy):
    flooder, _ = await connected(await new_session())
    other, _ = await connected(await new_session())
    for n in range(FLOOD):
        await flooder.send_json_to({"type": "predict", "serving": "toy", "input": n, "request_id": n})
    # Prediction 0 runs (held at the gate); 1..298 are replaced one by one; 299 waits its turn.
    superseded = [await flooder.receive_json_from(timeout=TIMEOUT) for _ in range(FLOOD - 2)]
    assert [(m["code"], m["request_id"]) for m in superseded] == [("superseded", n) for n in range(1, FLOOD - 1)]
    first_batch = await asyncio.to_thread(toy.started.get, True, TIMEOUT)
    assert first_batch == [0]

    await other.send_json_to({"type": "predict", "serving": "toy", "input": 7000, "request_id": "mine"})
    runtime = mlservices.runtime.default()
    await asyncio.to_thread(_wait_for, lambda: runtime.batcher("toy").pending() == 1)
    toy.gate.set()
    answer = await other.receive_json_from(timeout=TIMEOUT)
    assert (answer["type"], answer["request_id"], answer["result"]) == (
        "prediction", "mine", {"input": 7000, "output": 14000})
    batches = [r.size for r in runtime.batcher("toy").records()]
    flood_answers = [await flooder.receive_json_from(timeout=TIMEOUT) for _ in range(2)]
    assert [(m["type"], m["request_id"]) for m in flood_answers] == [("prediction", 0), ("prediction", FLOOD - 1)]
    # The visitor's item ran in the batch right after the one already running when it arrived.
    assert batches[:2] == [1, 1] and len(runtime.batcher("toy").records()) <= 3
    assert await flooder.receive_nothing(timeout=0.2)
    await flooder.disconnect()
    await other.disconnect()


def _wait_for(predicate):
    from tests.live_server import wait_until

    return wait_until(predicate, timeout=TIMEOUT, what="the visitor's item in the batcher")


async def test_an_owner_past_its_prediction_cap_is_told_so_and_others_are_not(toy, settings):
    """Three pages of one owner predict at once with a cap of 2: one of them (whichever the
    server takes last) is refused; a stranger is served all the same."""
    settings.PREDICTIONS_PER_OWNER = 2
    session = await new_session()
    pages = [(await connected(session))[0] for _ in range(3)]
    for i, page in enumerate(pages):
        await page.send_json_to({"type": "predict", "serving": "toy", "input": i, "request_id": i})
    stranger, _ = await connected(await new_session())
    await stranger.send_json_to({"type": "predict", "serving": "toy", "input": 5, "request_id": "s"})
    toy.gate.set()
    assert (await stranger.receive_json_from(timeout=TIMEOUT))["result"] == {"input": 5, "output": 10}
    answers = [await page.receive_json_from(timeout=TIMEOUT) for page in pages]
    refused = [a for a in answers if a["type"] == "error"]
    assert [a["code"] for a in refused] == ["too_many_predictions"]
    assert sorted(a["result"]["input"] for a in answers if a["type"] == "prediction") == sorted(
        {0, 1, 2} - {refused[0]["request_id"]})
    for page in [*pages, stranger]:
        await page.disconnect()


async def test_a_prediction_nobody_answers_times_out_and_the_waiting_one_runs(toy, settings):
    settings.PREDICTION_TIMEOUT_S = 0.3
    page, _ = await connected(await new_session())
    await page.send_json_to({"type": "predict", "serving": "toy", "input": 1, "request_id": 1})
    await page.send_json_to({"type": "predict", "serving": "toy", "input": 2, "request_id": 2})
    timed_out = await page.receive_json_from(timeout=TIMEOUT)  # the gate holds 1 past its timeout
    assert (timed_out["code"], timed_out["request_id"]) == ("timeout", 1)
    toy.gate.set()
    answers = {m["request_id"]: m for m in [await page.receive_json_from(timeout=TIMEOUT) for _ in range(1)]}
    assert answers[2]["result"] == {"input": 2, "output": 4}  # 1's late answer is not shown after its timeout
    assert await page.receive_nothing(timeout=0.3)
    await page.disconnect()


def test_a_session_posting_100_jobs_gets_429_past_20_and_another_session_is_served(toy, settings):
    settings.JOBS_MAX_ACTIVE_PER_OWNER = 20
    flooder = Client()
    statuses = [
        flooder.post("/api/jobs", data=json.dumps({"serving": "toy", "input": n}), content_type="application/json")
        for n in range(100)
    ]
    codes = [r.status_code for r in statuses]
    assert codes.count(201) == 20 and codes.count(429) == 80, codes
    assert all(r["Retry-After"] for r in statuses if r.status_code == 429)
    other = Client()
    created = other.post("/api/jobs", data=json.dumps({"serving": "toy", "input": 21}), content_type="application/json")
    assert created.status_code == 201
    toy.gate.set()
    assert finished(other, created.json()["id"])["result"] == {"input": 21, "output": 42}
