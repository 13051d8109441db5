"""Faults: a worker killed, Redis killed, nothing stuck and nothing noisy (docs/worker.md).

Real parts only: the shared Redis (db from ``TEST_REDIS_URL``, flushed) for
the worker tests, and for the outage tests a private ``redis-server`` on a
free port that a test kills (SIGKILL) and starts again, empty, as a restart
without persistence leaves it. Workers and daphne are real processes
(``tests.test_worker`` helpers). Every wait polls with a deadline.

- A worker killed with SIGKILL under the default visibility timeout (300 s):
  its jobs are back and done within 30 s, and its unacknowledged messages do
  not come back later (``webapp.jobs.liveness``: heartbeats, dead workers).
- Redis killed and restarted while jobs are queued and running: every job
  ends (the reaper sends again what Redis lost).
- Redis killed under open websockets: clean closes and clean handshakes, an
  answer for the live prediction in flight, a socket that works after
  recovery, and a few log lines instead of tracebacks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.cookiejar
import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.live_server import asgi_server, free_port, wait_until
from tests.test_worker import (  # noqa: F401  (fixtures)
    SESSION_COOKIE,
    TIMEOUT,
    RawWebsocket,
    broker_idle,
    celery_client,
    celery_worker,
    create_jobs,
    enqueue,
    in_thread,
    jobs_by_id,
    jobs_socket,
    job_updates_until,
    let_through,
    live_db,
    log_tail,
    new_session,
    redis_db,
    redis_layer,
    toy_env,
    toy_files,
    wait_for_jobs,
)

BACK_WITHIN = 30  # seconds from a worker's death to its jobs done elsewhere


# --- A Redis of our own, to kill --------------------------------------------------------


class ChaosRedis:
    """A ``redis-server`` on a free port without persistence: ``kill()`` it, ``start()`` it again (empty)."""

    def __init__(self, log: Path):
        self.port, self.log, self.process = free_port(), log, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_until(self.answers, timeout=TIMEOUT, what=f"redis-server on port {self.port}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=TIMEOUT)


@pytest.fixture
def chaos_redis(tmp_path):
    import shutil

    if not shutil.which("redis-server"):
        from tests.conftest import require

        require(False, "redis-server is not installed")
    server = ChaosRedis(tmp_path / "chaos-redis.log")
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


@contextlib.contextmanager
def celery_app(url: str):
    from celery import Celery

    app = Celery("faults", broker=url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    try:
        yield app
    finally:
        app.close()


def tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback (most recent call last)")


# --- Liveness in this process: the shared Redis as the broker, the test database -------


@pytest.fixture
def broker(redis_db, celery_client, monkeypatch):
    """``webapp.jobs.liveness.Broker`` on the test Redis; messages it sends go there too."""
    from webapp.jobs import liveness

    monkeypatch.setattr(
        liveness, "send", lambda job: celery_client.send_task("jobs.execute", args=[str(job.pk)], queue=job.serving)
    )
    opened = liveness.Broker.open(celery_client)
    yield opened
    opened.close()


def queued_jobs(n: int, serving: str = "toy", age: float = 3600, status: str = "queued", worker: str = "") -> list:
    from django.utils import timezone

    from webapp.jobs.models import Job

    jobs = [Job.objects.create(serving=serving, input=i, input_summary=str(i), session_key="s") for i in range(n)]
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(
        queued_at=timezone.now() - timezone.timedelta(seconds=age), status=status, worker=worker,
        attempts=1 if status == "running" else 0,
    )
    for job in jobs:
        job.refresh_from_db()
    return jobs


def delivered(redis_db, client, job, seconds_ago: float, queue: str = "toy") -> str:
    """Send ``job``'s message and move it to the unacknowledged hash as a worker's delivery
    ``seconds_ago`` leaves it (what kombu's Redis QoS writes: the message, exchange, routing key)."""
    enqueue(client, [str(job.pk)], queue)
    message = json.loads(redis_db.lpop(queue))  # the newest: kombu pushes on the left, workers pop on the right
    assert message["headers"]["task"] == "jobs.execute"
    tag, route = f"tag-{job.pk}", message["properties"]["delivery_info"]
    redis_db.hset("unacked", tag, json.dumps([message, route["exchange"], route["routing_key"]]))
    redis_db.zadd("unacked_index", {tag: time.time() - seconds_ago})
    return tag


def messages_in(redis_db, queue: str = "toy") -> list[str]:
    from webapp.jobs.liveness import job_of

    return [job_of(json.loads(raw)) for raw in redis_db.lrange(queue, 0, -1)]


@pytest.mark.django_db(transaction=True)
def test_a_job_run_in_the_web_process_records_web_and_its_pid():
    import os

    import mlservices
    from mlservices.testing import Toy

    from webapp.jobs.execution import execute_job
    from webapp.jobs.models import Job

    mlservices.register("toy-web")(lambda: Toy().serving("toy-web", batch_size=1, batch_timeout_ms=0))
    mlservices.configure({"toy-web": {}}, device="cpu")
    try:
        job = Job.objects.create(serving="toy-web", input=4, input_summary="4", session_key="s")
        execute_job(job.pk)
    finally:
        mlservices.configure({})
        mlservices.registry.unregister("toy-web")
    job.refresh_from_db()
    assert (job.status, job.worker) == ("done", f"web:{os.getpid()}")


@pytest.mark.redis
def test_job_of_reads_the_job_id_from_a_real_celery_message(redis_db, celery_client):
    from webapp.jobs.liveness import job_of

    celery_client.send_task("jobs.execute", args=["4c1f"], queue="toy")
    celery_client.send_task("jobs.predict", args=["toy", 1, "reply", 1], queue="toy")
    execute, predict = (json.loads(raw) for raw in redis_db.lrange("toy", 0, -1)[::-1])
    assert job_of(execute) == "4c1f"
    assert job_of(predict) is None
    assert job_of({"headers": {"task": "jobs.execute"}, "body": base64.b64encode(b"not json").decode(),
                   "properties": {"body_encoding": "base64"}}) is None


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_reaper_sends_again_only_the_queued_jobs_whose_message_redis_lost(settings, broker, redis_db, celery_client):
    from webapp.jobs.liveness import reap

    settings.JOBS_REQUEUE_AFTER = 60
    broker.beat("w@host:1", {"servings": ["toy"]}, ttl=60)
    lost, waiting, held, stale = queued_jobs(4)
    (young,) = queued_jobs(1, age=5)
    enqueue(celery_client, [str(waiting.pk)], "toy")
    stale_tag = delivered(redis_db, celery_client, stale, seconds_ago=3600)  # its worker died long ago
    delivered(redis_db, celery_client, held, seconds_ago=5)  # a worker has just taken it

    counts = reap(broker)

    assert counts == {"sent again": 1, "restored": 1, "lost": 0, "unserved": 0}
    assert sorted(messages_in(redis_db)) == sorted([str(waiting.pk), str(lost.pk), str(stale.pk)])
    assert not redis_db.hexists("unacked", stale_tag)  # moved back, so it cannot come back a second time
    assert redis_db.hlen("unacked") == 1  # held: a worker took it 5 s ago
    assert str(young.pk) not in messages_in(redis_db)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_job_lost_too_often_fails_as_lost_and_one_no_worker_serves_fails_as_unserved(settings, broker):
    from webapp.jobs.liveness import reap

    settings.JOBS_REQUEUE_AFTER, settings.JOBS_MAX_REQUEUES, settings.JOBS_UNSERVED_AFTER = 60, 2, 300
    broker.beat("w@host:1", {"servings": ["toy"]}, ttl=60)
    (lost,) = queued_jobs(1)
    (unserved,) = queued_jobs(1, serving="windows", age=400)
    (waits,) = queued_jobs(1, serving="windows", age=100)  # not yet JOBS_UNSERVED_AFTER: a worker may come

    outcomes = []
    for _ in range(3):
        outcomes.append(reap(broker))
        broker.client.delete("toy")  # lost again (Redis restarted, say)
    lost.refresh_from_db(), unserved.refresh_from_db(), waits.refresh_from_db()

    assert [o["sent again"] for o in outcomes] == [1, 1, 0]
    assert [o["unserved"] for o in outcomes] == [1, 0, 0]
    assert (lost.status, lost.error_code) == ("failed", "lost")
    assert "lost 3 times" in lost.error and "Submit it again" in lost.error
    assert (unserved.status, unserved.error_code) == ("failed", "unserved")
    assert "no worker serves windows" in unserved.error and "MLSERVICES_WORKER_SERVINGS" in unserved.error
    assert waits.status == "queued"


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_dead_workers_running_jobs_go_back_with_their_unacknowledged_delivery(broker, redis_db, celery_client):
    from webapp.jobs.liveness import sweep_dead_workers

    broker.beat("alive@host:1", {"servings": ["toy"]}, ttl=60)
    mine, lost_message = queued_jobs(2, status="running", worker="dead@host:2")
    (other,) = queued_jobs(1, status="running", worker="alive@host:1")
    tag = delivered(redis_db, celery_client, mine, seconds_ago=2)

    assert sweep_dead_workers(broker) == 2

    for job in (mine, lost_message, other):
        job.refresh_from_db()
    assert (mine.status, lost_message.status, other.status) == ("queued", "queued", "running")
    assert sorted(messages_in(redis_db)) == sorted([str(mine.pk), str(lost_message.pk)])
    assert not redis_db.hexists("unacked", tag)  # restored now, not again after the visibility timeout
    redelivered = json.loads(redis_db.lrange("toy", 0, -1)[-1])
    assert redelivered["headers"]["redelivered"] is True
    assert sweep_dead_workers(broker) == 0  # once


# --- A worker killed with SIGKILL, the default visibility timeout ----------------------------


async def kill(worker) -> float:
    """SIGKILL ``worker``; the monotonic time it died."""
    worker.process.send_signal(signal.SIGKILL)
    assert await asyncio.to_thread(worker.process.wait, TIMEOUT) == -signal.SIGKILL
    return time.monotonic()


@pytest.mark.redis
@pytest.mark.worker
async def test_a_sigkilled_workers_jobs_are_done_elsewhere_within_30_s_under_the_default_visibility_timeout(
    tmp_path, toy_files, redis_db, redis_url, live_db, redis_layer, celery_client
):
    """Visibility timeout 300 s (the default): the killed worker's heartbeat expires (10 s), a live
    worker moves its 8 unacknowledged deliveries back to the queue and runs them; nothing is left
    in ``unacked`` to come back at 300 s."""
    env = toy_env(live_db, redis_url, toy_files, batch_size=4, JOBS_MAX_ATTEMPTS="5")
    assert "CELERY_VISIBILITY_TIMEOUT" not in env
    session = await new_session()
    async with jobs_socket(session) as (communicator, _):
        ids = await create_jobs(session, "toy", list(range(8)))
        async with in_thread(celery_worker(celery_client, env, tmp_path, name="doomed", queues="toy")) as doomed:
            enqueue(celery_client, ids, "toy")
            running = await wait_for_jobs(ids, statuses=("running",))
            await asyncio.to_thread(wait_until, toy_files.announce.exists, timeout=TIMEOUT, what="a batch in the model")
            async with in_thread(celery_worker(celery_client, env, tmp_path, name="survivor", queues="toy")) as survivor:
                died = await kill(doomed)
                toy_files.gate.touch()
                jobs = await wait_for_jobs(ids, timeout=BACK_WITHIN)
                back_after = time.monotonic() - died
                await asyncio.to_thread(
                    wait_until, lambda: broker_idle(redis_db, "toy"), timeout=TIMEOUT, what="the broker to drain"
                )
        updates = await job_updates_until(communicator, ids)
        assert await communicator.receive_nothing(timeout=0.5)

    assert back_after < BACK_WITHIN
    assert {j.worker for j in running.values()} == {f"{doomed.node}:{doomed.process.pid}"}
    assert {j.worker for j in jobs.values()} == {f"{survivor.node}:{survivor.process.pid}"}
    assert {(j.status, j.attempts) for j in jobs.values()} == {("done", 2)}
    assert {n: jobs[i].result for n, i in enumerate(ids)} == {n: {"input": n, "output": 2 * n} for n in range(8)}
    assert sorted(u["id"] for u in updates if u["status"] == "done") == sorted(ids)  # each done once
    assert {u["status"] for u in updates} == {"running", "queued", "done"}  # pushed back to queued, then run
    survivor_log = survivor.log.read_text()
    assert f"worker {doomed.node}:{doomed.process.pid} is dead (no heartbeat for 10 s): 8 of its running jobs" in survivor_log


@pytest.mark.redis
@pytest.mark.worker
async def test_a_worker_restarted_under_its_name_puts_its_earlier_jobs_back_at_start(
    tmp_path, toy_files, redis_db, redis_url, live_db, celery_client
):
    """``make stack`` restarts a killed worker under the same node name: the new process puts the jobs
    the old one was running back at once, without waiting for its heartbeat to expire (120 s here)."""
    env = toy_env(live_db, redis_url, toy_files, batch_size=4, JOBS_MAX_ATTEMPTS="5", JOBS_WORKER_DEAD_AFTER="120")
    session = await new_session()
    ids = await create_jobs(session, "toy", list(range(4)))
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="phoenix", queues="toy")) as first:
        enqueue(celery_client, ids, "toy")
        await wait_for_jobs(ids, statuses=("running",))
        died = await kill(first)
    toy_files.gate.touch()
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="phoenix", queues="toy")) as second:
        jobs = await wait_for_jobs(ids, timeout=BACK_WITHIN)
        back_after = time.monotonic() - died
    assert back_after < BACK_WITHIN
    assert {(j.status, j.attempts, j.worker) for j in jobs.values()} == {
        ("done", 2, f"{second.node}:{second.process.pid}")}
    assert f"4 running jobs of an earlier worker named {second.node} are back on their queues" in second.log.read_text()
    assert broker_idle(redis_db, "toy")


