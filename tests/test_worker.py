"""The distributed mode for real: Redis broker and channel layer, Celery worker subprocesses.

Every test that starts a worker gets a private migrated database
(``live_database``: PostgreSQL under CI), Redis db 15 flushed before and
after, and real ``celery -A webapp worker -P threads`` processes. This test
process points its own Django connection at that database and its channel
layer at that Redis, so a ``WebsocketCommunicator`` on the real ASGI app sees
exactly what a browser of the same session would.

Toy servings (``tests/worker_servings``; the worker discovers them through
``MLSERVICES_EXTRA_SERVINGS``) make batching and crashes deterministic: the
``toy`` serving's inference waits until a gate file exists and writes each
batch to an announce file when it starts. Nothing here sleeps to wait for
work: every wait polls with a deadline or waits on a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from channels.db import database_sync_to_async

from tests.live_server import ROOT, asgi_server, base_env, free_port, live_database, start_process, wait_until

TIMEOUT = 60  # seconds: the most any single wait here may take
HOST = socket.gethostname()
SESSION_COOKIE = "sessionid"


# --- Fixtures: Redis db 15, the workers' database, a Celery client ------------------


@pytest.fixture
def redis_db(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # db 15 only (conftest's redis_url); never the whole server
    yield client
    client.flushdb()
    client.close()


@contextlib.contextmanager
def use_database(url: str, blocker):
    """Point this process's Django ``default`` connection at ``url``.

    Every thread's connection shares one settings dict, so changing it in
    place moves the ORM, sessions and the consumer's snapshot queries alike;
    ``live_database`` picks the same engine as the outer settings.
    """
    import dj_database_url
    from django.db import connections

    conn = connections["default"]
    saved = dict(conn.settings_dict)
    with blocker.unblock():
        conn.close()
        conn.settings_dict.update(dj_database_url.parse(url, conn_max_age=0))
        try:
            yield
        finally:
            conn.close()
            conn.settings_dict.clear()
            conn.settings_dict.update(saved)


@pytest.fixture
def live_db(tmp_path, django_db_blocker):
    with live_database(tmp_path) as url, use_database(url, django_db_blocker):
        yield url


@pytest.fixture
def redis_layer(settings, redis_url):
    from webapp.settings import redis_channel_layer

    settings.CHANNEL_LAYERS = {"default": redis_channel_layer(redis_url)}


@pytest.fixture
def celery_client(redis_url):
    from celery import Celery

    app = Celery("tests", broker=redis_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()


@pytest.fixture
def toy_files(tmp_path) -> SimpleNamespace:
    return SimpleNamespace(gate=tmp_path / "gate-open", announce=tmp_path / "batches.jsonl")


def toy_env(
    live_db: str, redis_url: str, files: SimpleNamespace, *, batch_size: int, serving: str = "toy", **extra: str
) -> dict:
    config = {serving: {"gate": str(files.gate), "announce": str(files.announce), "batch_size": batch_size, "batch_timeout_ms": 5}}
    return worker_env(
        live_db, redis_url, MLSERVICES_EXTRA_SERVINGS="tests.worker_servings", MLSERVICES_CONFIG=json.dumps(config), **extra
    )


def let_through(gate: Path, batches: int | None = None) -> None:
    """Open a toy's file gate for ``batches`` more batches in all (None: for good), atomically."""
    staging = gate.with_suffix(".tmp")
    staging.write_text("" if batches is None else str(batches))
    os.replace(staging, gate)


def worker_env(live_db: str, redis_url: str, **extra: str) -> dict:
    return base_env(DATABASE_URL=live_db, REDIS_URL=redis_url, MLSERVICES_DEVICE="cpu", **extra)


# --- Helpers: workers, jobs, the broker, the socket -----------------------------------


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def ping(client, node: str) -> bool:
    return bool(client.control.ping(destination=[node], timeout=0.5))


