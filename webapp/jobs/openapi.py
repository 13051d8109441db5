"""The REST API as an OpenAPI 3.1 document, generated from the registered servings.

``document()`` is built at request time (``GET /api/schema/``): every serving
``GET /api/servings`` lists becomes a branch of the job request (``serving``
is its name as a ``const``, ``input`` its input spec as a JSON schema, with
the site's effective limits), so a serving added by one module, or by a
package's entry point, is described without touching this file. Nothing is
loaded; only the servings' declared specs are read::

    doc = document()
    doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    # -> [{"title": "sentiment", "properties": {"serving": {"const": "sentiment"}, "input": {...}}, ...}, ...]

The fixed parts (the job, the upload, the error) mirror ``Job.as_json``,
``Upload.as_json`` and ``webapp.http_errors``; tests/test_openapi.py checks
real responses against them.
"""

from __future__ import annotations

import json
from importlib import metadata

import mlservices
from django.conf import settings
from mlservices.spec import FILE_FIELD, KINDS, TEXT_FIELD

from .. import body_limits
from . import validation
from .api import LIST_LIMIT
from .models import Job

OPENAPI_VERSION = "3.1.0"
PACKAGE = "mlservices-site"
SAMPLE_TEXT = "I love this movie."
SAMPLE_UPLOAD_ID = "00000000-0000-4000-8000-000000000000"  # a placeholder: the id POST /api/uploads answers
JSON = "application/json"
MULTIPART = "multipart/form-data"
REF = "#/components/schemas/"


def document() -> dict:
    """The OpenAPI document of this site's REST API, for the servings registered now."""
    names = mlservices.names()
    file_servings = [n for n in names if validation.definition(n).spec.is_file]
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "mlservices REST API",
            "version": _version(),
            "summary": "Submit jobs to the site's servings, read them and their files, upload inputs.",
            "description": _description(names),
        },
        "servers": [{"url": "/", "description": "this site"}],
        "tags": [
            {"name": "servings", "description": "What can be asked for."},
            {"name": "jobs", "description": "Work that runs in the background; yours only."},
            {"name": "uploads", "description": "Files for file servings, checked at once."},
            {"name": "schema", "description": "This document."},
        ],
        "paths": {
            "/api/servings": {"get": _list_servings()},
            "/api/jobs": {"get": _list_jobs(), "post": _submit_job(names, file_servings)},
            "/api/jobs/{job_id}": {"parameters": [_job_id()], "get": _read_job()},
            "/api/jobs/{job_id}/files/{name}": {"parameters": [_job_id(), _file_name()], "get": _read_file()},
            "/api/uploads": {"post": _upload(file_servings)},
            "/api/schema/": {"get": _read_schema()},
        },
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before sending again (JOBS_RETRY_AFTER_S).",
                    "schema": {"type": "integer", "minimum": 0},
                    "example": settings.JOBS_RETRY_AFTER_S,
                },
            },
            "securitySchemes": _security_schemes(),
        },
    }


def input_schema(name: str) -> dict:
    """The JSON schema of ``input`` in ``{"serving": name, "input": ...}``, with the site's limits."""
    spec = validation.spec_json(name)
    options = spec["options"]["properties"]
    if spec["kind"] == "text":
        text = {"type": "string", "maxLength": spec["limits"]["max_chars"],
                "description": f"the text, at most {spec['limits']['max_chars']:,} characters"}
        as_object = {"type": "object", "properties": {TEXT_FIELD: text, **options},
                     "required": [TEXT_FIELD], "additionalProperties": False}
        return {"oneOf": [text, as_object], "description": "the text, or an object with the text and options"}
    if spec["kind"] in ("image", "audio"):
        return {
            "type": "object",
            "properties": {FILE_FIELD: _upload_reference(name, spec), **options},
            "required": [FILE_FIELD],
            "additionalProperties": False,
        }
    read = "; when an object, these options are read from it" if options else ""
    schema: dict = {"description": "any JSON value" + read}
    if options:
        schema["properties"] = options
    return schema