# --- Redis killed and restarted empty ---------------------------------------------------------


def windows_input(value: int, windows: int = 2) -> dict:
    return {"windows": windows, "value": value, "fail_at": -1}


def windows_result(value: int, windows: int = 2) -> dict:
    outputs = [2 * (value + i) for i in range(windows)]
    return {"outputs": outputs, "total": sum(outputs)}


@pytest.mark.redis
@pytest.mark.worker
async def test_every_job_ends_when_redis_restarts_empty_under_queued_and_running_jobs(
    tmp_path, toy_files, chaos_redis, live_db
):
    """4 jobs running in the worker (one window through, the next held in the model), 6 waiting in
    the queue; Redis is killed and started again empty. The running ones finish; the reaper sends
    the lost ones again (thresholds shortened to seconds here; docs/worker.md has the defaults)."""
    env = toy_env(
        live_db, chaos_redis.url, toy_files, batch_size=1, serving="windows", JOBS_REQUEUE_AFTER="2",
        JOBS_REAPER_INTERVAL="1", JOBS_WORKER_HEARTBEAT="0.5", JOBS_WORKER_DEAD_AFTER="3",
    )
    let_through(toy_files.gate, 1)
    session = await new_session()
    ids = await create_jobs(session, "windows", [windows_input(10 * n) for n in range(10)])
    with celery_app(chaos_redis.url) as client:
        async with in_thread(celery_worker(client, env, tmp_path, name="chaos", queues="windows", concurrency=4)) as worker:
            enqueue(client, ids, "windows")

            def four_running_one_window_done():
                jobs = jobs_by_id(ids)
                return (sum(j.status == "running" for j in jobs.values()) == 4
                        and toy_files.announce.exists()  # written when the first batch starts
                        and len(toy_files.announce.read_text().splitlines()) == 2)  # one passed, one held

            await asyncio.to_thread(wait_until, four_running_one_window_done, timeout=TIMEOUT,
                                    what="4 jobs running, 6 queued")
            chaos_redis.kill()
            chaos_redis.start()
            let_through(toy_files.gate)
            jobs = await wait_for_jobs(ids, timeout=60)  # the deadline of "nothing stuck"
    assert {n: (jobs[i].status, jobs[i].result) for n, i in enumerate(ids)} == {
        n: ("done", windows_result(10 * n)) for n in range(10)}
    assert all([p["index"] for p in j.partials] == [0, 1] for j in jobs.values())
    log = worker.log.read_text()
    assert "reaper: of 6 jobs queued for over 2 s, 6 sent again" in log
    assert tracebacks(worker.log) == 0, log_tail(worker.log, 6000)