@contextlib.contextmanager
def celery_worker(
    client, env: dict, log_dir: Path, *, name: str, queues: str, concurrency: int = 8, may_exit: bool = False
):
    """A real worker subprocess, yielded once it answers pings (its servings are loaded by then),
    or, with ``may_exit``, once it has exited on its own (the test checks how)."""
    node = f"{name}@{HOST}"
    log = log_dir / f"worker-{name}.log"
    args = [
        sys.executable, "-m", "celery", "-A", "webapp", "worker", "-P", "threads", "-c", str(concurrency),
        "-Q", queues, "-n", node, "-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]
    with start_process(args, env, log) as process:

        def ready():
            if process.poll() is not None:
                if may_exit:
                    return True
                raise RuntimeError(f"worker {node} exited with {process.returncode}:\n{log_tail(log)}")
            return ping(client, node)

        wait_until(ready, timeout=TIMEOUT, what=f"worker {node} to answer pings")
        yield SimpleNamespace(process=process, node=node, log=log)


@contextlib.asynccontextmanager
async def in_thread(manager):
    """Enter and leave a blocking context manager (a worker, a server) off the event loop,
    so sockets already open keep reading while it starts and stops."""
    value = await asyncio.to_thread(manager.__enter__)
    try:
        yield value
    except BaseException as exc:
        if not await asyncio.to_thread(manager.__exit__, type(exc), exc, exc.__traceback__):
            raise
    else:
        await asyncio.to_thread(manager.__exit__, None, None, None)


def report(client, node: str) -> dict:
    """The worker's ``mlservices`` inspect answer: its servings and recent batches."""
    replies = client.control.broadcast(
        "mlservices", arguments={"recent": 1000}, destination=[node], reply=True, timeout=5
    )
    assert replies, f"no answer from {node}"
    return replies[0][node]


def broker_idle(redis_client, queue: str) -> bool:
    """Nothing waiting on ``queue`` and nothing delivered but unacknowledged."""
    return redis_client.llen(queue) == 0 and redis_client.hlen("unacked") == 0


@database_sync_to_async
def new_session() -> str:
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session.create()
    return session.session_key


@database_sync_to_async
def create_jobs(session_key: str, serving: str, inputs: list) -> list[str]:
    from webapp.jobs.models import Job

    jobs = [
        Job.objects.create(serving=serving, input=value, input_summary=str(value)[:100], session_key=session_key)
        for value in inputs
    ]
    return [str(job.pk) for job in jobs]


def jobs_by_id(ids: list[str]) -> dict[str, object]:
    from django.db import close_old_connections

    from webapp.jobs.models import Job

    try:
        return {str(job.pk): job for job in Job.objects.filter(pk__in=ids)}
    finally:
        close_old_connections()


async def wait_for_jobs(ids: list[str], statuses=("done", "failed"), timeout: float = TIMEOUT) -> dict:
    """Poll the database (with a deadline) until every job has one of ``statuses``."""
    read = database_sync_to_async(jobs_by_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        jobs = await read(ids)
        if len(jobs) == len(ids) and all(j.status in statuses for j in jobs.values()):
            return jobs
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"jobs still not {statuses}: {sorted((j.status for j in jobs.values()))}")
        await asyncio.sleep(0.05)


def enqueue(client, ids: list[str], queue: str) -> None:
    """What webapp.jobs.dispatch.enqueue_job sends in Celery mode."""
    for job_id in ids:
        client.send_task("jobs.execute", args=[job_id], queue=queue)


@contextlib.asynccontextmanager
async def jobs_socket(session_key: str):
    """The page's websocket on the real ASGI app, signed in as ``session_key``; yields (socket, snapshot)."""
    from channels.testing import WebsocketCommunicator

    from asgiref.sync import sync_to_async
    from django.db import connections

    from webapp.asgi import application

    # A connection an earlier test opened through plain sync_to_async (which
    # never closes it) may still point at that test's database: drop it.
    await sync_to_async(connections.close_all)()
    headers = [
        (b"origin", b"http://127.0.0.1:8000"),
        (b"host", b"127.0.0.1:8000"),
        (b"cookie", f"{SESSION_COOKIE}={session_key}".encode()),
    ]
    communicator = WebsocketCommunicator(application, "/ws/jobs", headers=headers)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    try:
        snapshot = await communicator.receive_json_from(timeout=TIMEOUT)
        assert snapshot["type"] == "jobs"
        yield communicator, snapshot
    finally:
        await communicator.disconnect()


async def job_updates_until(communicator, ids: list[str], status: str = "done") -> list[dict]:
    """Job messages received until every job of ``ids`` has been pushed with ``status``."""
    messages, waiting = [], set(ids)
    while waiting:
        message = await communicator.receive_json_from(timeout=TIMEOUT)
        assert message["type"] == "job", message
        messages.append(message["job"])
        if message["job"]["status"] == status:
            waiting.discard(message["job"]["id"])
    return messages


class RawWebsocket:
    """A minimal websocket client (RFC 6455, text frames) for talking to daphne itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str, path: str, cookie: str) -> RawWebsocket:
        import base64

        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {url}\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send_json(self, data) -> None:
        payload, mask = json.dumps(data).encode(), os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        await self.writer.drain()

    async def receive_json(self) -> dict:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        assert first & 0x0F == 0x1, f"opcode {first & 0x0F}: not a text frame"
        n = second & 0x7F
        if n >= 126:
            n = int.from_bytes(await self.reader.readexactly(2 if n == 126 else 8), "big")
        return json.loads(await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# --- In-process units: time limits, serving selection ---------------------------------


def test_watchdog_exits_with_70_when_a_run_outlives_its_hard_limit():
    from webapp.worker import EXIT_HARD_TIME_LIMIT, Watchdog

    exited = threading.Event()
    codes = []

    def fake_exit(code):
        codes.append(code)
        exited.set()

    dog = Watchdog(hard_limit=lambda serving: 0.05, exit=fake_exit, check_every=0.01)
    with dog.watch("toy", "job 1"):
        assert exited.wait(timeout=10)
    assert codes == [EXIT_HARD_TIME_LIMIT]


def test_watchdog_forgets_runs_that_finish_in_time():
    """The watchdog's exit runs in its own thread: it records the call, and the test asserts on that."""
    from webapp.worker import Watchdog

    fired = []
    dog = Watchdog(hard_limit=lambda serving: 60, exit=fired.append, check_every=0.01)
    with dog.watch("toy", "job 1"):
        assert dog.overdue() == []
    assert dog._runs == {}
    assert dog.overdue() == [] and fired == []


def test_soft_time_limit_fails_a_stuck_run_and_drops_what_waits_behind_it(settings):
    import mlservices
    from mlservices.testing import Toy

    from webapp.jobs.execution import TimeLimitExceeded, run_stream

    def run_serving(name, input, runtime):
        *_, final = run_stream(name, input, runtime)
        return final.result, final.version

    settings.MLSERVICES_TIME_LIMITS = {"toy-soft": {"soft": 0.2, "hard": 30}}
    toy = Toy(open_gate=False)
    mlservices.register("toy-soft")(lambda: toy.serving("toy-soft", batch_size=1, batch_timeout_ms=0))
    runtime = mlservices.Runtime({"toy-soft": {}}, device="cpu")
    try:
        with pytest.raises(TimeLimitExceeded, match="soft time limit") as first:
            run_serving("toy-soft", 1, runtime)
        assert first.value.code == "timeout"
        with pytest.raises(TimeLimitExceeded):  # queued behind the stuck batch: dropped, never run
            run_serving("toy-soft", 2, runtime)
        toy.gate.set()
        assert run_serving("toy-soft", 21, runtime) == ({"input": 21, "output": 42}, "toy@1")
        assert [r.size for r in runtime.batcher("toy-soft").records()] == [1, 1]  # 1 and 21; 2 never ran
    finally:
        toy.gate.set()
        runtime.close()
        mlservices.registry._factories.pop("toy-soft", None)


@pytest.mark.parametrize(
    "worker_servings, queues, expected",
    [
        ([], ["sentiment"], ["sentiment"]),  # -Q sentiment
        ([], ["celery"], "all"),  # no serving's queue: every configured serving
        (["sentiment"], ["celery"], ["sentiment"]),  # named outright
    ],
)
def test_a_worker_serves_what_its_settings_or_queues_name(settings, worker_servings, queues, expected):
    import mlservices

    from webapp.worker import servings_to_serve

    settings.MLSERVICES_WORKER_SERVINGS = worker_servings
    settings.MLSERVICES_EXTRA_SERVINGS = []
    if expected == "all":
        expected = [name for name in settings.MLSERVICES if name in mlservices.names()]
    assert servings_to_serve(queues) == expected


def test_a_worker_refuses_a_serving_nobody_registers(settings):
    from webapp.worker import servings_to_serve

    settings.MLSERVICES_WORKER_SERVINGS = ["nope"]
    settings.MLSERVICES_EXTRA_SERVINGS = []
    with pytest.raises(RuntimeError, match="nope.*known servings: .*sentiment"):
        servings_to_serve([])


@pytest.mark.django_db
def test_a_job_the_broker_refuses_fails_visibly_instead_of_looking_queued(
    settings, monkeypatch, django_capture_on_commit_callbacks
):
    from webapp.jobs import dispatch, tasks
    from webapp.jobs.models import Job

    settings.MLSERVICES_MODE = "celery"

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("no broker")

    monkeypatch.setattr(tasks.execute, "apply_async", refuse)
    job = Job.objects.create(serving="sentiment", input="hi", input_summary="hi", session_key="k")
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.enqueue_job(job)
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "queue_unavailable")
    assert "unreachable" in job.error