def example_input(name: str):
    """A valid ``input`` for ``name``: an upload placeholder or the serving's own sample text, plus
    option defaults; for a JSON serving its first smoke input it accepts, else the option defaults."""
    serving = validation.definition(name)
    spec = serving.spec
    options = {k: v for k, v in spec.defaults().items() if v is not None}
    if spec.is_file:
        return {FILE_FIELD: SAMPLE_UPLOAD_ID, **options}
    if spec.kind == "text":
        return {TEXT_FIELD: _sample_text(name, serving), **options}
    return next((s for s in serving.smoke if _accepts(serving, s)), options)


def _accepts(serving: mlservices.Serving, sample) -> bool:
    """Whether ``sample`` is plain JSON the serving's door takes."""
    if not isinstance(sample, (dict, list, str, int, float, bool)):
        return False
    try:
        json.dumps(sample, allow_nan=False)
        serving.check(sample)
    except (TypeError, ValueError, mlservices.ServingError):
        return False
    return True


def _sample_text(name: str, serving: mlservices.Serving) -> str:
    """The first of the serving's smoke inputs that is text it accepts, else ``SAMPLE_TEXT``."""
    limit = validation.limits(name)["max_chars"]
    for sample in serving.smoke:
        text = sample.get(TEXT_FIELD) if isinstance(sample, dict) else sample
        if isinstance(text, str) and 0 < len(text) <= min(limit, 200) and _accepts(serving, {TEXT_FIELD: text}):
            return text
    return SAMPLE_TEXT[:limit]


def _upload_reference(name: str, spec: dict) -> dict:
    return {
        "type": "string",
        "format": "uuid",
        "x-formats": spec["formats"],
        "x-max-bytes": spec["limits"]["max_bytes"],
        "description": (
            f"the id of one of your uploads for {name} (POST /api/uploads): "
            f"{', '.join(spec['formats'])}, at most {spec['limits']['max_bytes']:,} bytes"
        ),
    }


def job_request(name: str) -> dict:
    """The JSON body ``{"serving": name, "input": ...}`` for ``name``, with an example."""
    definition = validation.definition(name)
    return {
        "title": name,
        "description": definition.description or f"a job for {name}",
        "type": "object",
        "properties": {"serving": {"const": name}, "input": input_schema(name)},
        "required": ["serving", "input"],
        "additionalProperties": False,
        "examples": [{"serving": name, "input": example_input(name)}],
    }


def multipart_job_request(name: str) -> dict:
    """The same job as form fields: ``serving``, ``file`` or ``text``, one field per option."""
    spec = validation.spec_json(name)
    properties: dict = {"serving": {"const": name}}
    required = ["serving"]
    if spec["kind"] in ("image", "audio"):
        properties[FILE_FIELD] = _file_part(name, spec)
        required.append(FILE_FIELD)
    elif spec["kind"] == "text":
        properties[TEXT_FIELD] = {"type": "string", "maxLength": spec["limits"]["max_chars"]}
        required.append(TEXT_FIELD)
    properties.update(spec["options"]["properties"])
    schema = {"title": name, "type": "object", "properties": properties, "required": required}
    if spec["kind"] == "json":
        schema["additionalProperties"] = {"type": "string"}  # each field becomes a key of the input object
    else:
        schema["additionalProperties"] = False
    return schema


def _file_part(name: str, spec: dict) -> dict:
    return {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "x-formats": spec["formats"],
        "x-max-bytes": spec["limits"]["max_bytes"],
        "description": (
            f"the file: {', '.join(spec['formats'])} (sniffed from its bytes, not its name), "
            f"at most {spec['limits']['max_bytes']:,} bytes"
        ),
    }