# --- Redis killed under open websockets -------------------------------------------------------


async def frame(page: RawWebsocket) -> tuple[int, bytes]:
    """The next frame from the server that is not a ping: (opcode, payload)."""
    while True:
        first, second = await asyncio.wait_for(page.reader.readexactly(2), TIMEOUT)
        n = second & 0x7F
        if n >= 126:
            n = int.from_bytes(await page.reader.readexactly(2 if n == 126 else 8), "big")
        payload = await asyncio.wait_for(page.reader.readexactly(n), TIMEOUT)
        if first & 0x0F != 0x9:
            return first & 0x0F, payload


async def next_message(page: RawWebsocket) -> dict:
    opcode, payload = await frame(page)
    assert opcode == 0x1, f"opcode {opcode}: not a text frame"
    return json.loads(payload)


async def messages_until_closed(page: RawWebsocket) -> tuple[list[dict], int]:
    """Every message until the server's close frame, and its close code."""
    messages = []
    while True:
        opcode, payload = await frame(page)
        if opcode == 0x8:
            return messages, int.from_bytes(payload[:2], "big")
        assert opcode == 0x1, opcode
        messages.append(json.loads(payload))


def sign_in(site: str) -> tuple[urllib.request.OpenerDirector, dict]:
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    browser.open(site + "/", timeout=10).read()
    return browser, {c.name: c.value for c in jar}


