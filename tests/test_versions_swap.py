"""Hot swaps for real: versions activated, canaried and rolled back while jobs keep flowing.

A real Celery worker (``celery -A webapp worker -P threads``, Redis broker,
a private migrated database) serves ``sentiment`` from the model repository;
the test keeps a stream of jobs going (at most ``IN_FLIGHT`` unfinished at
once) and changes the versions mid-stream: by the broadcast every action
sends (``mlservices_sync``), or by the worker's poll when the change comes from
``manage.py models`` in another process. Every job must finish, and each must
name the version whose weights produced it: its ``model_version`` is
"<version>@sha256:<12 hex of that version's weights>" and its scores are
exactly what that version's model answers. The in-process mode swaps the same
way inside a daphne web process. Waits poll with a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import sys
import time

import pytest
from channels.db import database_sync_to_async

from tests.live_server import ROOT, asgi_server, base_env, wait_until
from tests.test_versions import labelled_tsv, tiny_versions  # noqa: F401 (fixtures)
from tests.test_worker import (  # noqa: F401 (fixtures)
    TIMEOUT, celery_client, celery_worker, create_jobs, enqueue, in_thread, jobs_by_id, live_db, new_session,
    redis_db, report, wait_for_jobs, worker_env,
)

pytestmark = [pytest.mark.redis, pytest.mark.worker]
TEXT = "i love this movie but the plot was bad"
IN_FLIGHT = 6


@pytest.fixture
def repository(tmp_path, monkeypatch):
    root = tmp_path / "repository"
    monkeypatch.setenv("MLSERVICES_MODEL_REPOSITORY", str(root))
    return root


@pytest.fixture
def expected(tiny_versions):
    """{model_version: the scores it answers for TEXT}, computed here from each version's own folder."""
    import mlservices

    answers = {}
    for name in ("v1", "v2"):
        folder = getattr(tiny_versions, name)
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
        loaded = mlservices.registry.build("sentiment", model=str(folder)).setup("cpu")
        answers[f"{name}@sha256:{digest}"] = loaded.run(TEXT)["scores"]
    assert len({json.dumps(s, sort_keys=True) for s in answers.values()}) == 2, "the two versions must answer differently"
    return answers


@database_sync_to_async
def stored(folders, names=("v1", "v2"), active=None, history=()):
    """Import the tiny versions ``names`` of ``folders`` (validated); ``history``: versions
    activated in turn before ``active``."""
    from webapp.versions import actions
    from webapp.versions.models import ModelVersion

    who = actions.Who(None, "test")
    for name in names:
        actions.import_path("sentiment", name, getattr(folders, name), who)
    ModelVersion.objects.filter(serving="sentiment").update(status="validated")
    for name in (*history, active):
        if name:
            actions.activate("sentiment", name, who)


@pytest.fixture
def broadcasts(settings, monkeypatch, celery_client):
    """Actions in this process broadcast to the test's worker (what a Celery-mode web process does)."""
    from webapp.versions import sync

    settings.MLSERVICES_MODE = "celery"
    monkeypatch.setattr(sync, "celery_app", lambda: celery_client)