def _version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _description(names: list[str]) -> str:
    return (
        "Every serving of this site, generated from their input specs: "
        + (", ".join(f"`{n}`" for n in names) or "none registered")
        + ".\n\n"
        "**Errors** are always JSON `{\"error\": {\"code\", \"message\"}}` with a fitting status; programs switch "
        "on `code`, `message` is for people. A method an endpoint does not take gets `405 method_not_allowed` "
        "with an `Allow` header; an unknown URL `404 not_found`.\n\n"
        "**Who sees what.** Jobs and uploads belong to the signed-in user, or to the anonymous visitor's session "
        f"(cookie `{settings.SESSION_COOKIE_NAME}`, created by the first POST). Someone else's job is a 404.\n\n"
        f"**CSRF.** Every POST needs the `{settings.CSRF_COOKIE_NAME}` cookie and its value in the "
        f"`{_csrf_header()}` header. GET any page first (e.g. `/` or `/api/docs/`) to receive the cookie, "
        "keep the cookies, and send from the site's own origin."
    )


def _csrf_header() -> str:
    """``X-CSRFToken`` from ``CSRF_HEADER_NAME`` (``HTTP_X_CSRFTOKEN``)."""
    raw = settings.CSRF_HEADER_NAME.removeprefix("HTTP_")
    return "-".join("CSRFToken" if part == "CSRFTOKEN" else part.capitalize() for part in raw.split("_"))


def _security_schemes() -> dict:
    return {
        "session": {
            "type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME,
            "description": "Django's session: the signed-in user, or the anonymous visitor who owns the jobs.",
        },
        "csrfCookie": {
            "type": "apiKey", "in": "cookie", "name": settings.CSRF_COOKIE_NAME,
            "description": "Set by any page of the site (GET / or /api/docs/); send it back.",
        },
        "csrfHeader": {
            "type": "apiKey", "in": "header", "name": _csrf_header(),
            "description": f"The {settings.CSRF_COOKIE_NAME} cookie's value; required on every POST.",
        },
    }


# The shared error responses (components/responses) by status.
ERROR_RESPONSES = {400: "BadRequest", 403: "CsrfFailed", 404: "NotFound", 405: "MethodNotAllowed", 408: "Timeout",
                   413: "TooLarge", 415: "UnsupportedMediaType", 429: "TooManyJobs", 500: "InternalError"}
READ_SECURITY = [{}, {"session": []}]
WRITE_SECURITY = [{"csrfCookie": [], "csrfHeader": []}, {"csrfCookie": [], "csrfHeader": [], "session": []}]


def _json_response(description: str, schema: dict, **extra) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _error_refs(*statuses: int) -> dict:
    return {str(s): {"$ref": f"#/components/responses/{ERROR_RESPONSES[s]}"} for s in statuses}


def _list_servings() -> dict:
    return {
        "tags": ["servings"],
        "operationId": "listServings",
        "summary": "List the servings and their input specs",
        "description": "Each serving with the kind of input, accepted formats, the site's limits and a JSON schema "
                       "of its options (the page builds its form from it).",
        "security": READ_SECURITY,
        "responses": {
            "200": _json_response("The servings.", {
                "type": "object",
                "properties": {"servings": {"type": "array", "items": {"$ref": REF + "Serving"}}},
                "required": ["servings"],
            }),
            **_error_refs(500),
        },
    }


def _list_jobs() -> dict:
    return {
        "tags": ["jobs"],
        "operationId": "listJobs",
        "summary": f"Your recent jobs, newest first (at most {LIST_LIMIT})",
        "security": READ_SECURITY,
        "responses": {
            "200": _json_response("Your jobs.", {
                "type": "object",
                "properties": {"jobs": {"type": "array", "maxItems": LIST_LIMIT, "items": {"$ref": REF + "Job"}}},
                "required": ["jobs"],
            }),
            **_error_refs(500),
        },
    }