# --- Against a real Redis and real workers ----------------------------------------


@pytest.mark.redis
@pytest.mark.worker
async def test_a_job_posted_to_the_site_runs_in_the_worker_and_its_result_reaches_the_websocket(
    tmp_path, tiny_sentiment_model, redis_db, redis_url, live_db, redis_layer, celery_client
):
    env = worker_env(live_db, redis_url, SENTIMENT_MODEL=str(tiny_sentiment_model))
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="e2e", queues="sentiment")), in_thread(
        asgi_server(env, tmp_path / "daphne.log")
    ) as site:
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        await asyncio.to_thread(lambda: browser.open(site + "/", timeout=10).read())
        cookies = {c.name: c.value for c in jar}
        session_key = cookies[SESSION_COOKIE]

        async with jobs_socket(session_key) as (communicator, snapshot):
            assert snapshot["jobs"] == []
            request = urllib.request.Request(
                site + "/api/jobs",
                data=json.dumps({"serving": "sentiment", "input": {"text": "i love this movie"}}).encode(),
                headers={"Content-Type": "application/json", "X-CSRFToken": cookies["csrftoken"]},
                method="POST",
            )
            with await asyncio.to_thread(browser.open, request, None, 10) as response:
                assert response.status == 201
                created = json.loads(response.read())
            assert created["status"] == "queued"
            updates = await job_updates_until(communicator, [created["id"]])

        assert [u["status"] for u in updates] == ["running", "done"]
        done = updates[-1]
        assert done["result"]["label"] in ("NEGATIVE", "POSITIVE")
        assert done["model_version"] == done["result"]["model"]
        assert done["model_version"].startswith(f"{tiny_sentiment_model.name}@sha256:")
        assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]

        # Persisted, not only pushed: the API and a page that connects late both see it.
        with await asyncio.to_thread(browser.open, f"{site}/api/jobs/{created['id']}", None, 10) as response:
            assert json.loads(response.read())["status"] == "done"
        async with jobs_socket(session_key) as (_, late_snapshot):
            assert [(j["id"], j["status"], j["result"]) for j in late_snapshot["jobs"]] == [
                (created["id"], "done", done["result"])
            ]

        # The page's own socket, on daphne: a live prediction goes to the worker and back.
        page = await RawWebsocket.connect(site, "/ws/jobs", f"{SESSION_COOKIE}={session_key}")
        try:
            assert [j["id"] for j in (await page.receive_json())["jobs"]] == [created["id"]]
            await page.send_json({"type": "predict", "serving": "sentiment", "input": {"text": "so bad"}, "request_id": 9})
            prediction = await page.receive_json()
        finally:
            await page.close()
        assert (prediction["type"], prediction["request_id"]) == ("prediction", 9)
        assert prediction["result"]["model"] == done["model_version"]
    daphne_log = (tmp_path / "daphne.log").read_text()
    assert "ready on" not in daphne_log, "the web process loaded a model"


