"""The HTTP edge: every API error is JSON in the documented shape; bodies are refused
by size (413) and by time (408) before they are read.

Django's own answers were HTML: a body too large (400), a CSRF failure (403),
a wrong method (405, empty), ``/api/jobs/not-a-uuid`` (404), an exception (500,
with DEBUG the traceback page). The body limits are tested on the ASGI
middleware with a scripted client, then against a real daphne with raw
sockets: headers promising 100 MB get 413 before any body is sent, a stalled
body gets 408 within HTTP_BODY_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
from django.http import JsonResponse
from django.test import Client
from django.urls import path

from tests.live_server import asgi_server, base_env, live_database
from webapp.body_limits import BodyLimits
from webapp.urls import urlpatterns as site_urlpatterns

BODY_TIMEOUT = 1.0  # HTTP_BODY_TIMEOUT of the live daphne


def boom(request):
    raise RuntimeError("secret detail that must not reach the client")


def fine(request):
    return JsonResponse({"ok": True})


urlpatterns = [*site_urlpatterns, path("api/boom", boom), path("boom", boom), path("api/fine", fine)]


def api_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"] == code
    return error["message"]


# --- Django's own errors under /api/ become JSON ---------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
def test_an_unknown_api_url_is_a_json_404(settings, debug):
    settings.DEBUG = debug
    message = api_error(Client().get("/api/jobs/not-a-uuid"), 404, "not_found")
    assert "/api/jobs/not-a-uuid" in message and "docs/api.md" in message


@pytest.mark.django_db
def test_a_views_own_json_error_is_left_as_it_is():
    job_id = uuid.uuid4()
    assert f"no job {job_id} among yours" in api_error(Client().get(f"/api/jobs/{job_id}"), 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("method, url, allow", [("delete", "/api/jobs", "GET, POST"), ("put", "/api/uploads", "POST")])
def test_a_wrong_method_is_a_json_405_that_keeps_the_allow_header(method, url, allow):
    response = getattr(Client(), method)(url)
    message = api_error(response, 405, "method_not_allowed")
    assert response["Allow"] == allow and f"use {allow}" in message


@pytest.mark.django_db
def test_a_csrf_failure_is_json_for_the_api_and_a_plain_page_for_people():
    client = Client(enforce_csrf_checks=True)
    response = client.post("/api/jobs", data="{}", content_type="application/json")
    message = api_error(response, 403, "csrf_failed")
    assert "CSRF cookie not set" in message and "X-CSRFToken" in message
    page = client.post("/", data={"text": "hi"})
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")
    assert "Reload the page" in page.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
def test_a_body_over_the_limit_is_a_json_413(settings, debug):
    settings.DEBUG = debug
    body = b'{"serving": "sentiment", "input": {"text": "' + b"x" * 2_000_000 + b'"}}'
    response = Client().post("/api/jobs", data=body, content_type="application/json")
    message = api_error(response, 413, "too_large")
    assert "the body goes past the limit of 1,048,576 bytes (DJANGO_MAX_BODY_BYTES)" in message


@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
def test_a_host_the_site_does_not_serve_is_a_json_400(settings, debug):
    settings.DEBUG = debug
    api_error(Client().get("/api/servings", HTTP_HOST="evil.example"), 400, "bad_request")


@pytest.mark.urls(__name__)
@pytest.mark.django_db
@pytest.mark.parametrize("debug", [True, False])
def test_an_exception_in_an_api_view_is_a_json_500_without_traceback_logged_once(settings, caplog, debug):
    settings.DEBUG = debug
    with caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).get("/api/boom")
    message = api_error(response, 500, "internal_error")
    assert "logged" in message
    assert b"secret" not in response.content and b"Traceback" not in response.content
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], RuntimeError)
    assert logged[0].name == "django.request" and "/api/boom" in logged[0].getMessage()
    assert len([r for r in caplog.records if "/api/boom" in r.getMessage()]) == 1


@pytest.mark.urls(__name__)
@pytest.mark.django_db
def test_pages_keep_djangos_own_error_pages(settings):
    settings.DEBUG = False
    response = Client(raise_request_exception=False).get("/boom")
    assert response.status_code == 500 and response["Content-Type"].startswith("text/html")
    assert Client().get("/no-such-page")["Content-Type"].startswith("text/html")


# --- the ASGI body limits, with a scripted client -----------------------------------


def http_scope(path: str, headers: dict[str, str]) -> dict:
    return {
        "type": "http", "method": "POST", "path": path, "scheme": "http",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }


async def through_limits(scope: dict, chunks: list[bytes], *, stall: bool = False):
    """Run BodyLimits around an app that reads the body then answers 200.

    Returns what went out and what the app received. ``stall``: the client
    sends ``chunks`` (each announcing more) and then nothing.
    """
    pending = [{"type": "http.request", "body": c, "more_body": stall or i < len(chunks) - 1}
               for i, c in enumerate(chunks)]
    reads, sent, app_received = [], [], []

    async def receive():
        reads.append(1)
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()  # a client that sends nothing more

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        while True:
            message = await receive()
            app_received.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    await asyncio.wait_for(BodyLimits(app)(scope, receive, send), 10)
    return sent, app_received, len(reads)


def refusal_of(sent: list[dict]) -> tuple[int, dict, bytes]:
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"], sent
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, sent[1]["body"]


async def test_a_declared_length_over_the_limit_is_refused_without_reading_or_calling_the_app():
    scope = http_scope("/api/jobs", {"content-type": "application/json", "content-length": str(100 * 1024 * 1024)})
    sent, app_received, reads = await through_limits(scope, [b"{}"])
    status, headers, body = refusal_of(sent)
    assert (status, reads, app_received) == (413, 0, [])
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "too_large"
    assert "104,857,600 bytes; the limit here is 1,048,576 bytes (DJANGO_MAX_BODY_BYTES)" in error["message"]


async def test_a_body_without_length_is_counted_and_cut_at_the_limit():
    scope = http_scope("/api/jobs", {"content-type": "application/json"})
    sent, app_received, _ = await through_limits(scope, [b"x" * 600_000, b"x" * 600_000, b"x"])
    status, _, body = refusal_of(sent)  # the app's own 200 never went out
    error = json.loads(body)["error"]
    assert status == 413 and error["code"] == "too_large"
    assert error["message"].startswith("the request body goes past the limit; the limit here is 1,048,576 bytes")
    assert app_received[-1] == {"type": "http.disconnect"} and len(app_received) == 2


async def test_a_stalled_body_gets_408_after_the_timeout(settings):
    settings.HTTP_BODY_TIMEOUT = 0.2
    scope = http_scope("/api/jobs", {"content-type": "application/json", "content-length": "1000"})
    started = time.monotonic()
    sent, app_received, _ = await through_limits(scope, [b'{"serving": '], stall=True)
    status, _, body = refusal_of(sent)
    assert status == 408 and 0.2 <= time.monotonic() - started < 2
    error = json.loads(body)["error"]
    assert error["code"] == "timeout" and "within 0.2 seconds (HTTP_BODY_TIMEOUT)" in error["message"]
    assert app_received[-1] == {"type": "http.disconnect"}


async def test_uploads_may_be_larger_and_pages_get_text(settings):
    upload = http_scope("/api/uploads", {"content-type": "multipart/form-data; boundary=x",
                                         "content-length": str(10 * 1024 * 1024)})
    sent, _, _ = await through_limits(upload, [b"--x--"])
    assert sent[0]["status"] == 200  # 10 MB is within MLSERVICES_UPLOAD_MAX_BYTES
    too_big = settings.MLSERVICES_UPLOAD_MAX_BYTES + 64 * 1024 + 1
    upload["headers"] = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"%d" % too_big)]
    status, _, body = refusal_of((await through_limits(upload, [b""]))[0])
    assert status == 413 and "(MLSERVICES_UPLOAD_MAX_BYTES)" in json.loads(body)["error"]["message"]
    page = http_scope("/", {"content-type": "application/x-www-form-urlencoded", "content-length": "2000000"})
    status, headers, body = refusal_of((await through_limits(page, [b""]))[0])
    assert status == 413 and headers["content-type"].startswith("text/plain")
    assert body.startswith(b"413 Request Entity Too Large: the request body is 2,000,000 bytes")


async def test_websockets_pass_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    await BodyLimits(app)({"type": "websocket", "path": "/ws/jobs", "headers": []}, None, None)
    assert seen == ["websocket"]


# --- a real daphne, raw sockets --------------------------------------------------


@pytest.fixture(scope="module")
def daphne(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("daphne-limits")
    with live_database(folder) as database_url:
        env = base_env(DATABASE_URL=database_url, HTTP_BODY_TIMEOUT=str(BODY_TIMEOUT), DJANGO_DEBUG="1",
                       MLSERVICES_MODE="inprocess")
        env.pop("REDIS_URL", None)
        with asgi_server(env, folder / "daphne.log") as url:
            yield url


def exchange(url: str, head: str, body: bytes | list[bytes] = b"", *, timeout: float = 15):
    """Send ``head`` (and ``body``), read until the server closes; return (status, headers, body, seconds)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        started = time.monotonic()
        try:
            for part in [body] if isinstance(body, bytes) else body:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body: the answer is already waiting
        received = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            received += chunk
    elapsed = time.monotonic() - started
    head_bytes, _, content = received.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, content, elapsed