def _submit_job(names: list[str], file_servings: list[str]) -> dict:
    json_branches = [job_request(n) for n in names]
    form_branches = [multipart_job_request(n) for n in names]
    content_types = sorted({t for n in file_servings for t in validation.spec_json(n)["content_types"]})
    return {
        "tags": ["jobs"],
        "operationId": "submitJob",
        "summary": "Submit a job to a serving",
        "description": (
            "JSON: `{\"serving\": NAME, \"input\": INPUT}`; `INPUT` is what the serving's spec says (one branch "
            "per serving below). A file serving's input names an upload of yours (`POST /api/uploads`). "
            "Or multipart/form-data in one request: `serving`, `file` (file servings) or `text` (text servings), "
            "one field per option; form values are strings, converted by the spec (`\"true\"` → `true`). "
            "The job runs in the background: poll `GET /api/jobs/{job_id}` or watch the websocket `/ws/jobs`."
        ),
        "security": WRITE_SECURITY,
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": _one_of(json_branches),
                    "examples": {b["title"]: {"summary": b["title"], "value": b["examples"][0]} for b in json_branches},
                },
                MULTIPART: {
                    "schema": _one_of(form_branches),
                    "encoding": {FILE_FIELD: {"contentType": ", ".join(content_types) or "application/octet-stream"}},
                },
            },
        },
        "responses": {
            "201": _json_response(
                "The job, queued.", {"$ref": REF + "Job"},
                headers={"Location": {"description": "The job's URL, /api/jobs/{job_id}.",
                                      "schema": {"type": "string"}}},
            ),
            **_error_refs(400, 403, 404, 408, 413, 415, 429, 500),
        },
    }


def _one_of(branches: list[dict]) -> dict:
    if not branches:
        return {"not": {}, "description": "no serving is registered: nothing can be submitted"}
    return {"oneOf": branches}


def _job_id() -> dict:
    return {"name": "job_id", "in": "path", "required": True, "description": "The job's id (a UUID).",
            "schema": {"type": "string", "format": "uuid"}}


def _file_name() -> dict:
    return {"name": "name", "in": "path", "required": True,
            "description": "`input` (the uploaded original) or a name from the job's `files`.",
            "schema": {"type": "string"}, "example": "input"}


def _read_job() -> dict:
    return {
        "tags": ["jobs"],
        "operationId": "readJob",
        "summary": "Read one of your jobs",
        "description": "`status` goes queued → running → done or failed; `progress` and `partials` grow while a "
                       "fanned-out job runs.",
        "security": READ_SECURITY,
        "responses": {"200": _json_response("The job.", {"$ref": REF + "Job"}), **_error_refs(404, 500)},
    }


def _read_file() -> dict:
    return {
        "tags": ["jobs"],
        "operationId": "readJobFile",
        "summary": "Download a file of one of your jobs",
        "description": "Served with its own content type and `X-Content-Type-Options: nosniff`, only to the job's "
                       "owner; a serving's files exist once the job is done.",
        "security": READ_SECURITY,
        "responses": {
            "200": {
                "description": "The file's bytes.",
                "headers": {"Content-Disposition": {"schema": {"type": "string"},
                                                    "description": "inline; filename=\"NAME\""}},
                "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}},
            },
            **_error_refs(404, 500),
        },
    }


def _upload(file_servings: list[str]) -> dict:
    branches = []
    for name in file_servings:
        spec = validation.spec_json(name)
        branches.append({
            "title": name,
            "type": "object",
            "properties": {
                "serving": {"const": name},
                FILE_FIELD: _file_part(name, spec),
                "live": {"type": "boolean", "default": False,
                         "description": "for one live prediction only: deleted once it is answered; no job can use it"},
            },
            "required": ["serving", FILE_FIELD],
            "additionalProperties": False,
        })
    content_types = sorted({t for n in file_servings for t in validation.spec_json(n)["content_types"]})
    return {
        "tags": ["uploads"],
        "operationId": "upload",
        "summary": "Upload a file for a file serving",
        "description": (
            "Checked at once: the format is sniffed from the bytes, the size bounded by the serving's `max_bytes` "
            f"(`413 too_large`) and all your files together by OWNER_STORAGE_MAX_BYTES "
            f"({settings.OWNER_STORAGE_MAX_BYTES:,} bytes; `413 quota_exceeded`). Refer to it in a job as "
            "`{\"file\": \"<id>\"}`. File servings: "
            + (", ".join(f"`{n}`" for n in file_servings) or "none")
            + "."
        ),
        "security": WRITE_SECURITY,
        "requestBody": {
            "required": True,
            "content": {MULTIPART: {"schema": _one_of(branches),
                                    "encoding": {FILE_FIELD: {"contentType": ", ".join(content_types)
                                                              or "application/octet-stream"}}}},
        },
        "responses": {
            "201": _json_response("The stored upload.", {"$ref": REF + "Upload"}),
            **_error_refs(400, 403, 404, 408, 413, 415, 500),
        },
    }


