"""The websocket, through the real ASGI application (origin check, sessions)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.db import SessionStore

import mlservices
from webapp.asgi import application
from webapp.jobs.execution import execute_job
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 30


@pytest.fixture(autouse=True)
def inprocess(settings, tiny_sentiment_model):
    settings.MLSERVICES_MODE = "inprocess"
    settings.MLSERVICES = {"sentiment": {"model": str(tiny_sentiment_model), "batch_timeout_ms": 1}}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "webapp.channel_layer.InProcessChannelLayer"}}
    mlservices.configure(settings.MLSERVICES, device="cpu")
    yield
    mlservices.configure({})


@sync_to_async
def new_session() -> str:
    session = SessionStore()
    session.create()
    return session.session_key


def socket(session_key: str | None = None, origin: bytes = b"http://127.0.0.1:8000") -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"127.0.0.1:8000")]
    if session_key:
        headers.append((b"cookie", f"sessionid={session_key}".encode()))
    return WebsocketCommunicator(application, "/ws/jobs", headers=headers)


async def connected(session_key: str | None = None) -> tuple[WebsocketCommunicator, dict]:
    communicator = socket(session_key)
    ok, _ = await communicator.connect(timeout=TIMEOUT)
    assert ok
    return communicator, await communicator.receive_json_from(timeout=TIMEOUT)


async def test_foreign_origin_is_refused():
    communicator = socket(origin=b"http://evil.example")
    ok, _ = await communicator.connect(timeout=TIMEOUT)
    assert not ok


async def test_typing_gets_a_prediction_with_the_model_version():
    communicator, snapshot = await connected(await new_session())
    assert snapshot == {"type": "jobs", "jobs": []}
    await communicator.send_json_to(
        {"type": "predict", "serving": "sentiment", "input": {"text": "i love it"}, "request_id": 3}
    )
    message = await communicator.receive_json_from(timeout=TIMEOUT)
    assert message["type"] == "prediction" and message["request_id"] == 3
    assert message["result"]["label"] in ("NEGATIVE", "POSITIVE")
    assert "@sha256:" in message["result"]["model"]
    await communicator.disconnect()


@pytest.mark.parametrize(
    "message, code, text",
    [
        ({"type": "predict", "serving": "sentiment", "input": {"text": ""}}, "invalid_input", "empty"),
        ({"type": "predict", "serving": "nope", "input": {"text": "x"}}, "unknown_serving", "known servings"),
        ({"type": "predict", "serving": "sentiment", "input": {"text": "x" * 30_000}}, "invalid_input", "limit"),
        ({"type": "shout"}, "invalid_message", "predict"),
    ],
)
async def test_bad_messages_get_a_plain_error(message, code, text):
    communicator, _ = await connected(await new_session())
    await communicator.send_json_to({**message, "request_id": 1})
    reply = await communicator.receive_json_from(timeout=TIMEOUT)
    assert reply["type"] == "error" and reply["code"] == code and text in reply["message"]
    await communicator.disconnect()


async def test_missing_model_says_how_to_install(settings, tmp_path):
    settings.MLSERVICES = {"sentiment": {"model": str(tmp_path / "absent")}}
    mlservices.configure(settings.MLSERVICES, device="cpu")
    communicator, _ = await connected(await new_session())
    await communicator.send_json_to({"type": "predict", "serving": "sentiment", "input": {"text": "hi"}})
    reply = await communicator.receive_json_from(timeout=TIMEOUT)
    assert reply["code"] == "model_not_installed"
    assert "python -m mlservices download sentiment" in reply["message"] and "Traceback" not in reply["message"]
    await communicator.disconnect()


@sync_to_async
def create_job(session_key: str, text: str) -> Job:
    return Job.objects.create(session_key=session_key, serving="sentiment", input={"text": text}, input_summary=text)


async def test_job_updates_reach_their_owner_only():
    mine, theirs = await new_session(), await new_session()
    my_socket, _ = await connected(mine)
    their_socket, _ = await connected(theirs)
    job = await create_job(mine, "i love it")
    await asyncio.wait_for(sync_to_async(execute_job)(job.pk), TIMEOUT)
    running = await my_socket.receive_json_from(timeout=TIMEOUT)
    done = await my_socket.receive_json_from(timeout=TIMEOUT)
    assert (running["type"], running["job"]["status"]) == ("job", "running")
    assert done["job"]["id"] == str(job.pk) and done["job"]["status"] == "done"
    assert done["job"]["result"]["label"] in ("NEGATIVE", "POSITIVE")
    assert await their_socket.receive_nothing(timeout=0.5)
    await my_socket.disconnect()
    await their_socket.disconnect()


async def test_a_late_socket_gets_the_state_from_the_database():
    mine = await new_session()
    job = await create_job(mine, "finished while nobody watched")
    await sync_to_async(execute_job)(job.pk)
    communicator, snapshot = await connected(mine)
    assert [(j["id"], j["status"]) for j in snapshot["jobs"]] == [(str(job.pk), "done")]
    _, stranger = await connected(await new_session())
    assert stranger["jobs"] == []
    await communicator.disconnect()


async def test_a_redelivered_job_is_not_run_twice():
    mine = await new_session()
    job = await create_job(mine, "once")
    first = await sync_to_async(execute_job)(job.pk)
    again = await sync_to_async(execute_job)(job.pk)
    assert first.status == "done" and again is None
    assert (await sync_to_async(Job.objects.get)(pk=job.pk)).attempts == 1