class JobStream:
    """Keeps jobs coming (at most IN_FLIGHT unfinished) until stopped; ``ids`` in creation order."""

    def __init__(self, submit):
        self.submit, self.ids, self.marks = submit, [], {}
        self._stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def mark(self, name: str) -> None:
        """Remember how many jobs had been created at this moment."""
        self.marks[name] = len(self.ids)

    async def run(self) -> None:
        read = database_sync_to_async(jobs_by_id)
        while not self._stop.is_set():
            jobs = await read(self.ids[-IN_FLIGHT * 2:])
            if sum(j.status not in ("done", "failed") for j in jobs.values()) < IN_FLIGHT:
                self.ids += await self.submit(2)
            else:
                await asyncio.sleep(0.02)

    async def until(self, predicate, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not await database_sync_to_async(predicate)():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            await asyncio.sleep(0.05)

    def done_count(self, start: int = 0) -> int:
        return sum(j.status == "done" for j in jobs_by_id(self.ids[start:]).values())

    async def stop(self) -> dict:
        """Stop submitting; every job submitted, once finished."""
        self._stop.set()
        await self.task
        return await wait_for_jobs(list(self.ids))


@contextlib.asynccontextmanager
async def streaming(submit):
    stream = JobStream(submit)
    stream.task = asyncio.create_task(stream.run())
    try:
        yield stream
    finally:
        stream._stop.set()
        await stream.task


def worker_submitter(client, session):
    async def submit(n):
        ids = await create_jobs(session, "sentiment", [{"text": TEXT}] * n)
        enqueue(client, ids, "sentiment")
        return ids

    return submit


def check_versions(jobs: dict, ids: list[str], expected: dict) -> list[str]:
    """Every job done, on a known version that answers exactly its scores; the versions' names in order."""
    names = []
    for job_id in ids:
        job = jobs[job_id]
        assert job.status == "done", (job.status, job.error)
        assert job.model_version in expected, job.model_version
        assert job.result["model"] == job.model_version
        assert job.result["scores"] == expected[job.model_version], "the result names another version than its own"
        names.append(job.model_version.split("@")[0])
    return names


def main_version(client, node) -> str:
    return report(client, node)["servings"]["sentiment"]["version"]


def log_has(path, text: str) -> bool:
    return text in path.read_text(errors="replace")


async def test_activating_v2_mid_stream_fails_no_job_and_each_names_its_version(
    tmp_path, repository, tiny_versions, expected, redis_db, redis_url, live_db, celery_client, tiny_sentiment_model, broadcasts
):
    from webapp.versions import actions

    await stored(tiny_versions, active="v1")
    env = worker_env(
        live_db, redis_url, MLSERVICES_MODEL_REPOSITORY=str(repository), SENTIMENT_MODEL=str(tiny_sentiment_model),
        MODELS_SYNC_INTERVAL="3600",  # only the broadcast can tell it in time
    )
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="swap", queues="sentiment")) as worker:
        assert (await asyncio.to_thread(main_version, celery_client, worker.node)).startswith("v1@")  # from the database
        async with streaming(worker_submitter(celery_client, await new_session())) as stream:
            await stream.until(lambda: stream.done_count() >= 10, "10 jobs on v1")
            stream.mark("activate")
            await database_sync_to_async(actions.activate)("sentiment", "v2", actions.Who(None, "test"))
            await asyncio.to_thread(wait_until, lambda: main_version(celery_client, worker.node).startswith("v2@"),
                                    timeout=TIMEOUT, what="the worker to serve v2")
            stream.mark("switched")
            await stream.until(lambda: stream.done_count(stream.marks["switched"]) >= 10, "10 jobs after the switch")
            jobs = await stream.stop()
        await asyncio.to_thread(wait_until, lambda: log_has(worker.log, "drained and freed"), timeout=TIMEOUT,
                                what="v1 to be drained and freed")

    names = check_versions(jobs, stream.ids, expected)
    assert set(names[: stream.marks["activate"]]) == {"v1"}
    assert set(names[stream.marks["switched"]:]) == {"v2"}
    # Between the two marks either version may serve a job, in any order: the worker's threads
    # pick a job's version when its stream starts, and a job sent earlier may start later.