def request_head(method: str, path: str, **headers: str) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def test_daphne_answers_413_to_headers_promising_100_mb_before_any_body_is_sent(daphne):
    head = request_head("POST", "/api/jobs", Content_Type="application/json", Content_Length=str(100_000_000))
    status, headers, body, elapsed = exchange(daphne, head)
    assert status == 413 and headers["content-type"] == "application/json" and elapsed < 5
    error = json.loads(body)["error"]
    assert error["code"] == "too_large" and "100,000,000 bytes; the limit here is 1,048,576" in error["message"]


def test_daphne_refuses_an_upload_over_its_limit_and_sends_no_100_continue(daphne, settings):
    size = settings.MLSERVICES_UPLOAD_MAX_BYTES + 64 * 1024 + 1
    head = request_head("POST", "/api/uploads", Content_Type="multipart/form-data; boundary=x",
                        Content_Length=str(size), Expect="100-continue")
    status, _, body, _ = exchange(daphne, head)
    assert status == 413 and "(MLSERVICES_UPLOAD_MAX_BYTES)" in json.loads(body)["error"]["message"]


def test_daphne_cuts_a_chunked_body_at_the_limit(daphne):
    chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
    head = request_head("POST", "/api/jobs", Content_Type="application/json", Transfer_Encoding="chunked")
    status, _, body, _ = exchange(daphne, head, [chunk] * 20 + [b"0\r\n\r\n"])
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"


