"""The staff status page (``/status/``) and its websocket (``/ws/status/``), webapp.status.

The figures of a minute of batches are pure arithmetic; the page and the
socket are checked in-process (this process's runtime, Django's test
client, Channels' communicator), then for real: a Celery worker and daphne
on a real Redis, a staff member's page showing the worker with its serving
and version, and its socket pushing snapshots that follow the work done.
Nothing sleeps to wait for work: every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request

import pytest
from channels.db import database_sync_to_async

from mlservices.batcher import BatchRecord
from tests.live_server import asgi_server, base_env
from tests.test_worker import (  # noqa: F401  (fixtures)
    SESSION_COOKIE,
    TIMEOUT,
    RawWebsocket,
    celery_client,
    celery_worker,
    create_jobs,
    enqueue,
    in_thread,
    let_through,
    live_db,
    new_session,
    redis_db,
    toy_env,
    toy_files,
    wait_for_jobs,
)

STATUS_DATA = re.compile(r'<script id="status-data" type="application/json">(.*?)</script>', re.S)


def page_snapshot(html: str) -> dict:
    return json.loads(STATUS_DATA.search(html).group(1))


# --- The figures --------------------------------------------------------------------------


def test_a_minute_of_batches_in_figures():
    from webapp.status.figures import live, percentile

    now = 1000.0
    records = [BatchRecord(16, None, 50.0, 500.0, False, started_at=now - 61)]  # older than the minute
    records += [BatchRecord(size, None, wait, inference, failed, started_at=now - 60 + i)
                for i, (size, wait, inference, failed) in enumerate(
                    [(2, 1.0, 10.0, False), (4, 2.0, 20.0, False), (8, 3.0, 30.0, True), (2, 4.0, 40.0, False)])]
    figures = live(records, now, batch_size=8)
    assert figures == {
        "window_s": 60.0, "batches": 4, "items": 16, "failed": 1,
        "items_per_s": round(16 / 60, 3), "batch_fill": 0.5,
        "inference_ms": {"p50": 20.0, "p99": 40.0}, "wait_ms": {"p50": 2.0, "p99": 4.0},
    }
    quiet = live(records[:1], now, batch_size=8)
    assert (quiet["batches"], quiet["items_per_s"], quiet["batch_fill"], quiet["inference_ms"]) == (
        0, 0.0, None, {"p50": None, "p99": None})
    assert [percentile(range(1, 101), p) for p in (1, 50, 99, 100)] == [1, 50, 99, 100]


def test_items_per_second_over_the_span_the_kept_records_cover():
    from mlservices.batcher import RECORDS_KEPT

    from webapp.status.figures import live

    now = 1000.0  # a full record buffer spanning the last 10 s: 1 item each
    records = [BatchRecord(1, None, 0.0, 1.0, False, started_at=now - 10 + 10 * i / RECORDS_KEPT)
               for i in range(RECORDS_KEPT)]
    assert live(records, now, batch_size=1)["items_per_s"] == RECORDS_KEPT / 10


# --- In-process: the page, the admin link, the socket -----------------------------------------


@pytest.fixture
def toy_default_runtime(monkeypatch):
    """This process's default runtime, with one toy serving loaded and one batch run."""
    import mlservices
    from mlservices.testing import Toy

    mlservices.register("toy-status")(lambda **options: Toy().serving("toy-status", batch_size=4, batch_timeout_ms=1))
    runtime = mlservices.Runtime({"toy-status": {}}, device="cpu")
    monkeypatch.setattr(mlservices.runtime, "_default", runtime)
    runtime.batched_run("toy-status", 1)
    yield runtime
    runtime.close()
    mlservices.registry.unregister("toy-status")


@pytest.fixture
def status_settings(settings):
    settings.MLSERVICES_MODE = "inprocess"
    settings.STATUS_REFRESH_S = 0.05