async def test_a_rollback_from_another_process_mid_stream_is_picked_up_by_the_workers_poll(
    tmp_path, repository, tiny_versions, expected, redis_db, redis_url, live_db, celery_client, tiny_sentiment_model
):
    await stored(tiny_versions, active="v2", history=["v1"])  # v1 was active before v2
    env = worker_env(
        live_db, redis_url, MLSERVICES_MODEL_REPOSITORY=str(repository), SENTIMENT_MODEL=str(tiny_sentiment_model),
        MODELS_SYNC_INTERVAL="0.5",
    )
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="rollback", queues="sentiment")) as worker:
        assert (await asyncio.to_thread(main_version, celery_client, worker.node)).startswith("v2@")
        async with streaming(worker_submitter(celery_client, await new_session())) as stream:
            await stream.until(lambda: stream.done_count() >= 10, "10 jobs on v2")
            stream.mark("rollback")
            rolled = await asyncio.to_thread(
                subprocess.run, [sys.executable, "manage.py", "models", "rollback", "sentiment", "--user", "oncall"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
            )
            assert rolled.returncode == 0 and rolled.stdout == "sentiment: v1 is active again\n", rolled.stderr
            await asyncio.to_thread(wait_until, lambda: main_version(celery_client, worker.node).startswith("v1@"),
                                    timeout=TIMEOUT, what="the worker to serve v1 again")
            stream.mark("switched")
            await stream.until(lambda: stream.done_count(stream.marks["switched"]) >= 10, "10 jobs after the rollback")
            jobs = await stream.stop()

    names = check_versions(jobs, stream.ids, expected)
    assert set(names[: stream.marks["rollback"]]) == {"v2"}
    assert set(names[stream.marks["switched"]:]) == {"v1"}
    assert names == sorted(names, reverse=True), "once a job ran on v1 again no later job ran on v2"


async def test_a_worker_validates_v2_then_a_50_percent_canary_serves_both_versions(
    tmp_path, repository, tiny_versions, labelled_tsv, expected, redis_db, redis_url, live_db, celery_client, broadcasts
):
    from webapp.versions import actions
    from webapp.versions.models import ModelVersion

    await stored(tiny_versions, names=("v1",), active="v1")
    who = actions.Who(None, "test")
    await database_sync_to_async(actions.import_path)("sentiment", "v2", tiny_versions.v2, who)
    env = worker_env(
        live_db, redis_url, MLSERVICES_MODEL_REPOSITORY=str(repository), SENTIMENT_VALIDATION_SET=str(labelled_tsv),
        MODELS_SYNC_INTERVAL="3600",
    )
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="canary", queues="sentiment")) as worker:
        await database_sync_to_async(actions.request_validation)("sentiment", "v2", who)  # a task on the queue
        row = await database_sync_to_async(ModelVersion.objects.get)(version="v2")
        deadline = time.monotonic() + TIMEOUT
        while row.validation.get("pending"):
            assert time.monotonic() < deadline, "the worker did not validate v2"
            await asyncio.sleep(0.1)
            await database_sync_to_async(row.refresh_from_db)()
        assert row.status == "validated", row.validation
        assert row.validation["quality"]["examples"] == 8 and row.validation["model_version"].startswith("v2@")
        assert log_has(worker.log, "versions.validate")

        await database_sync_to_async(actions.activate)("sentiment", "v2", who, canary=50)
        await asyncio.to_thread(wait_until, lambda: log_has(worker.log, "v1 (50 %), v2 (50 %)"), timeout=TIMEOUT,
                                what="the worker to route half the jobs to the canary")
        session = await new_session()
        ids = await create_jobs(session, "sentiment", [{"text": TEXT}] * 40)
        enqueue(celery_client, ids, "sentiment")
        jobs = await wait_for_jobs(ids)

    names = check_versions(jobs, ids, expected)
    assert names.count("v1") >= 10 and names.count("v2") >= 10, names  # weighted round-robin: 20 each


# --- In-process mode: the web process swaps its own runtime ---------------------------------------


def test_in_process_the_web_process_swaps_versions_mid_stream_without_failing_a_job(
    tmp_path, repository, tiny_versions, expected, live_db, tiny_sentiment_model
):
    import http.cookiejar
    import urllib.request

    asyncio.run(stored(tiny_versions, active="v1"))
    env = base_env(
        DATABASE_URL=live_db, MLSERVICES_MODEL_REPOSITORY=str(repository), SENTIMENT_MODEL=str(tiny_sentiment_model),
        MODELS_SYNC_INTERVAL="0.5", MLSERVICES_DEVICE="cpu", DJANGO_MEDIA_ROOT=str(tmp_path / "media"),
    )
    env.pop("REDIS_URL", None)
    with asgi_server(env, tmp_path / "daphne.log") as site:
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        browser.open(site + "/", timeout=30).read()
        csrf = next(c.value for c in jar if c.name == "csrftoken")

        def post() -> str:
            request = urllib.request.Request(
                site + "/api/jobs", data=json.dumps({"serving": "sentiment", "input": {"text": TEXT}}).encode(),
                headers={"Content-Type": "application/json", "X-CSRFToken": csrf}, method="POST",
            )
            with browser.open(request, timeout=30) as response:
                return json.loads(response.read())["id"]

        async def submit(n):
            return [await asyncio.to_thread(post) for _ in range(n)]

        async def scenario():
            async with streaming(submit) as stream:
                await stream.until(lambda: stream.done_count() >= 6, "6 jobs on v1")
                stream.mark("activate")
                done = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "manage.py", "models", "activate", "sentiment", "v2"],
                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                )
                assert done.returncode == 0, done.stderr

                def first_v2():
                    jobs = jobs_by_id(stream.ids)
                    return any(j.model_version.startswith("v2@") for j in jobs.values())

                await stream.until(first_v2, "a job on v2")
                stream.mark("switched")
                await stream.until(lambda: stream.done_count(stream.marks["switched"]) >= 6, "6 jobs after the switch")
                return stream, await stream.stop()

        stream, jobs = asyncio.run(scenario())
    names = check_versions(jobs, stream.ids, expected)
    assert set(names[: stream.marks["activate"]]) == {"v1"} and set(names[stream.marks["switched"]:]) == {"v2"}
    assert "ready on" in (tmp_path / "daphne.log").read_text()  # the web process itself served the models