@pytest.mark.redis
@pytest.mark.worker
async def test_a_live_prediction_is_answered_on_the_reply_channel(
    tmp_path, tiny_sentiment_model, redis_db, redis_url, live_db, redis_layer, celery_client
):
    from channels.layers import get_channel_layer

    env = worker_env(live_db, redis_url, SENTIMENT_MODEL=str(tiny_sentiment_model))
    layer = get_channel_layer()
    reply = await layer.new_channel()
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="predict", queues="sentiment")):
        celery_client.send_task("jobs.predict", args=["sentiment", {"text": "i hate it"}, reply, 7], queue="sentiment")
        celery_client.send_task("jobs.predict", args=["sentiment", {"text": " "}, reply, 8], queue="sentiment")
        answers = {}
        for _ in range(2):
            message = await asyncio.wait_for(layer.receive(reply), TIMEOUT)
            answers[message["request_id"]] = message
    assert answers[7]["type"] == "prediction"
    assert answers[7]["result"]["label"] in ("NEGATIVE", "POSITIVE")
    assert answers[7]["model_version"] == answers[7]["result"]["model"]
    assert answers[8]["type"] == "prediction.error"
    assert answers[8]["error"]["code"] == "invalid_input"


@pytest.mark.redis
@pytest.mark.worker
async def test_32_jobs_at_once_run_as_5_batches_1_8_8_8_7(
    tmp_path, toy_files, redis_db, redis_url, live_db, celery_client
):
    """One job holds the batcher (gate closed) while 31 line up behind it; opened, 31 = 8+8+8+7."""
    env = toy_env(live_db, redis_url, toy_files, batch_size=8)
    batches_worker = celery_worker(celery_client, env, tmp_path, name="batches", queues="toy", concurrency=32)
    async with in_thread(batches_worker) as worker:
        session = await new_session()
        ids = await create_jobs(session, "toy", list(range(32)))
        enqueue(celery_client, ids[:1], "toy")
        await asyncio.to_thread(
            wait_until, toy_files.announce.exists, timeout=TIMEOUT, what="the first batch to start"
        )
        enqueue(celery_client, ids[1:], "toy")
        await asyncio.to_thread(
            wait_until,
            lambda: report(celery_client, worker.node)["servings"]["toy"]["pending"] == 31,
            timeout=TIMEOUT,
            what="31 jobs waiting in the batcher",
        )
        toy_files.gate.touch()
        jobs = await wait_for_jobs(ids)
        batches = (await asyncio.to_thread(report, celery_client, worker.node))["servings"]["toy"]["batches"]

    assert [b["size"] for b in batches] == [1, 8, 8, 8, 7]
    assert not any(b["failed"] for b in batches)
    assert batches[0]["inference_ms"] > 0 and all(b["wait_ms"] >= 0 for b in batches)
    assert {n: jobs[i].result for n, i in enumerate(ids)} == {n: {"input": n, "output": 2 * n} for n in range(32)}
    assert {j.status for j in jobs.values()} == {"done"}
    assert {j.model_version for j in jobs.values()} == {"toy@1"}