def post_job(site: str, browser, cookies: dict, serving: str, input: dict) -> dict:
    request = urllib.request.Request(
        site + "/api/jobs", data=json.dumps({"serving": serving, "input": input}).encode(), method="POST",
        headers={"Content-Type": "application/json", "X-CSRFToken": cookies["csrftoken"]},
    )
    with browser.open(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


def received(log: Path, task: str) -> bool:
    return f"Task {task}[" in log.read_text(errors="replace")


@pytest.mark.redis
@pytest.mark.worker
async def test_a_redis_outage_closes_sockets_cleanly_answers_predictions_logs_little_and_the_next_socket_works(
    tmp_path, toy_files, chaos_redis, live_db
):
    """Redis dies while a page has a live prediction in flight and a job runs; during the outage a
    page connects, two jobs are posted and the running job finishes (its pushes fail). Then Redis
    comes back, empty."""
    env = toy_env(live_db, chaos_redis.url, toy_files, batch_size=1, serving="windows")
    daphne_log = tmp_path / "daphne.log"
    with celery_app(chaos_redis.url) as client:
        async with in_thread(celery_worker(client, env, tmp_path, name="ws", queues="windows")) as worker, in_thread(
            asgi_server(env, daphne_log)
        ) as site:
            browser, cookies = await asyncio.to_thread(sign_in, site)
            cookie = f"{SESSION_COOKIE}={cookies[SESSION_COOKIE]}"

            # A job held in the model, and a live prediction waiting behind it, when Redis dies.
            page = await RawWebsocket.connect(site, "/ws/jobs", cookie)
            assert (await page.receive_json())["type"] == "jobs"
            running = await asyncio.to_thread(post_job, site, browser, cookies, "windows", windows_input(1, 3))
            await page.send_json({"type": "predict", "serving": "windows", "input": windows_input(2, 1), "request_id": 7})
            await asyncio.to_thread(wait_until, lambda: received(worker.log, "jobs.predict"), timeout=TIMEOUT,
                                    what="the prediction to reach the worker")
            chaos_redis.kill()
            told, code = await messages_until_closed(page)
            await page.close()
            assert [(m["type"], m["code"], m.get("request_id")) for m in told if m["type"] == "error"] == [
                ("error", "reconnecting", 7), ("error", "reconnecting", None)]
            assert code == 4013

            # During the outage: a handshake is accepted (101, not 500), told, closed cleanly; jobs
            # posted fail at once as queue_unavailable; the running job finishes, its pushes failing.
            during = await RawWebsocket.connect(site, "/ws/jobs", cookie)
            told, code = await messages_until_closed(during)
            await during.close()
            assert ([m["code"] for m in told], code) == (["reconnecting"], 4013)
            for n in range(2):
                refused = await asyncio.to_thread(post_job, site, browser, cookies, "windows", windows_input(n))
                assert (refused["status"], refused["error_code"]) == ("failed", "queue_unavailable")
            let_through(toy_files.gate)
            assert (await wait_for_jobs([running["id"]]))[running["id"]].status == "done"

            # Back, empty: the first socket gets its jobs (the one that finished unseen included),
            # stays open past channels_redis's 5 s blocking read, and sees a new job run.
            chaos_redis.start()
            after = await RawWebsocket.connect(site, "/ws/jobs", cookie)
            try:
                snapshot = await after.receive_json()
                assert snapshot["type"] == "jobs"
                assert {j["id"]: j["status"] for j in snapshot["jobs"]}[running["id"]] == "done"
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(after.reader.readexactly(1), 6.5)
                created = await asyncio.to_thread(post_job, site, browser, cookies, "windows", windows_input(5))
                message = {}
                while message.get("type") != "job" or message["job"]["status"] != "done":
                    message = await next_message(after)
                assert message["job"]["id"] == created["id"]
                assert message["job"]["result"] == windows_result(5)
            finally:
                await after.close()

    # A few lines per process, no tracebacks: one warning per component and per kind of failure.
    daphne, worker_log = daphne_log.read_text(), worker.log.read_text()
    assert tracebacks(daphne_log) == 0 and "Exception inside application" not in daphne, daphne[-6000:]
    lines = daphne.splitlines()
    outage = [line for line in lines if line.startswith("Redis (channel layer)")]
    assert len(outage) == 2 and "is unreachable" in outage[0] and "answers again after" in outage[1], outage
    assert sum(line.startswith("could not enqueue job") for line in lines) == 1  # 2 jobs refused, 1 line
    assert sum(line.startswith("could not push the update of job") for line in lines) == 1
    assert tracebacks(worker.log) == 0, log_tail(worker.log, 6000)
    pushes = [line for line in worker_log.splitlines() if "could not push" in line]
    assert len(pushes) == 1, pushes  # of the running job's 4 pushes and the prediction's answer


@pytest.mark.redis
@pytest.mark.worker
async def test_make_stack_restarts_a_sigkilled_worker_and_its_jobs_are_done_within_30_s(
    tmp_path, toy_files, redis_db, redis_url, live_db, celery_client
):
    """Finding 5 as it was met: ``make stack`` (bin/stack.py) restarts the killed worker under the
    same node name; the jobs it was running are back at the new process's start."""
    import os
    import sys

    from tests.live_server import ROOT

    env = toy_env(live_db, redis_url, toy_files, batch_size=4, JOBS_MAX_ATTEMPTS="5", JOBS_WORKER_DEAD_AFTER="120")
    log = tmp_path / "stack.log"
    args = [sys.executable, "bin/stack.py", "--port", str(free_port()), "--concurrency", "8", "--queues", "toy"]
    with open(log, "wb") as out:
        stack = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def workers() -> list[int]:
        return [int(line.split("pid ")[1].split(":")[0]) for line in log.read_text().splitlines()
                if line.startswith("[stack] worker started, pid ")]

    def ready() -> bool:
        assert stack.poll() is None, log_tail(log)
        return "ready." in log.read_text() and bool(workers())

    try:
        await asyncio.to_thread(wait_until, ready, timeout=TIMEOUT, what="the stack's worker")
        session = await new_session()
        ids = await create_jobs(session, "toy", list(range(8)))
        enqueue(celery_client, ids, "toy")
        await wait_for_jobs(ids, statuses=("running",))
        (first,) = workers()
        os.kill(first, signal.SIGKILL)
        died = time.monotonic()
        toy_files.gate.touch()
        jobs = await wait_for_jobs(ids, timeout=BACK_WITHIN)
        back_after = time.monotonic() - died
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        await asyncio.to_thread(stack.wait, TIMEOUT)
    assert back_after < BACK_WITHIN
    assert len(workers()) == 2
    assert {(j.status, j.attempts) for j in jobs.values()} == {("done", 2)}
    assert "8 running jobs of an earlier worker named stack-worker-" in log.read_text()
