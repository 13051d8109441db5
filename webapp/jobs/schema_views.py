"""``GET /api/schema/`` (the OpenAPI document, JSON) and ``GET /api/docs/`` (the same, as a page).

The page is drawn on the server from the document itself (``webapp.jobs.openapi``):
each path and method with its summary, the request body of every serving as a
JSON schema with an example and a ``curl`` command that runs as is (cookie jar,
CSRF token), and the responses. No external script or stylesheet.
"""

from __future__ import annotations

import json
import re
import shlex

from django.http import JsonResponse
from django.shortcuts import render
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from . import openapi, pages

METHODS = ("get", "post", "put", "patch", "delete")
JAR = "jar"


@require_GET
def schema(request):
    """The OpenAPI 3.1 document, generated now from the registered servings."""
    return JsonResponse(openapi.document(), json_dumps_params={"indent": 2})


@require_GET
@ensure_csrf_cookie
def docs(request):
    """The browsable API reference; sets the csrftoken cookie the curl examples use."""
    doc = openapi.document()
    base = request.build_absolute_uri("/").rstrip("/")
    return render(request, "api_docs.html", {
        "info": doc["info"],
        "description": markup(doc["info"]["description"]),
        "operations": operations(doc, base),
        "schemas": [(name, pretty(schema)) for name, schema in doc["components"]["schemas"].items()],
        "errors": error_table(doc),
        "security": doc["components"]["securitySchemes"],
        "cookie_command": cookie_command(base),
        "nav_servings": pages.navigation(None),
    })


def markup(text: str) -> SafeString:
    """The document's light Markdown as HTML: `code` and **bold**, everything else escaped."""
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))
    return mark_safe(re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html))


def pretty(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def resolve(doc: dict, node: dict) -> dict:
    """``node`` with a ``$ref`` into ``doc`` (``#/components/...``) followed."""
    while isinstance(node, dict) and "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def cookie_command(base: str) -> str:
    """Fetch a page once to get the session's csrftoken cookie into the jar."""
    return f"curl -s -c {JAR} -o /dev/null {base}/api/docs/"


def _csrf_header_value(header: str) -> str:
    return f'-H "{header}: $(awk \'/csrftoken/{{print $7}}\' {JAR})"'


def curl_json(base: str, path: str, body: dict, header: str) -> str:
    return (
        f"curl -s -X POST -b {JAR} -c {JAR} {_csrf_header_value(header)} \\\n"
        f"     -H 'Content-Type: application/json' \\\n"
        f"     -d {shlex.quote(json.dumps(body, ensure_ascii=False))} \\\n"
        f"     {base}{path}"
    )


def curl_form(base: str, path: str, fields: list[tuple[str, str]], header: str) -> str:
    parts = " ".join(f"-F {shlex.quote(f'{k}={v}')}" for k, v in fields)
    return f"curl -s -X POST -b {JAR} -c {JAR} {_csrf_header_value(header)} \\\n     {parts} \\\n     {base}{path}"


def form_fields(branch: dict) -> list[tuple[str, str]]:
    """Example form fields of a multipart branch: its serving, a file or a text, option defaults."""
    fields = []
    for name, schema in branch["properties"].items():
        if "const" in schema:
            fields.append((name, schema["const"]))
        elif schema.get("contentMediaType"):
            if name in branch.get("required", ()):
                fields.append((name, f"@input.{(schema.get('x-formats') or ['bin'])[0]}"))
        elif schema.get("type") == "string" and name == "text":
            fields.append((name, openapi.SAMPLE_TEXT))
        elif schema.get("default") is not None:
            default = schema["default"]
            fields.append((name, json.dumps(default) if isinstance(default, bool) else str(default)))
    return fields


def operations(doc: dict, base: str) -> list[dict]:
    """Every path and method of ``doc``, ready for the template."""
    header = doc["components"]["securitySchemes"]["csrfHeader"]["name"]
    found = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
            found.append({
                "method": method.upper(),
                "path": path,
                "anchor": f"{method}-{path.strip('/').replace('/', '-').replace('{', '').replace('}', '')}",
                "summary": operation.get("summary", ""),
                "description": markup(operation.get("description", "")),
                "needs_csrf": any("csrfHeader" in s for s in operation.get("security", [])),
                "parameters": [{"name": p["name"], "in": p["in"], "description": p.get("description", "")}
                               for p in parameters],
                "bodies": _bodies(operation, path, base, header),
                "curl": "" if method == "post" else _curl_get(base, path, parameters),
                "responses": [_response(doc, status, response) for status, response in operation["responses"].items()],
            })
    return found


def _curl_get(base: str, path: str, parameters: list[dict]) -> str:
    for p in parameters:
        placeholder = "JOB_ID" if p["name"] == "job_id" else p.get("example", p["name"].upper())
        path = path.replace("{" + p["name"] + "}", str(placeholder))
    return f"curl -s -b {JAR} {base}{path}"


def _bodies(operation: dict, path: str, base: str, header: str) -> list[dict]:
    bodies = []
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
        branches = content["schema"].get("oneOf", [])
        shown = []
        for branch in branches:
            example = (branch.get("examples") or [None])[0]
            if media_type == openapi.JSON:
                curl = curl_json(base, path, example, header) if example is not None else ""
            else:
                curl = curl_form(base, path, form_fields(branch), header)
            shown.append({
                "title": branch.get("title", ""),
                "description": branch.get("description", ""),
                "schema": pretty({k: v for k, v in branch.items() if k not in ("title", "description", "examples")}),
                "example": pretty(example) if example is not None else "",
                "curl": curl,
            })
        bodies.append({"media_type": media_type, "branches": shown,
                       "empty": content["schema"].get("description", "") if not branches else ""})
    return bodies


def _response(doc: dict, status: str, response: dict) -> dict:
    ref = response.get("$ref", "")
    response = resolve(doc, response)
    content = response.get("content", {})
    media_type, body = next(iter(content.items()), ("", {}))
    schema = body.get("schema", {})
    return {
        "status": status,
        "description": response.get("description", ""),
        "media_type": media_type,
        "schema_name": schema.get("$ref", "").rsplit("/", 1)[-1],
        "schema": "" if "$ref" in schema else pretty(schema) if schema else "",
        "codes": list(body.get("examples", {})),
        "headers": list(response.get("headers", {})),
        "shared": ref.rsplit("/", 1)[-1],
    }


def error_table(doc: dict) -> list[dict]:
    """The shared error responses: status, what it means, its codes with a sample message."""
    rows = []
    for status, name in sorted(openapi.ERROR_RESPONSES.items()):
        response = doc["components"]["responses"][name]
        examples = response["content"][openapi.JSON].get("examples", {})
        rows.append({
            "status": status,
            "description": response["description"],
            "codes": [(code, e["value"]["error"]["message"]) for code, e in examples.items()],
            "headers": list(response.get("headers", {})),
        })
    return rows