@pytest.mark.redis
@pytest.mark.worker
async def test_32_sentiment_jobs_are_2_batches_of_16(
    tmp_path, tiny_sentiment_model, redis_db, redis_url, live_db, celery_client
):
    """The real model, no timing: a batch leaves only when full (the wait is far longer than the
    test), so 32 jobs through 32 task threads must become exactly two model calls of 16."""
    config = {"sentiment": {"model": str(tiny_sentiment_model), "batch_size": 16, "batch_timeout_ms": 50_000}}
    env = worker_env(live_db, redis_url, MLSERVICES_CONFIG=json.dumps(config))
    sentiment_worker = celery_worker(celery_client, env, tmp_path, name="sentiment", queues="sentiment", concurrency=32)
    async with in_thread(sentiment_worker) as worker:
        session = await new_session()
        ids = await create_jobs(session, "sentiment", [{"text": "the movie was very good"}] * 32)
        enqueue(celery_client, ids, "sentiment")
        jobs = await wait_for_jobs(ids)
        answer = await asyncio.to_thread(report, celery_client, worker.node)
        sizes = [b["size"] for b in answer["servings"]["sentiment"]["batches"]]

    assert {j.status for j in jobs.values()} == {"done"}
    assert sizes == [16, 16]


@pytest.mark.redis
@pytest.mark.worker
async def test_a_worker_killed_mid_batch_loses_none_of_8_jobs_and_each_finishes_once(
    tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client
):
    """SIGKILL while a batch is inside the model: a fresh worker gets all 8 again and finishes each once."""
    env = toy_env(live_db, redis_url, toy_files, batch_size=4, CELERY_VISIBILITY_TIMEOUT="3", JOBS_MAX_ATTEMPTS="5")
    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        ids = await create_jobs(session, "toy", list(range(8)))
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="doomed", queues="toy")) as doomed:
            enqueue(celery_client, ids, "toy")
            jobs = await wait_for_jobs(ids, statuses=("running",))
            await asyncio.to_thread(
                wait_until, toy_files.announce.exists, timeout=TIMEOUT, what="a batch inside the model"
            )
            doomed.process.send_signal(signal.SIGKILL)
            assert doomed.process.wait(timeout=TIMEOUT) == -signal.SIGKILL
        assert all(j.attempts == 1 for j in jobs.values())
        assert redis_db.hlen("unacked") == 8  # delivered, never acknowledged: the broker still has them

        toy_files.gate.touch()
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="fresh", queues="toy")):
            jobs = await wait_for_jobs(ids)
            await asyncio.to_thread(
                wait_until, lambda: broker_idle(redis_db, "toy"), timeout=TIMEOUT, what="the broker to drain"
            )
        updates = await job_updates_until(communicator, ids)
        assert await communicator.receive_nothing(timeout=0.5)  # no second "done" for anyone

    assert {n: jobs[i].result for n, i in enumerate(ids)} == {n: {"input": n, "output": 2 * n} for n in range(8)}
    assert {j.status for j in jobs.values()} == {"done"}
    assert all(j.attempts >= 2 for j in jobs.values()), [j.attempts for j in jobs.values()]
    done_pushes = [u["id"] for u in updates if u["status"] == "done"]
    assert sorted(done_pushes) == sorted(ids)  # each job pushed as done exactly once
    assert not [u for u in updates if u["status"] == "failed"]
    batches = [json.loads(line) for line in toy_files.announce.read_text().splitlines()]
    assert len({b["pid"] for b in batches}) == 2  # the killed worker's batch, then the fresh worker's


