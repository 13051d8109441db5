"""Servings v2 in-process: files in and out, fan-out with streamed progress, one event path.

The toy servings of ``tests/worker_servings`` (``windows`` streams, ``files``
takes a file and returns one) run in this process, behind the real API and
the real websocket consumer; events reach the socket through the channel
layer exactly as a worker's would. Gates are ``Turnstile``s: a test lets N
batches through and holds the next, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from django.test import Client

import mlservices
from mlservices.testing import Files, Turnstile, Windows
from tests.live_server import wait_until
from webapp.asgi import application
from webapp.jobs.models import Job, JobFile, Upload

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 30
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56 + b"pixels"


@pytest.fixture
def toys(settings, tmp_path):
    """``windows`` and ``files`` registered in-process, with a turnstile gate on ``windows``."""
    settings.MLSERVICES_MODE = "inprocess"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "webapp.channel_layer.InProcessChannelLayer"}}
    windows, files = Windows(), Files()
    windows.gate = Turnstile()
    mlservices.register("windows")(lambda: windows.serving("windows", batch_size=1, batch_timeout_ms=0))
    mlservices.register("files")(lambda: files.serving("files", batch_size=4, batch_timeout_ms=0))
    mlservices.configure({"windows": {}, "files": {}}, device="cpu")
    yield windows
    windows.gate.set()
    mlservices.configure({})
    mlservices.registry.unregister("windows")
    mlservices.registry.unregister("files")


def finished(client: Client, job_id: str) -> dict:
    def done():
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in ("done", "failed") else None

    return wait_until(done, timeout=TIMEOUT, what=f"job {job_id} to finish")


def upload(client: Client, data: bytes, serving: str = "files", name: str = "photo.png"):
    return client.post("/api/uploads", data={"serving": serving, "file": named(data, name)})


def named(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


# --- Files in and out -----------------------------------------------------------


def test_a_multipart_job_stores_the_upload_and_its_artifact_for_the_owner_only(toys):
    client = Client()
    response = client.post("/api/jobs", data={"serving": "files", "flip": "true", "file": named(PNG, "me.png")})
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["input_file"]["name"] == "me.png" and created["input_file"]["content_type"] == "image/png"
    job = finished(client, created["id"])
    assert job["status"] == "done", job
    copy = job["result"]["copy"]
    assert copy == {"name": "copy.bin", "url": f"/api/jobs/{job['id']}/files/copy.bin",
                    "content_type": "application/octet-stream", "size": len(PNG)}
    assert job["files"] == [copy]
    assert b"".join(client.get(copy["url"]).streaming_content) == PNG[::-1]
    assert b"".join(client.get(job["input_file"]["url"]).streaming_content) == PNG

    stranger = Client()
    for url in (copy["url"], job["input_file"]["url"], f"/api/jobs/{job['id']}/files/nope"):
        refused = stranger.get(url)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert client.get(f"/api/jobs/{job['id']}/files/nope").status_code == 404

    stored = Upload.objects.get()
    assert "me.png" not in stored.file.name and stored.file.name.startswith("uploads/")
    assert Job.objects.get().input == {"file": str(stored.pk), "flip": True}


def test_upload_first_then_refer_to_it_by_id(toys):
    client = Client()
    response = upload(client, PNG)
    assert response.status_code == 201, response.content
    stored = response.json()
    assert (stored["format"], stored["size"], stored["name"]) == ("png", len(PNG), "photo.png")
    job = client.post("/api/jobs", data=json.dumps({"serving": "files", "input": {"file": stored["id"]}}),
                      content_type="application/json")
    assert job.status_code == 201, job.content
    assert finished(client, job.json()["id"])["result"]["bytes"] == len(PNG)
    theirs = Client().post("/api/jobs", data=json.dumps({"serving": "files", "input": {"file": stored["id"]}}),
                           content_type="application/json")
    assert theirs.status_code == 400 and "among yours" in theirs.json()["error"]["message"]


@pytest.mark.parametrize(
    "data, name, status, code, words",
    [
        (b"just some text, renamed", "photo.png", 400, "invalid_input", "send one of: png, jpeg, gif"),
        (b"", "empty.png", 400, "invalid_input", "empty"),
        (PNG + b"\x00" * 1_000_000, "big.png", 413, "too_large", "the limit is 1,000,000"),
    ],
)
def test_bad_uploads_are_refused_with_json_and_store_nothing(toys, data, name, status, code, words):
    for response in (upload(Client(), data, name=name),
                     Client().post("/api/jobs", data={"serving": "files", "file": named(data, name)})):
        assert response.status_code == status, response.content
        error = response.json()["error"]
        assert error["code"] == code and words in error["message"]
    assert not Upload.objects.exists() and not Job.objects.exists()


def test_uploads_past_the_owners_quota_are_refused(toys, settings):
    settings.OWNER_STORAGE_MAX_BYTES = len(PNG) + 10
    client = Client()
    assert upload(client, PNG).status_code == 201
    refused = upload(client, PNG)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "quota_exceeded"
    assert upload(Client(), PNG).status_code == 201  # another owner has their own quota


def test_unknown_options_and_bad_option_values_are_refused(toys):
    client = Client()
    stored = upload(client, PNG).json()
    for options, words in (({"flop": 1}, "unknown input field(s) flop"), ({"flip": "maybe"}, "send a boolean")):
        response = client.post("/api/jobs", data=json.dumps({"serving": "files", "input": {"file": stored["id"], **options}}),
                               content_type="application/json")
        assert response.status_code == 400 and words in response.json()["error"]["message"]


def test_servings_publish_their_specs(toys, settings):
    settings.MLSERVICES_LIMITS = {"files": {"max_bytes": 500}}
    servings = {s["name"]: s for s in Client().get("/api/servings").json()["servings"]}
    assert servings["files"]["spec"]["kind"] == "image"
    assert servings["files"]["spec"]["limits"] == {"max_bytes": 500}
    assert servings["files"]["spec"]["options"]["properties"]["flip"] == {
        "type": "boolean", "default": False, "description": "reverse the copy's bytes"}
    assert servings["windows"]["spec"]["kind"] == "json"
    assert servings["sentiment"]["spec"]["limits"] == {"max_chars": settings.MLSERVICES_MAX_TEXT_CHARS}


def test_purge_jobs_deletes_what_is_older_than_the_retention(toys, settings):
    from datetime import timedelta

    from django.utils import timezone

    client = Client()
    job = finished(client, client.post("/api/jobs", data={"serving": "files", "file": named(PNG, "a.png")}).json()["id"])
    assert job["status"] == "done"
    files = [f.file.path for f in JobFile.objects.all()] + [u.file.path for u in Upload.objects.all()]
    assert len(files) == 2
    call_command("purge_jobs")  # nothing is old yet
    assert Job.objects.count() == 1
    old = timezone.now() - timedelta(days=settings.JOBS_RETENTION_DAYS + 1)
    Job.objects.update(queued_at=old)
    Upload.objects.update(created_at=old)
    out = io.StringIO()
    call_command("purge_jobs", stdout=out)
    assert "deleted 1 job(s), 1 upload(s) and 2 file(s)" in out.getvalue()
    assert not Job.objects.exists() and not Upload.objects.exists() and not JobFile.objects.exists()
    import os

    assert not any(os.path.exists(f) for f in files)


# --- One input, many items, streamed ---------------------------------------------


@sync_to_async
def new_session() -> str:
    session = SessionStore()
    session.create()
    return session.session_key


async def connected(session_key: str) -> tuple[WebsocketCommunicator, dict]:
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
               (b"cookie", f"sessionid={session_key}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/jobs", headers=headers)
    ok, _ = await communicator.connect(timeout=TIMEOUT)
    assert ok
    return communicator, await communicator.receive_json_from(timeout=TIMEOUT)


@sync_to_async
def submit_windows(session_key: str, windows: int, **input) -> str:
    client = Client()
    client.cookies["sessionid"] = session_key
    response = client.post("/api/jobs", data=json.dumps({"serving": "windows", "input": {"windows": windows, **input}}),
                           content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


@sync_to_async
def stored_job(job_id: str) -> Job:
    return Job.objects.get(pk=job_id)


async def test_3_windows_stream_3_partials_in_order_and_a_reconnecting_page_sees_them(toys):
    session = await new_session()
    page, _ = await connected(session)
    job_id = await submit_windows(session, 3, value=10)
    running = await page.receive_json_from(timeout=TIMEOUT)
    assert (running["type"], running["job"]["status"]) == ("job", "running")

    toys.gate.release(1)  # window 0 only
    first = await page.receive_json_from(timeout=TIMEOUT)
    assert first == {"type": "job.progress", "job_id": job_id, "progress": 0.3333, "done": 1, "total": 3,
                     "partial": {"index": 0, "output": 20}}
    assert (await stored_job(job_id)).partials == [{"index": 0, "output": 20}]

    late, snapshot = await connected(session)  # a reload mid-stream: the database has what it missed
    (seen,) = snapshot["jobs"]
    assert (seen["status"], seen["progress"], seen["partials"]) == ("running", 0.3333, [{"index": 0, "output": 20}])

    toys.gate.set()
    rest = [await page.receive_json_from(timeout=TIMEOUT) for _ in range(3)]
    assert [(m["type"], m.get("done")) for m in rest] == [("job.progress", 2), ("job.progress", 3), ("job", None)]
    assert [m["partial"]["index"] for m in rest[:2]] == [1, 2]
    done = rest[2]["job"]
    assert (done["status"], done["progress"]) == ("done", 1.0)
    assert done["result"] == {"outputs": [20, 22, 24], "total": 66}
    assert [p["index"] for p in done["partials"]] == [0, 1, 2]
    assert done["model_version"] == "toy@1"
    late_messages = [await late.receive_json_from(timeout=TIMEOUT) for _ in range(3)]
    assert late_messages == rest  # the late page gets the same events from then on
    assert await page.receive_nothing(timeout=0.3)
    await page.disconnect()
    await late.disconnect()


async def test_one_failing_window_fails_its_job_and_not_the_job_beside_it(toys):
    toys.gate.set()
    session = await new_session()
    page, _ = await connected(session)
    bad = await submit_windows(session, 3, value=1, fail_at=1)
    good = await submit_windows(session, 2, value=5)
    final = {}
    while len(final) < 2:
        message = await page.receive_json_from(timeout=TIMEOUT)
        if message["type"] == "job" and message["job"]["status"] in ("done", "failed"):
            final[message["job"]["id"]] = message["job"]
    assert final[bad]["status"] == "failed" and final[bad]["error_code"] == "serving_failed"
    assert "window 1" in final[bad]["error"]
    assert final[good]["result"] == {"outputs": [10, 12], "total": 22}
    await page.disconnect()


async def test_a_live_prediction_of_a_file_serving_answers_on_the_socket(toys):
    session = await new_session()

    @sync_to_async
    def uploaded() -> str:
        client = Client()
        client.cookies["sessionid"] = session
        return upload(client, PNG).json()["id"]

    upload_id = await uploaded()
    page, _ = await connected(session)
    await page.send_json_to({"type": "predict", "serving": "files", "input": {"file": upload_id}, "request_id": 5})
    answer = await page.receive_json_from(timeout=TIMEOUT)
    assert answer == {"type": "prediction", "request_id": 5, "model_version": "toy@1", "result": {
        "bytes": len(PNG), "doubled": 2 * len(PNG),
        "copy": {"name": "copy.bin", "content_type": "application/octet-stream", "size": len(PNG), "url": None}}}
    stranger, _ = await connected(await new_session())
    await stranger.send_json_to({"type": "predict", "serving": "files", "input": {"file": upload_id}, "request_id": 6})
    refused = await stranger.receive_json_from(timeout=TIMEOUT)
    assert (refused["type"], refused["code"], refused["request_id"]) == ("error", "invalid_input", 6)
    assert "among yours" in refused["message"]
    await page.disconnect()
    await stranger.disconnect()


def test_runtime_stream_yields_progress_then_final_and_astream_the_same():
    windows = Windows()
    runtime = mlservices.Runtime(device="cpu")
    mlservices.register("windows-stream")(lambda: windows.serving("windows-stream", batch_size=2, batch_timeout_ms=0))
    try:
        events = list(runtime.stream("windows-stream", {"windows": 3, "value": 1}))
        assert events == [
            mlservices.Progress(1, 3, {"index": 0, "output": 2}),
            mlservices.Progress(2, 3, {"index": 1, "output": 4}),
            mlservices.Progress(3, 3, {"index": 2, "output": 6}),
            mlservices.Final({"outputs": [2, 4, 6], "total": 12}, "toy@1"),
        ]

        async def collect():
            return [e async for e in runtime.astream("windows-stream", {"windows": 3, "value": 1})]

        assert asyncio.run(collect()) == events
        assert runtime.batched_run("windows-stream", {"windows": 2, "value": 0}) == {"outputs": [0, 2], "total": 2}
    finally:
        runtime.close()
        mlservices.registry.unregister("windows-stream")


def test_nul_and_lone_surrogates_in_form_fields_and_file_names_never_reach_the_database(toys):
    """PostgreSQL refuses NUL in text; a lone surrogate cannot be encoded: both are refused or cleaned."""
    client = Client()
    refused = client.post("/api/jobs", data={"serving": "files", "flip": "tr\x00ue", "file": named(PNG, "a.png")})
    assert refused.status_code == 400 and "boolean" in refused.json()["error"]["message"]
    response = upload(client, PNG, name="we\x00ird\u200bname.png")
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "weirdname.png"  # shown only: printable characters kept
    text = client.post("/api/jobs", data={"serving": "sentiment", "text": "bad \x00 text"})
    assert text.status_code == 400 and "NUL" in text.json()["error"]["message"]


async def test_a_live_upload_serves_one_prediction_and_is_gone_after_it(toys):
    session = await new_session()

    @sync_to_async
    def live_upload() -> dict:
        client = Client()
        client.cookies["sessionid"] = session
        response = client.post("/api/uploads", data={"serving": "files", "live": "true", "file": named(PNG, "live.png")})
        assert response.status_code == 201, response.content
        as_job = client.post("/api/jobs", data=json.dumps({"serving": "files", "input": {"file": response.json()["id"]}}),
                             content_type="application/json")
        assert as_job.status_code == 400 and "live=true" in as_job.json()["error"]["message"]
        return response.json()

    stored = await live_upload()
    assert stored["live"] is True
    page, _ = await connected(session)
    await page.send_json_to({"type": "predict", "serving": "files", "input": {"file": stored["id"]}, "request_id": 1})
    answer = await page.receive_json_from(timeout=TIMEOUT)
    assert (answer["type"], answer["result"]["bytes"]) == ("prediction", len(PNG))
    assert not await sync_to_async(Upload.objects.filter(pk=stored["id"]).exists)()
    await page.send_json_to({"type": "predict", "serving": "files", "input": {"file": stored["id"]}, "request_id": 2})
    again = await page.receive_json_from(timeout=TIMEOUT)
    assert (again["type"], again["code"]) == ("error", "invalid_input") and "among yours" in again["message"]
    await page.disconnect()