def _read_schema() -> dict:
    return {
        "tags": ["schema"],
        "operationId": "readSchema",
        "summary": "This OpenAPI document",
        "description": "Generated at request time from the registered servings; browsable at /api/docs/.",
        "security": READ_SECURITY,
        "responses": {"200": _json_response("The OpenAPI 3.1 document.", {"type": "object"})},
    }


def _nullable(schema: dict) -> dict:
    return {"oneOf": [schema, {"type": "null"}]}


def _schemas() -> dict:
    stamp = {"type": "string", "format": "date-time"}
    return {
        "Error": {
            "type": "object",
            "description": "Every error under /api/, whoever answers it (a view, Django, the body limits).",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string", "description": "stable, for programs",
                                 "examples": ["invalid_input"]},
                        "message": {"type": "string", "description": "for people: the value at fault and the fix"},
                    },
                    "required": ["code", "message"],
                },
            },
            "required": ["error"],
        },
        "FileRef": {
            "type": "object",
            "description": "A file of a job: the uploaded input or one the serving produced.",
            "properties": {
                "name": {"type": "string"},
                "url": {"type": ["string", "null"], "description": "/api/jobs/{job_id}/files/{name}"},
                "content_type": {"type": "string"},
                "size": {"type": "integer", "minimum": 0},
            },
            "required": ["name", "url", "content_type", "size"],
        },
        "Job": {
            "type": "object",
            "description": "One request to a serving (Job.as_json).",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "serving": {"type": "string"},
                "status": {"type": "string", "enum": list(Job.Status.values)},
                "input_summary": {"type": "string", "maxLength": 200},
                "input_file": _nullable({"$ref": REF + "FileRef"}),
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "items": {"type": "integer", "minimum": 0,
                          "description": "items a fanned-out input became (0: not known yet)"},
                "partials": {"type": "array", "description": "the partial results so far, in order"},
                "result": {"description": "the serving's result (null until done); files in it are FileRefs"},
                "files": {"type": "array", "items": {"$ref": REF + "FileRef"}},
                "error": {"type": "string", "description": "for people, when failed"},
                "error_code": {
                    "type": "string",
                    "description": "for programs, when failed: invalid_input, model_not_installed, serving_failed, "
                                   "timeout, gave_up, queue_unavailable, lost, unserved, overloaded, internal_error",
                },
                "model_version": {"type": "string", "description": "the model version that served it"},
                "attempts": {"type": "integer", "minimum": 0},
                "queued_at": stamp,
                "started_at": _nullable(stamp),
                "finished_at": _nullable(stamp),
            },
            "required": ["id", "serving", "status", "input_summary", "input_file", "progress", "items", "partials",
                         "result", "files", "error", "error_code", "model_version", "attempts", "queued_at",
                         "started_at", "finished_at"],
        },
        "Upload": {
            "type": "object",
            "description": "A file you sent, sniffed and size-checked (Upload.as_json).",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "live": {"type": "boolean"},
                "serving": {"type": "string"},
                "name": {"type": "string", "description": "your file name, shown only"},
                "size": {"type": "integer", "minimum": 0},
                "format": {"type": "string", "description": "sniffed from the bytes"},
                "content_type": {"type": "string"},
                "created_at": _nullable(stamp),
            },
            "required": ["id", "live", "serving", "name", "size", "format", "content_type", "created_at"],
        },
        "Serving": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "spec": {
                    "type": "object",
                    "properties": {
                        "kind": {"type": "string", "enum": list(KINDS)},
                        "formats": {"type": "array", "items": {"type": "string"}},
                        "content_types": {"type": "array", "items": {"type": "string"}},
                        "limits": {"type": "object", "additionalProperties": {"type": "number"}},
                        "options": {"type": "object", "description": "a JSON schema of the options"},
                        "renderer": {"type": "string"},
                    },
                    "required": ["kind", "formats", "content_types", "limits", "options", "renderer"],
                },
            },
            "required": ["name", "description", "spec"],
        },
    }