@pytest.mark.redis
@pytest.mark.worker
async def test_a_job_delivered_twice_runs_once(tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client):
    toy_files.gate.touch()
    env = toy_env(live_db, redis_url, toy_files, batch_size=4)
    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        (job_id,) = await create_jobs(session, "toy", [5])
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="twice", queues="toy")) as worker:
            enqueue(celery_client, [job_id], "toy")
            first = (await wait_for_jobs([job_id]))[job_id]
            enqueue(celery_client, [job_id], "toy")  # e.g. redelivered after a lost acknowledgement
            await asyncio.to_thread(
                wait_until, lambda: broker_idle(redis_db, "toy"), timeout=TIMEOUT, what="the second delivery"
            )
            batches = (await asyncio.to_thread(report, celery_client, worker.node))["servings"]["toy"]["batches"]
        updates = await job_updates_until(communicator, [job_id])
        assert await communicator.receive_nothing(timeout=0.5)
    again = (await wait_for_jobs([job_id]))[job_id]
    assert (again.status, again.attempts, again.finished_at, again.result) == (
        "done", 1, first.finished_at, {"input": 5, "output": 10}
    )
    assert [u["status"] for u in updates] == ["running", "done"]
    assert [b["size"] for b in batches] == [1]


@pytest.mark.redis
@pytest.mark.worker
async def test_a_job_past_its_soft_limit_fails_at_1_s_and_the_stuck_batch_stops_the_worker_at_3_s(
    tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client
):
    """Soft 1 s: the owner sees a readable timeout. Hard 3 s: the model call never returned, so the
    worker exits (70) for a fresh one; the job, already failed, stays failed."""
    limits = '{"toy": {"soft": 1, "hard": 3}}'
    env = toy_env(live_db, redis_url, toy_files, batch_size=4, MLSERVICES_TIME_LIMITS=limits)
    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        (job_id,) = await create_jobs(session, "toy", [3])
        stuck = celery_worker(celery_client, env, tmp_path, name="soft", queues="toy", may_exit=True)
        async with in_thread(stuck) as worker:
            enqueue(celery_client, [job_id], "toy")
            updates = await job_updates_until(communicator, [job_id], status="failed")
            exit_code = await asyncio.to_thread(worker.process.wait, TIMEOUT)
        assert await communicator.receive_nothing(timeout=0.5)
    failed = updates[-1]
    assert (failed["status"], failed["error_code"], failed["attempts"]) == ("failed", "timeout", 1)
    assert "no answer within 1 s" in failed["error"] and "soft time limit" in failed["error"]
    assert exit_code == 70
    assert "a batch of 1 of serving toy is still running after its hard time limit of 3 s" in worker.log.read_text()
    assert broker_idle(redis_db, "toy")  # the failed job was acknowledged: nothing comes back


@pytest.mark.redis
@pytest.mark.worker
async def test_a_job_that_hangs_past_its_hard_limit_stops_2_workers_then_fails_as_given_up(
    tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client
):
    """JOBS_MAX_ATTEMPTS=2: two workers exit 70 on the watchdog; the third gives up on the job."""
    env = toy_env(
        live_db, redis_url, toy_files, batch_size=1, JOBS_MAX_ATTEMPTS="2", CELERY_VISIBILITY_TIMEOUT="3",
        MLSERVICES_TIME_LIMITS='{"toy": {"soft": 30, "hard": 1}}',
    )
    session = await new_session()
    exits = []
    async with jobs_socket(session) as (communicator, _):
        (job_id,) = await create_jobs(session, "toy", [4])
        for round in range(3):
            hanging = celery_worker(celery_client, env, tmp_path, name=f"hang{round}", queues="toy", may_exit=True)
            async with in_thread(hanging) as worker:
                if round == 0:
                    enqueue(celery_client, [job_id], "toy")

                def finished_or_exited():
                    return worker.process.poll() is not None or jobs_by_id([job_id])[job_id].status == "failed"

                await asyncio.to_thread(
                    wait_until, finished_or_exited, timeout=TIMEOUT, what="the job to fail or the worker to exit"
                )
                exits.append(worker.process.poll())
            if exits[-1] is None:
                break
        updates = await job_updates_until(communicator, [job_id], status="failed")
    assert exits == [70, 70, None]
    failed = updates[-1]
    assert (failed["error_code"], failed["attempts"]) == ("gave_up", 3)
    assert "gave up after 2 attempts" in failed["error"] and "hard time limit" in failed["error"]
    assert "hard time limit of 1 s" in (tmp_path / "worker-hang0.log").read_text()


@pytest.mark.redis
@pytest.mark.worker
async def test_a_serving_that_cannot_load_fails_its_jobs_with_the_install_hint(
    tmp_path, redis_db, redis_url, live_db, redis_layer, celery_client
):
    env = worker_env(live_db, redis_url, SENTIMENT_MODEL=str(tmp_path / "no-such-model"))
    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        (job_id,) = await create_jobs(session, "sentiment", [{"text": "i love it"}])
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="broken", queues="sentiment")) as worker:
            assert "sentiment" in (await asyncio.to_thread(report, celery_client, worker.node))["load_errors"]
            enqueue(celery_client, [job_id], "sentiment")
            updates = await job_updates_until(communicator, [job_id], status="failed")
    failed = updates[-1]
    assert failed["error_code"] == "model_not_installed"
    assert "does not exist" in failed["error"] and "SENTIMENT_MODEL" in failed["error"]