@pytest.mark.django_db
def test_anonymous_and_non_staff_are_sent_to_the_admin_login(client, django_user_model, status_settings):
    response = client.get("/status/")
    assert response.status_code == 302 and response["Location"] == "/admin/login/?next=/status/"
    client.force_login(django_user_model.objects.create_user("bob", password="pw"))
    response = client.get("/status/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_staff_see_the_servings_of_this_process_in_process_mode(admin_client, toy_default_runtime, status_settings):
    import os

    response = admin_client.get("/status/")
    assert response.status_code == 200
    snapshot = page_snapshot(response.content.decode())
    (worker,) = snapshot["workers"]
    assert (snapshot["mode"], worker["node"], worker["pool"]) == ("inprocess", f"web:{os.getpid()}", "inprocess")
    (serving,) = worker["servings"]
    assert {k: serving[k] for k in ("serving", "version", "route", "device", "batch_size", "pending")} == {
        "serving": "toy-status", "version": "toy@1", "route": "", "device": "cpu", "batch_size": 4, "pending": 0}
    assert (serving["last_minute"]["batches"], serving["last_minute"]["items"]) == (1, 1)
    assert serving["last_minute"]["batch_fill"] == 0.25
    assert 'src="/static/js/status.js"' in response.content.decode()


@pytest.mark.django_db
def test_the_admin_home_links_to_the_status_page(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert re.search(r'<a href="/status/"[^>]*>Live status</a>', html)


async def status_socket(session_key: str | None):
    from channels.testing import WebsocketCommunicator

    from webapp.asgi import application

    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")]
    if session_key:
        headers.append((b"cookie", f"{SESSION_COOKIE}={session_key}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/status/", headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


def make_session(username: str | None, staff: bool) -> str | None:
    """The session key of a new signed-in user ``username`` (None: nobody signed in)."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    if username is None:
        return None
    user = get_user_model().objects.create_user(username, password="pw", is_staff=staff)
    client = Client()
    client.force_login(user)
    return client.cookies[SESSION_COOKIE].value


session_of = database_sync_to_async(make_session)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("username", [None, "bob"])
async def test_the_socket_closes_with_4003_for_anyone_but_staff(username, status_settings):
    communicator = await status_socket(await session_of(username, staff=False))
    assert await communicator.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4003}
    await communicator.wait()


@pytest.mark.django_db(transaction=True)
async def test_the_socket_refuses_a_page_of_another_origin(status_settings):
    from channels.testing import WebsocketCommunicator

    from webapp.asgi import application

    headers = [(b"origin", b"http://evil.example"), (b"host", b"127.0.0.1:8000"),
               (b"cookie", f"{SESSION_COOKIE}={await session_of('ada', staff=True)}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/status/", headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert not connected


@pytest.mark.django_db(transaction=True)
async def test_the_socket_pushes_staff_a_fresh_snapshot_after_work_is_done(toy_default_runtime, status_settings):
    from django.contrib.auth import get_user_model

    communicator = await status_socket(await session_of("ada", staff=True))
    first = await communicator.receive_json_from(timeout=TIMEOUT)
    assert first["type"] == "status"
    assert first["workers"][0]["servings"][0]["last_minute"]["items"] == 1
    await asyncio.to_thread(toy_default_runtime.batched_run, "toy-status", 2)
    while True:  # each push within the deadline of receive_json_from; the one after the batch shows it
        later = await communicator.receive_json_from(timeout=TIMEOUT)
        if later["workers"][0]["servings"][0]["last_minute"]["items"] == 2:
            break
    assert later["taken_at"] > first["taken_at"]
    # Staff no more: closed at the next refresh.
    await database_sync_to_async(get_user_model().objects.filter(username="ada").update)(is_staff=False)
    while (output := await communicator.receive_output(timeout=TIMEOUT))["type"] == "websocket.send":
        pass
    assert output == {"type": "websocket.close", "code": 4003}
    await communicator.disconnect()


# --- For real: a worker, daphne, a staff member's page and socket ------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url: str, session_key: str | None = None) -> tuple[int, str, str]:
    """(status, Location, body) of a GET, redirects not followed."""
    opener = urllib.request.build_opener(_NoRedirects)
    headers = {"Cookie": f"{SESSION_COOKIE}={session_key}"} if session_key else {}
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT) as response:
            return response.status, "", response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", ""), exc.read().decode()


async def read_frame(socket: RawWebsocket) -> tuple[int, bytes]:
    """One frame from the server: (opcode, payload)."""
    first, second = await asyncio.wait_for(socket.reader.readexactly(2), TIMEOUT)
    n = second & 0x7F
    if n >= 126:
        n = int.from_bytes(await socket.reader.readexactly(2 if n == 126 else 8), "big")
    return first & 0x0F, await asyncio.wait_for(socket.reader.readexactly(n), TIMEOUT)


def toy_row(snapshot: dict, node: str) -> dict:
    (worker,) = [w for w in snapshot["workers"] if w["node"] == node]
    (row,) = [s for s in worker["servings"] if s["serving"] == "toy"]
    return row


@pytest.mark.redis
@pytest.mark.worker
async def test_staff_see_a_live_worker_with_its_serving_and_version_refreshed_over_the_socket(
    tmp_path, toy_files, redis_db, redis_url, live_db, celery_client
):
    env = toy_env(live_db, redis_url, toy_files, batch_size=8, STATUS_REFRESH_S="0.2")
    let_through(toy_files.gate)
    staff, member = await session_of("ada", staff=True), await session_of("bob", staff=False)
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="status", queues="toy")) as worker, \
            in_thread(asgi_server(env, tmp_path / "daphne.log")) as site:
        for who in (None, member):
            status, location, _ = await asyncio.to_thread(get, site + "/status/", who)
            assert (status, location) == (302, "/admin/login/?next=/status/")
        status, _, html = await asyncio.to_thread(get, site + "/status/", staff)
        assert status == 200
        snapshot = page_snapshot(html)
        assert snapshot["mode"] == "celery" and snapshot["queues"]["toy"] == 0
        (seen,) = [w for w in snapshot["workers"] if w["node"] == worker.node]
        assert (seen["answered"], seen["pool"], seen["load_errors"]) == (True, "thread", {})  # Celery's name of -P threads
        row = toy_row(snapshot, worker.node)
        assert {k: row[k] for k in ("version", "route", "device", "batch_size", "batch_timeout_ms", "pending")} == {
            "version": "toy@1", "route": "", "device": "cpu", "batch_size": 8, "batch_timeout_ms": 5.0, "pending": 0}
        assert row["last_minute"]["items"] == 0

        refused = await RawWebsocket.connect(site, "/ws/status/", f"{SESSION_COOKIE}={member}")
        try:
            opcode, payload = await read_frame(refused)
            assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 4003)  # a close frame, code 4003
        finally:
            await refused.close()

        socket = await RawWebsocket.connect(site, "/ws/status/", f"{SESSION_COOKIE}={staff}")
        try:
            first = await socket.receive_json()
            assert first["type"] == "status" and toy_row(first, worker.node)["version"] == "toy@1"
            ids = await create_jobs(await new_session(), "toy", [1, 2, 3])
            enqueue(celery_client, ids, "toy")
            await wait_for_jobs(ids)
            while toy_row(later := await socket.receive_json(), worker.node)["last_minute"]["items"] < 3:
                pass  # each snapshot arrives within receive_json's deadline; one after the jobs shows them
        finally:
            await socket.close()
    assert later["taken_at"] > first["taken_at"]
    figures = toy_row(later, worker.node)["last_minute"]
    assert figures["items"] == 3 and 1 <= figures["batches"] <= 3
    assert figures["items_per_s"] == round(3 / 60, 3)
    assert figures["inference_ms"]["p50"] is not None and figures["wait_ms"]["p99"] is not None


# --- For real: the page in Chromium --------------------------------------------------------------


@pytest.mark.browser
def test_the_page_draws_the_servings_and_redraws_them_live_in_a_browser(tmp_path, live_db):
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
    from tests.conftest import require

    require(CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    staff = make_session("ada", staff=True)
    config = {"toy": {"gate": "", "announce": "", "batch_size": 4, "batch_timeout_ms": 1}}
    env = base_env(DATABASE_URL=live_db, MLSERVICES_MODE="inprocess", MLSERVICES_EXTRA_SERVINGS="tests.worker_servings",
                   MLSERVICES_CONFIG=json.dumps(config), STATUS_REFRESH_S="0.2")
    env.pop("REDIS_URL", None)
    errors = []
    with asgi_server(env, tmp_path / "daphne.log") as site, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": SESSION_COOKIE, "value": staff, "url": site}])

            def run_job(value: int) -> None:
                context.request.get(site + "/s/toy/")
                csrf = {c["name"]: c["value"] for c in context.cookies()}["csrftoken"]
                response = context.request.post(site + "/api/jobs", data=json.dumps({"serving": "toy", "input": value}),
                                                headers={"Content-Type": "application/json", "X-CSRFToken": csrf})
                assert response.status == 201, response.text()

            run_job(1)  # loads the toy serving in the web process
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(site + "/status/")
            row = page.locator('[data-testid=serving][data-serving=toy][data-version="toy@1"]')
            expect(row).to_be_visible(timeout=TIMEOUT * 1000)
            expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "open", timeout=TIMEOUT * 1000)
            expect(page.get_by_test_id("worker")).to_have_attribute("data-node", re.compile(r"^web:\d+$"))
            cells = row.locator("td")
            expect(cells.nth(2)).to_have_text("cpu")
            expect(cells.nth(3)).to_have_text("4 / 1 / 1")
            expect(cells.nth(5)).to_have_text("0.02", timeout=TIMEOUT * 1000)  # 1 item in the last minute
            run_job(2)
            expect(cells.nth(5)).to_have_text("0.03", timeout=TIMEOUT * 1000)  # redrawn from the socket
            expect(cells.nth(6)).to_have_text("25 %")  # one item per batch of 4
        finally:
            browser.close()
    assert errors == []
