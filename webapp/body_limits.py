"""How big a request body may be and how long it may take, and the ASGI middleware that enforces it.

``limit_for(path, content_type)`` is the policy: ``DATA_UPLOAD_MAX_MEMORY_SIZE``
for ordinary requests; a multipart upload to ``/api/uploads`` or ``/api/jobs``
may carry ``MLSERVICES_UPLOAD_MAX_BYTES`` plus 64 KiB of form fields. A body
must arrive whole within ``HTTP_BODY_TIMEOUT`` seconds of the headers::

    >>> limit_for("/api/jobs", "application/json")
    Limit(max_bytes=1048576, setting='DJANGO_MAX_BODY_BYTES')

``BodyLimits`` wraps the HTTP application (webapp/asgi.py): a Content-Length
over the limit is answered 413 at once, without reading the body; a body
without one is counted as it streams and cut at the limit with 413; a body
still incomplete after the timeout gets 408. Refusals are JSON in the API's
error shape under ``/api/`` and one line of text elsewhere; the application
then sees the client disconnect, and nothing it sends goes out.

Under daphne, which reads a whole body before the application sees the
request, ``webapp.daphne_limits`` applies the same policy inside the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus

from django.conf import settings

from webapp.http_errors import error_json

UPLOAD_PATHS = ("/api/uploads", "/api/jobs")
MODEL_UPLOAD_PATH = "/admin/versions/modelversion/add/"  # webapp.versions.admin
FORM_FIELDS_ALLOWANCE = 64 * 1024
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Limit:
    max_bytes: int | None  # None: no limit (DATA_UPLOAD_MAX_MEMORY_SIZE = None)
    setting: str  # the variable that sets it


def limit_for(path: str, content_type: str) -> Limit:
    """The most bytes a request body to ``path`` with ``content_type`` may have."""
    if content_type.split(";")[0].strip().lower() == MULTIPART and path in UPLOAD_PATHS:
        upload_max = getattr(settings, "MLSERVICES_UPLOAD_MAX_BYTES", 50 * 1024 * 1024)
        return Limit(upload_max + FORM_FIELDS_ALLOWANCE, "MLSERVICES_UPLOAD_MAX_BYTES")
    if content_type.split(";")[0].strip().lower() == MULTIPART and path == MODEL_UPLOAD_PATH:  # staff adding a model version
        return Limit(settings.MODELS_UPLOAD_MAX_BYTES + FORM_FIELDS_ALLOWANCE, "MODELS_UPLOAD_MAX_BYTES")
    return Limit(settings.DATA_UPLOAD_MAX_MEMORY_SIZE, "DJANGO_MAX_BODY_BYTES")


def body_timeout() -> float:
    return float(settings.HTTP_BODY_TIMEOUT)


def too_large_message(limit: Limit, declared: int | None) -> str:
    size = f"is {declared:,} bytes" if declared is not None else "goes past the limit"
    return f"the request body {size}; the limit here is {limit.max_bytes:,} bytes ({limit.setting}); send a smaller one"


def timeout_message() -> str:
    return (
        f"the request body did not arrive within {body_timeout():g} seconds (HTTP_BODY_TIMEOUT); "
        "send it faster, or a smaller one"
    )


def refusal(path: str, status: int, code: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a refusal: the API's JSON error under /api/, one line of text elsewhere."""
    if path.startswith("/api/"):
        content_type, body = b"application/json", error_json(code, message)
    else:
        content_type, body = b"text/plain; charset=utf-8", f"{status} {HTTPStatus(status).phrase}: {message}\n".encode()
    return [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ], body


class BodyLimits:
    """ASGI middleware: refuse bodies over ``limit_for`` (413) or slower than ``HTTP_BODY_TIMEOUT`` (408)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        limit = limit_for(path, headers.get(b"content-type", b"").decode("latin-1"))
        try:
            declared = int(headers[b"content-length"])
        except (KeyError, ValueError):
            declared = None
        guard = _Guard(path, limit, receive, send)
        if limit.max_bytes is not None and declared is not None and declared > limit.max_bytes:
            await guard.refuse(413, "too_large", too_large_message(limit, declared))
            return
        await self.app(scope, guard.receive, guard.send)


class _Guard:
    """The receive and send of one request, with the body counted and timed."""

    def __init__(self, path: str, limit: Limit, receive, send):
        self.path, self.limit = path, limit
        self._receive, self._send = receive, send
        self.deadline = asyncio.get_running_loop().time() + body_timeout()
        self.received = 0
        self.body_done = False
        self.refused = False
        self.response_started = False

    async def receive(self):
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            await self.refuse(408, "timeout", timeout_message())
            return {"type": "http.disconnect"}
        if message["type"] != "http.request":
            self.body_done = True
            return message
        self.received += len(message.get("body", b""))
        if self.limit.max_bytes is not None and self.received > self.limit.max_bytes:
            await self.refuse(413, "too_large", too_large_message(self.limit, None))
            return {"type": "http.disconnect"}
        self.body_done = not message.get("more_body", False)
        return message

    async def send(self, message):
        if not self.refused:  # after a refusal the application's answer is dropped
            self.response_started = True
            await self._send(message)

    async def refuse(self, status: int, code: str, message: str):
        self.refused = True
        if self.response_started:  # too late for a status: the disconnect ends it
            return
        headers, body = refusal(self.path, status, code, message)
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})