# --- make stack -----------------------------------------------------------------------


def test_make_stack_runs_bin_stack():
    dry = subprocess.run(["make", "-n", "stack"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "bin/stack.py" in dry.stdout


@pytest.mark.redis
@pytest.mark.worker
def test_the_stack_serves_a_job_end_to_end_and_ctrl_c_stops_web_and_worker(
    tmp_path, tiny_sentiment_model, redis_db, redis_url, live_db
):
    port = free_port()
    env = worker_env(live_db, redis_url, SENTIMENT_MODEL=str(tiny_sentiment_model))
    log = tmp_path / "stack.log"
    args = [sys.executable, "bin/stack.py", "--port", str(port), "--concurrency", "4"]
    with open(log, "wb") as out:  # its own process group, as a terminal would run it
        stack = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        site = f"http://127.0.0.1:{port}"
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def page_loads():
            assert stack.poll() is None, log_tail(log)
            try:
                return browser.open(site + "/", timeout=2).status == 200
            except OSError:
                return False

        wait_until(page_loads, timeout=TIMEOUT, what="the stack's site")
        csrf = next(c.value for c in jar if c.name == "csrftoken")
        request = urllib.request.Request(
            site + "/api/jobs",
            data=json.dumps({"serving": "sentiment", "input": {"text": "a great film"}}).encode(),
            headers={"Content-Type": "application/json", "X-CSRFToken": csrf},
            method="POST",
        )
        job_id = json.loads(browser.open(request, timeout=10).read())["id"]

        def job_done():
            job = json.loads(browser.open(f"{site}/api/jobs/{job_id}", timeout=5).read())
            assert job["status"] != "failed", job
            return job["status"] == "done"

        wait_until(job_done, timeout=TIMEOUT, what="the job to be done by the stack's worker")
        children = {
            line.split()[1]: int(line.split("pid ")[1].split(":")[0])
            for line in log.read_text().splitlines()
            if line.startswith("[stack] ") and " started, pid " in line
        }
        assert set(children) == {"worker", "web"}, log_tail(log)

        os.killpg(stack.pid, signal.SIGINT)  # Ctrl-C
        assert stack.wait(timeout=TIMEOUT) == 0, log_tail(log)
        for name, pid in children.items():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()


# --- Servings v2 through the worker: streams, files ---------------------------------------


async def progress_until(communicator, job_id: str, status: str = "done") -> list[dict]:
    """Every message about ``job_id`` until it is pushed with ``status``."""
    messages = []
    while True:
        message = await communicator.receive_json_from(timeout=TIMEOUT)
        about = message.get("job_id") or message.get("job", {}).get("id")
        assert about == job_id, message
        messages.append(message)
        if message["type"] == "job" and message["job"]["status"] == status:
            return messages


@pytest.mark.redis
@pytest.mark.worker
async def test_a_stream_through_the_worker_arrives_in_order_and_a_late_page_sees_it_from_the_database(
    tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client
):
    env = toy_env(live_db, redis_url, toy_files, batch_size=1, serving="windows")
    let_through(toy_files.gate, 2)
    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        (job_id,) = await create_jobs(session, "windows", [{"windows": 4, "value": 7, "fail_at": -1}])
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="stream", queues="windows")):
            enqueue(celery_client, [job_id], "windows")
            head = [await communicator.receive_json_from(timeout=TIMEOUT) for _ in range(3)]
            assert [m["type"] for m in head] == ["job", "job.progress", "job.progress"]
            assert [m["done"] for m in head[1:]] == [1, 2]
            async with jobs_socket(session) as (_, snapshot):  # a reload while window 3 is held
                (seen,) = snapshot["jobs"]
                assert (seen["status"], seen["progress"]) == ("running", 0.5)
                assert seen["partials"] == [{"index": 0, "output": 14}, {"index": 1, "output": 16}]
            let_through(toy_files.gate)
            rest = await progress_until(communicator, job_id)
    assert [m.get("done") for m in rest] == [3, 4, None]
    assert rest[-1]["job"]["result"] == {"outputs": [14, 16, 18, 20], "total": 68}
    assert [p["index"] for p in rest[-1]["job"]["partials"]] == [0, 1, 2, 3]