def _error_response(description: str, examples: dict[str, str], **extra) -> dict:
    return {
        "description": description,
        "content": {JSON: {
            "schema": {"$ref": REF + "Error"},
            "examples": {code: {"value": {"error": {"code": code, "message": message}}}
                         for code, message in examples.items()},
        }},
        **extra,
    }


def _responses() -> dict:
    body_limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return {
        "BadRequest": _error_response("The request is wrong; nothing was created.", {
            "invalid_input": "sentiment: the text is empty; type a sentence to analyse",
            "invalid_json": 'send an object: {"serving": "sentiment", "input": {"text": "..."}}',
            "bad_request": "the request could not be read (malformed headers or body, or a Host the site does "
                           "not serve)",
        }),
        "CsrfFailed": _error_response(
            f"The CSRF check failed: send the {settings.CSRF_COOKIE_NAME} cookie's value in {_csrf_header()}.",
            {"csrf_failed": f"CSRF check failed (CSRF cookie not set); send the csrftoken cookie's value in the "
                            f"{_csrf_header()} header (any page sets the cookie), from the site's own origin"},
        ),
        "NotFound": _error_response("No such serving, job, file or upload among yours.", {
            "unknown_serving": "no serving named 'sentimant'; known servings: sentiment",
            "not_found": "no job 0b6f4f0e-5c1e-4a55-9c3e-2f1f8c3f9a4e among yours",
        }),
        "MethodNotAllowed": _error_response(
            "The endpoint does not take this method.",
            {"method_not_allowed": "DELETE is not allowed on /api/jobs; use GET, POST"},
            headers={"Allow": {"description": "The methods it takes.", "schema": {"type": "string"}}},
        ),
        "Timeout": _error_response(
            f"The body did not arrive within HTTP_BODY_TIMEOUT ({settings.HTTP_BODY_TIMEOUT:g} s).",
            {"timeout": body_limits.timeout_message()},
        ),
        "TooLarge": _error_response(
            f"The body is over its limit ({body_limit:,} bytes, DJANGO_MAX_BODY_BYTES; a multipart upload "
            f"MLSERVICES_UPLOAD_MAX_BYTES), the file over its serving's max_bytes, or your storage is full.",
            {
                "too_large": body_limits.too_large_message(body_limits.limit_for("/api/jobs", JSON), None),
                "quota_exceeded": "your files take 524,000,000 bytes and this one 1,000,000; the limit is 524,288,000 "
                                  "(OWNER_STORAGE_MAX_BYTES). Delete old jobs or wait for them to expire",
            },
        ),
        "UnsupportedMediaType": _error_response("The body is neither JSON nor multipart/form-data.", {
            "unsupported_media_type": "send the job as JSON (Content-Type: application/json) or as "
                                      "multipart/form-data with a file",
        }),
        "TooManyJobs": _error_response(
            f"You have JOBS_MAX_ACTIVE_PER_OWNER ({settings.JOBS_MAX_ACTIVE_PER_OWNER}) jobs queued or running.",
            {"too_many_jobs": f"you have {settings.JOBS_MAX_ACTIVE_PER_OWNER} jobs queued or running; the limit is "
                              f"{settings.JOBS_MAX_ACTIVE_PER_OWNER} (JOBS_MAX_ACTIVE_PER_OWNER). Wait for some to "
                              "finish, then send this one again"},
            headers={"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
        ),
        "InternalError": _error_response("A fault of the site; logged with its traceback on the server.", {
            "internal_error": "the server failed on this request; it has been logged. Try again, and report it "
                              "if it persists",
        }),
    }
