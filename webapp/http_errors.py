"""Every error under /api/ is JSON ``{"error": {"code", "message"}}``, as docs/api.md promises.

Django answers several errors itself, in HTML: an unknown URL (404, with
DEBUG its debug page), a method a view does not take (405, empty body), a
body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (400), an exception (500, with
DEBUG the traceback page). ``APIErrorsMiddleware`` (first in MIDDLEWARE)
rewrites any error response under /api/ that is not JSON into the documented
shape, keeping its status and headers (``Allow`` included), and answers an
exception raised by an API view with a 500 that carries no traceback, even
with DEBUG on; the traceback goes to the ``django.request`` log, once.
``csrf_failure`` (CSRF_FAILURE_VIEW) answers JSON under /api/ and a short page
elsewhere. Pages keep Django's own error pages::

    >>> error_json("not_found", "no job 7 among yours")
    b'{"error": {"code": "not_found", "message": "no job 7 among yours"}}'
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpResponseForbidden, JsonResponse
from django.utils.log import log_response

API_PREFIX = "/api/"
CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    500: "internal_error",
}
LEFT_TO_DJANGO = (Http404, PermissionDenied, BadRequest, SuspiciousOperation)


def error_json(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def is_api(request) -> bool:
    return request.path_info.startswith(API_PREFIX)


def code_for(status: int) -> str:
    return CODES.get(status) or _phrase(status).lower().replace(" ", "_").replace("-", "_")


def message_for(request, status: int, allow: str = "") -> str:
    if status == 404:
        return f"there is nothing at {request.path}; the API's endpoints are listed in docs/api.md (job ids are UUIDs)"
    if status == 405:
        return f"{request.method} is not allowed on {request.path}; use {allow or 'another method'}"
    if status == 403:
        return "permission denied; sign in as a user who may do this"
    if status == 413:
        return "the request body is too large; the limits are in docs/api.md"
    if status == 400:
        return "the request could not be read (malformed headers or body, or a Host the site does not serve)"
    if status >= 500:
        return "the server failed on this request; it has been logged. Try again, and report it if it persists"
    return f"{status} {_phrase(status)}"


class APIErrorsMiddleware:
    """Under /api/: non-JSON error responses become JSON; view exceptions become a 500 without traceback."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return self.process_response(request, self.get_response(request))

    async def _acall(self, request):
        return self.process_response(request, await self.get_response(request))

    def process_response(self, request, response):
        if response.status_code < 400 or not is_api(request) or _is_json(response):
            return response
        status = response.status_code
        body = error_json(code_for(status), message_for(request, status, response.get("Allow", "")))
        if response.streaming:
            response.streaming_content = [body]
        else:
            response.content = body
        response["Content-Type"] = "application/json"
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(body))
        return response

    def process_exception(self, request, exception):
        if not is_api(request):
            return None
        if isinstance(exception, RequestDataTooBig):
            multipart = request.content_type == "multipart/form-data"
            what = "the form fields (files aside) go" if multipart else "the body goes"
            response = _error(
                413, "too_large",
                f"{what} past the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes (DJANGO_MAX_BODY_BYTES); "
                "send less",
            )
            log_response("Request body too large: %s", request.path, response=response, request=request,
                         logger=logging.getLogger("django.security.RequestDataTooBig"))
            return response
        if isinstance(exception, LEFT_TO_DJANGO):
            return None  # Django answers (and logs) these; process_response makes the answer JSON
        response = _error(500, "internal_error", message_for(request, 500))
        log_response("Internal Server Error: %s", request.path, response=response, request=request,
                     exception=exception)
        return response


def csrf_failure(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: JSON ``csrf_failed`` for the API, a plain page for people."""
    if is_api(request):
        return _error(
            403, "csrf_failed",
            f"CSRF check failed ({reason.rstrip('.')}); send the csrftoken cookie's value in the X-CSRFToken "
            "header (any page sets the cookie), from the site's own origin",
        )
    return HttpResponseForbidden(
        "<!doctype html><title>Please reload the page</title>"
        "<h1>Please reload the page</h1>"
        "<p>Your browser sent this form without the site's security cookie, or the page was open too long. "
        "Reload the page and try again; if it keeps happening, allow cookies for this site.</p>"
    )


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status without a standard name
        return "Error"


def _is_json(response) -> bool:
    return response.get("Content-Type", "").split(";")[0].strip().lower() == "application/json"