@pytest.mark.redis
@pytest.mark.worker
async def test_a_worker_killed_mid_stream_leaves_one_complete_result_without_doubled_partials(
    tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client
):
    env = toy_env(live_db, redis_url, toy_files, batch_size=1, serving="windows",
                  CELERY_VISIBILITY_TIMEOUT="3", JOBS_MAX_ATTEMPTS="5")
    let_through(toy_files.gate, 2)
    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        (job_id,) = await create_jobs(session, "windows", [{"windows": 4, "value": 0, "fail_at": -1}])
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="doomed", queues="windows")) as doomed:
            enqueue(celery_client, [job_id], "windows")
            head = [await communicator.receive_json_from(timeout=TIMEOUT) for _ in range(3)]
            assert [m.get("done") for m in head] == [None, 1, 2]
            doomed.process.send_signal(signal.SIGKILL)
            assert doomed.process.wait(timeout=TIMEOUT) == -signal.SIGKILL
        assert (await wait_for_jobs([job_id], statuses=("running",)))[job_id].partials == [
            {"index": 0, "output": 0}, {"index": 1, "output": 2}]
        let_through(toy_files.gate)
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="fresh", queues="windows")):
            rest = await progress_until(communicator, job_id)
            job = (await wait_for_jobs([job_id]))[job_id]
    assert [(m["type"], m.get("done")) for m in rest] == [
        ("job", None), ("job.progress", 1), ("job.progress", 2), ("job.progress", 3), ("job.progress", 4), ("job", None)]
    assert rest[0]["job"]["progress"] == 0.0 and rest[0]["job"]["partials"] == []  # the redelivery starts over
    assert (job.status, job.attempts) == ("done", 2)
    assert job.result == {"outputs": [0, 2, 4, 6], "total": 12}
    assert [p["index"] for p in job.partials] == [0, 1, 2, 3]


@pytest.mark.redis
@pytest.mark.worker
async def test_a_file_job_posted_to_the_site_crosses_celery_as_a_reference_and_its_file_is_the_owners_only(
    tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client
):
    import base64

    let_through(toy_files.gate)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
    env = toy_env(live_db, redis_url, toy_files, batch_size=4, serving="files", DJANGO_MEDIA_ROOT=str(tmp_path / "media"))
    async with in_thread(asgi_server(env, tmp_path / "daphne.log")) as site:
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        await asyncio.to_thread(lambda: browser.open(site + "/", timeout=10).read())
        cookies = {c.name: c.value for c in jar}
        boundary = "b0undary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="serving"\r\n\r\nfiles\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="flip"\r\n\r\ntrue\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="me.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode() + png + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(site + "/api/jobs", data=body, method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "X-CSRFToken": cookies["csrftoken"]})
        with await asyncio.to_thread(browser.open, request, None, 10) as response:
            assert response.status == 201
            created = json.loads(response.read())

        # Nothing runs it yet: read the message as the broker holds it.
        (raw,) = redis_db.lrange("files", 0, -1)
        envelope = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        assert args == [created["id"]] and kwargs == {}
        for encoded in (png, base64.b64encode(png), png[8:40].hex().encode()):
            assert encoded[:24] not in raw
        assert len(raw) < 3000

        async with jobs_socket(cookies[SESSION_COOKIE]) as (communicator, _):
            async with in_thread(celery_worker(celery_client, env, tmp_path, name="files", queues="files")):
                updates = await job_updates_until(communicator, [created["id"]])
        done = updates[-1]
        assert done["result"]["bytes"] == len(png) and done["files"][0]["name"] == "copy.bin"
        with await asyncio.to_thread(browser.open, site + done["files"][0]["url"], None, 10) as response:
            assert response.read() == png[::-1]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        stranger = urllib.request.build_opener()
        for url in (done["files"][0]["url"], done["input_file"]["url"]):
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(stranger.open, site + url, None, 10)
            assert refused.value.code == 404
            assert json.loads(refused.value.read())["error"]["code"] == "not_found"


@pytest.mark.redis
async def test_a_socket_idle_longer_than_a_redis_pop_still_gets_its_job_update(redis_db, live_db, redis_layer):
    """redis-py 8 timed sockets out after 5 s, the length of channels_redis's blocking pop: every
    socket idle for 5 s was torn down (django/channels_redis#422). The layer's socket timeout is longer."""
    from asgiref.sync import sync_to_async

    from webapp.jobs import events
    from webapp.jobs.models import Job

    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        assert await communicator.receive_nothing(timeout=6.5)  # idle past one 5 s pop
        (job_id,) = await create_jobs(session, "toy", [1])
        job = await database_sync_to_async(Job.objects.get)(pk=job_id)
        await sync_to_async(events.job_changed)(job)
        message = await communicator.receive_json_from(timeout=TIMEOUT)
    assert (message["type"], message["job"]["id"]) == ("job", job_id)
