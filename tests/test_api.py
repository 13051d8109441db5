"""The JSON API in in-process mode: submit, read, list; owners see only their jobs."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

import mlservices
from tests.live_server import wait_until
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def inprocess(settings, tiny_sentiment_model):
    settings.MLSERVICES_MODE = "inprocess"
    settings.MLSERVICES = {"sentiment": {"model": str(tiny_sentiment_model), "batch_timeout_ms": 1}}
    mlservices.configure(settings.MLSERVICES, device="cpu")
    yield
    mlservices.configure({})


def submit(client: Client, body, **extra):
    return client.post("/api/jobs", data=json.dumps(body), content_type="application/json", **extra)


def finished(client: Client, job_id: str) -> dict:
    def done():
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in ("done", "failed") else None

    return wait_until(done, timeout=60, what=f"job {job_id} to finish")


def test_submitted_job_runs_and_is_readable():
    client = Client()
    response = submit(client, {"serving": "sentiment", "input": {"text": "i love this movie"}})
    assert response.status_code == 201
    job = response.json()
    assert job["status"] == "queued" and job["input_summary"] == "i love this movie"
    assert response["Location"] == f"/api/jobs/{job['id']}"
    job = finished(client, job["id"])
    assert job["status"] == "done", job
    assert job["result"]["label"] in ("NEGATIVE", "POSITIVE")
    assert job["model_version"] == job["result"]["model"]
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]
    assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == [job["id"]]


def test_another_visitors_job_is_invisible():
    alice, bob = Client(), Client()
    job_id = submit(alice, {"serving": "sentiment", "input": {"text": "mine"}}).json()["id"]
    assert bob.get(f"/api/jobs/{job_id}").status_code == 404
    assert bob.get("/api/jobs").json()["jobs"] == []
    finished(alice, job_id)


def test_another_users_job_is_invisible():
    alice = User.objects.create_user("alice", password="pw")
    bob = User.objects.create_user("bob", password="pw")
    a, b = Client(), Client()
    a.force_login(alice)
    b.force_login(bob)
    job_id = submit(a, {"serving": "sentiment", "input": {"text": "alice's"}}).json()["id"]
    assert Job.objects.get(pk=job_id).owner == alice
    assert b.get(f"/api/jobs/{job_id}").status_code == 404
    assert b.get("/api/jobs").json()["jobs"] == []
    finished(a, job_id)


@pytest.mark.parametrize(
    "body, status, code, message",
    [
        ({"serving": "sentimant", "input": {"text": "x"}}, 404, "unknown_serving", "; known servings: "),
        ({"serving": "sentiment", "input": {"text": "  "}}, 400, "invalid_input", "the text is empty"),
        ({"serving": "sentiment", "input": {"text": "x" * 20_001}}, 400, "invalid_input", "limit is 20,000"),
        ({"serving": "sentiment", "input": 7}, 400, "invalid_input", "the input is int"),
        ({"input": {"text": "x"}}, 400, "invalid_input", "'serving' is missing"),
        ({"serving": "sentiment", "input": {"text": "x"}, "priority": 1}, 400, "invalid_input", "unknown field"),
        (["sentiment"], 400, "invalid_json", "send an object"),
    ],
)
def test_bad_requests_get_a_clear_error_and_create_nothing(body, status, code, message):
    response = submit(Client(), body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]
    assert Job.objects.count() == 0


def test_a_text_serving_takes_a_multipart_form_too():
    client = Client()
    response = client.post("/api/jobs", data={"serving": "sentiment", "text": "i love it"})
    assert response.status_code == 201, response.content
    assert finished(client, response.json()["id"])["status"] == "done"
    missing = client.post("/api/jobs", data={"serving": "sentiment"})
    assert missing.status_code == 400 and "send" in missing.json()["error"]["message"]


def test_non_json_body_is_415():
    response = Client().post("/api/jobs", data="serving=sentiment", content_type="text/plain")
    assert response.status_code == 415


def test_huge_body_is_refused_before_it_is_read(settings):
    response = Client().post(
        "/api/jobs", data=b'{"serving": "sentiment", "input": {"text": "' + b"x" * 2_000_000 + b'"}}',
        content_type="application/json",
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert Job.objects.count() == 0


def test_csrf_stays_on():
    client = Client(enforce_csrf_checks=True)
    assert submit(client, {"serving": "sentiment", "input": {"text": "x"}}).status_code == 403
    client.get("/")  # the page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = submit(client, {"serving": "sentiment", "input": {"text": "i love it"}}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201
    finished(client, response.json()["id"])


def test_missing_model_fails_the_job_with_install_instructions(settings, tmp_path):
    settings.MLSERVICES = {"sentiment": {"model": str(tmp_path / "absent")}}
    mlservices.configure(settings.MLSERVICES, device="cpu")
    client = Client()
    job = finished(client, submit(client, {"serving": "sentiment", "input": {"text": "hi"}}).json()["id"])
    assert job["status"] == "failed" and job["error_code"] == "model_not_installed"
    assert "python -m mlservices download sentiment" in job["error"]


def test_home_page_lists_the_visitors_jobs_after_a_reload():
    client = Client()
    job_id = submit(client, {"serving": "sentiment", "input": {"text": "remember me"}}).json()["id"]
    finished(client, job_id)
    page = client.get("/").content.decode()
    assert "remember me" in page and job_id in page
    assert "remember me" not in Client().get("/").content.decode()


def test_an_owner_with_20_active_jobs_gets_429_with_retry_after_and_others_do_not(settings):
    settings.JOBS_MAX_ACTIVE_PER_OWNER = 20
    client = Client()
    client.get("/")
    session_key = client.session.session_key
    Job.objects.bulk_create(
        Job(serving="sentiment", input={"text": "x"}, input_summary="x", session_key=session_key) for _ in range(20)
    )
    refused = submit(client, {"serving": "sentiment", "input": {"text": "one more"}})
    assert refused.status_code == 429 and refused["Retry-After"] == str(settings.JOBS_RETRY_AFTER_S)
    assert refused.json()["error"]["code"] == "too_many_jobs" and "limit is 20" in refused.json()["error"]["message"]
    assert Job.objects.filter(session_key=session_key).count() == 20
    assert submit(Client(), {"serving": "sentiment", "input": {"text": "someone else"}}).status_code == 201
    Job.objects.filter(session_key=session_key).update(status="done")
    assert submit(client, {"serving": "sentiment", "input": {"text": "now it fits"}}).status_code == 201


def test_a_new_web_process_resumes_the_jobs_a_dead_one_left():
    """In-process mode: jobs queued, or running on a web process that no longer exists, run again."""
    import os

    from webapp.jobs.dispatch import resume_unfinished

    left = Job.objects.create(serving="sentiment", input={"text": "i love it"}, input_summary="queued", session_key="s")
    orphan = Job.objects.create(serving="sentiment", input={"text": "so bad"}, input_summary="orphan", session_key="s",
                                status="running", worker="web:999999999", attempts=1)
    mine = Job.objects.create(serving="sentiment", input={"text": "mine"}, input_summary="mine", session_key="s",
                              status="running", worker=f"web:{os.getpid()}", attempts=1)
    assert resume_unfinished() == 2

    def both_done():
        return set(Job.objects.filter(pk__in=[left.pk, orphan.pk]).values_list("status", flat=True)) == {"done"}

    wait_until(both_done, timeout=60, what="the resumed jobs to finish")
    assert Job.objects.get(pk=orphan.pk).attempts == 2
    assert Job.objects.get(pk=mine.pk).status == "running"  # this process may still be running it