@pytest.mark.parametrize(
    "path, content_type, length",
    [("/api/jobs", "application/json", 1000), ("/api/uploads", "multipart/form-data; boundary=x", 10_000_000)],
)
def test_daphne_answers_408_to_a_stalled_body_and_closes(daphne, path, content_type, length):
    head = request_head("POST", path, Content_Type=content_type, Content_Length=str(length))
    status, headers, body, elapsed = exchange(daphne, head, b"--x\r\n")
    assert status == 408 and headers["connection"] == "close"
    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + 3
    assert "HTTP_BODY_TIMEOUT" in json.loads(body)["error"]["message"]


def test_daphne_still_serves_bodies_within_the_limits_and_its_errors_are_json(daphne):
    body = json.dumps({"serving": "sentiment", "input": {"text": "x" * 500_000}}).encode()
    head = request_head("POST", "/api/jobs", Content_Type="application/json", Content_Length=str(len(body)),
                        Connection="close")
    status, _, content, _ = exchange(daphne, head, body)
    assert status == 403 and json.loads(content)["error"]["code"] == "csrf_failed"  # Django read it, then CSRF
    status, _, content, _ = exchange(daphne, request_head("GET", "/api/jobs/not-a-uuid", Connection="close"))
    assert status == 404 and json.loads(content)["error"]["code"] == "not_found"
