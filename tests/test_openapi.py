"""The OpenAPI document (/api/schema/) and its page (/api/docs/) against the real API.

The document is generated from the registered servings, so these tests read
the serving list from ``GET /api/servings`` and never name the built-in ones:
every serving's example request is sent to the real ``POST /api/jobs`` with
CSRF enforced, and real answers (jobs, uploads, errors) are validated against
the document's own schemas with jsonschema. Toy servings registered here show
that a new serving appears (and leaves) without touching the generator.
"""

from __future__ import annotations

import copy
import html as html_module
import json
import re
import shlex

import jsonschema
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import mlservices
from mlservices import Prepared
from mlservices.spec import InputSpec, Option
from mlservices.testing import Files, Toy, Windows
from tests.live_server import wait_until
from webapp.jobs import openapi
from webapp.jobs.models import Job, Upload

pytestmark = pytest.mark.django_db(transaction=True)

DOC_URI = "urn:mlservices:openapi"
# Enough leading bytes for the door's sniffing (mlservices.formats) of each format a sample is kept for.
SAMPLE_FILES = {
    "png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 56,
    "gif": b"GIF89a" + b"\x00" * 58,
    "jpeg": b"\xff\xd8\xff\xe0" + b"\x00" * 60,
    "wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 48,
    "flac": b"fLaC" + b"\x00" * 60,
}
TOYS = ("openapi-echo", "openapi-files", "openapi-windows")


class Echo(Toy):
    """A text toy with a limit and an option: ``{"text": "hi", "shout": true}`` → ``{"input": "HI", "output": 4}``."""

    NAME = "openapi-echo"
    SPEC = InputSpec(kind="text", max_chars=50, options=(Option("shout", bool, False, "upper-case the text"),))

    def preprocess(self, model, input) -> Prepared:
        text = input["text"].upper() if input["shout"] else input["text"]
        return Prepared(item=len(text), context={"input": text})


@pytest.fixture(autouse=True)
def site(settings, tmp_path, tiny_sentiment_model, monkeypatch):
    """In-process mode; sentiment on a tiny model; three toys (text, image, JSON) beside the built-in servings."""
    monkeypatch.setenv("MLSERVICES_OFFLINE", "1")  # a serving without a local model fails fast, never downloads
    settings.MLSERVICES_MODE = "inprocess"
    settings.MEDIA_ROOT = tmp_path / "media"
    mlservices.register("openapi-echo")(lambda: Echo().serving("openapi-echo", batch_timeout_ms=0))
    mlservices.register("openapi-files")(lambda: Files().serving("openapi-files", batch_timeout_ms=0))
    mlservices.register("openapi-windows")(lambda: Windows().serving("openapi-windows", batch_timeout_ms=0))
    settings.MLSERVICES = {"sentiment": {"model": str(tiny_sentiment_model), "batch_timeout_ms": 1},
                           **{name: {} for name in TOYS}}
    mlservices.configure(settings.MLSERVICES, device="cpu")
    yield
    mlservices.configure({})
    for name in TOYS:
        mlservices.registry.unregister(name)


def fetch_document(client: Client | None = None) -> dict:
    response = (client or Client()).get("/api/schema/")
    assert response.status_code == 200, response.content
    return response.json()


def offered(client: Client | None = None) -> dict[str, dict]:
    """What GET /api/servings lists: name -> its spec."""
    return {s["name"]: s["spec"] for s in (client or Client()).get("/api/servings").json()["servings"]}


def conforms(doc: dict, instance, schema: dict) -> None:
    """Validate ``instance`` against ``schema`` (which may ``$ref`` into ``doc``), formats checked."""
    registry = Registry().with_resource(DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    rebased = json.loads(json.dumps(schema).replace('"$ref": "#/', f'"$ref": "{DOC_URI}#/'))
    jsonschema.Draft202012Validator(
        rebased, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(instance)


def resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def answered_as_documented(doc: dict, path: str, method: str, response) -> dict:
    """The response's status is documented for the operation and its JSON body fits that status's schema."""
    documented = doc["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, f"{method.upper()} {path} answered {response.status_code}, " \
                                                     f"not among {sorted(documented)}"
    described = resolve(doc, documented[str(response.status_code)])
    assert response["Content-Type"] == "application/json"
    body = response.json()
    conforms(doc, body, described["content"]["application/json"]["schema"])
    return described


def json_branches(doc: dict) -> dict[str, dict]:
    schema = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {b["properties"]["serving"]["const"]: b for b in schema["oneOf"]}


def csrf_client() -> tuple[Client, str]:
    """A client with CSRF checks on and the token a page gave it (as the document tells scripts to do)."""
    client = Client(enforce_csrf_checks=True)
    assert client.get("/api/docs/").status_code == 200
    return client, client.cookies["csrftoken"].value


def finished(client: Client, job_id: str) -> dict:
    def done():
        job = client.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in ("done", "failed") else None

    return wait_until(done, timeout=60, what=f"job {job_id} to finish")


def test_the_schema_is_a_valid_openapi_3_1_json_document():
    response = Client().get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    doc = json.loads(response.content)
    validate_openapi(doc)  # raises on any violation of the OpenAPI 3.1 specification
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["version"] and doc["servers"] == [{"url": "/", "description": "this site"}]
    assert set(doc["paths"]) == {"/api/servings", "/api/jobs", "/api/jobs/{job_id}",
                                 "/api/jobs/{job_id}/files/{name}", "/api/uploads", "/api/schema/"}
    schemes = doc["components"]["securitySchemes"]
    assert (schemes["csrfHeader"]["in"], schemes["csrfHeader"]["name"]) == ("header", "X-CSRFToken")
    assert (schemes["csrfCookie"]["in"], schemes["csrfCookie"]["name"]) == ("cookie", "csrftoken")
    assert (schemes["session"]["in"], schemes["session"]["name"]) == ("cookie", "sessionid")
    assert {"csrfCookie": [], "csrfHeader": []} in doc["paths"]["/api/jobs"]["post"]["security"]


def test_the_schema_only_takes_get():
    response = Client().post("/api/schema/")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_every_offered_serving_is_described_with_its_spec_and_limits(settings):
    settings.MLSERVICES_LIMITS = {"openapi-echo": {"max_chars": 12}}
    doc, servings = fetch_document(), offered()
    assert {"openapi-echo", "openapi-files", "openapi-windows"} <= set(servings)
    branches = json_branches(doc)
    assert list(branches) == list(servings)
    body = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["oneOf"]
    assert [b["properties"]["serving"]["const"] for b in form] == list(servings)
    uploads = doc["paths"]["/api/uploads"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["oneOf"]
    assert [b["properties"]["serving"]["const"] for b in uploads] == [
        n for n, spec in servings.items() if spec["kind"] in ("image", "audio")
    ]
    for name, spec in servings.items():
        input = branches[name]["properties"]["input"]
        options = spec["options"]["properties"]
        if spec["kind"] == "text":
            text, as_object = input["oneOf"]
            assert text["maxLength"] == spec["limits"]["max_chars"]
            assert as_object["properties"] == {"text": text, **options} and as_object["required"] == ["text"]
        elif spec["kind"] in ("image", "audio"):
            assert input["properties"] == {"file": input["properties"]["file"], **options}
            assert input["properties"]["file"]["format"] == "uuid" and input["additionalProperties"] is False
            assert f"{spec['limits']['max_bytes']:,} bytes" in input["properties"]["file"]["description"]
            assert input["properties"]["file"]["x-formats"] == spec["formats"]
        else:
            assert input.get("properties", {}) == options
    echo = branches["openapi-echo"]["properties"]["input"]["oneOf"]
    assert echo[0]["maxLength"] == 12  # MLSERVICES_LIMITS over the spec's own 50
    assert echo[1]["properties"]["shout"] == {"type": "boolean", "default": False, "description": "upper-case the text"}
    conforms(doc, "x" * 12, branches["openapi-echo"]["properties"]["input"])
    with pytest.raises(jsonschema.ValidationError):
        conforms(doc, "x" * 13, branches["openapi-echo"]["properties"]["input"])


def test_a_serving_registered_later_appears_and_one_removed_disappears():
    assert "openapi-late" not in json_branches(fetch_document())
    mlservices.register("openapi-late")(lambda: Windows().serving("openapi-late"))
    try:
        doc = fetch_document()
        assert "openapi-late" in json_branches(doc) and "openapi-late" in offered()
        assert "openapi-late" in Client().get("/api/docs/").content.decode()
    finally:
        mlservices.registry.unregister("openapi-late")
    assert "openapi-late" not in json_branches(fetch_document())


def test_every_servings_example_fits_the_document_and_is_accepted_by_the_api():
    """Each example validates against the request schema, and POSTed as is (an upload id placeholder
    replaced by a real upload) creates a job that fits the Job schema, queued and finished."""
    client, token = csrf_client()
    doc = fetch_document(client)
    request_schema = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    examples = doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    servings = offered(client)
    assert set(examples) == set(servings)
    for name, spec in servings.items():
        example = copy.deepcopy(json_branches(doc)[name]["examples"][0])
        assert examples[name]["value"] == example
        conforms(doc, example, request_schema)  # exactly one branch (oneOf): this serving's
        if spec["kind"] in ("image", "audio"):
            assert example["input"]["file"] == openapi.SAMPLE_UPLOAD_ID
            example["input"]["file"] = upload_sample(client, token, doc, name, spec)
            conforms(doc, example, request_schema)
        response = client.post("/api/jobs", data=json.dumps(example), content_type="application/json",
                               HTTP_X_CSRFTOKEN=token)
        assert response.status_code == 201, (name, response.content)
        answered_as_documented(doc, "/api/jobs", "post", response)
        job = response.json()
        assert job["serving"] == name and response["Location"] == f"/api/jobs/{job['id']}"
        done = finished(client, job["id"])
        conforms(doc, done, {"$ref": "#/components/schemas/Job"})
        if name in ("sentiment", *TOYS):  # the servings this test gave a model: they must really run
            assert done["status"] == "done", done
    assert client.get("/api/jobs").json()["jobs"]
    answered_as_documented(doc, "/api/jobs", "get", client.get("/api/jobs"))
    echo = Job.objects.get(serving="openapi-echo")
    assert echo.result == {"input": openapi.SAMPLE_TEXT, "output": 2 * len(openapi.SAMPLE_TEXT)}


def upload_sample(client: Client, token: str, doc: dict, name: str, spec: dict) -> str:
    """POST /api/uploads a file the serving's formats accept; the answer fits the Upload schema."""
    format = next((f for f in spec["formats"] if f in SAMPLE_FILES), None)
    assert format, f"{name} takes {spec['formats']}; add a sample of one of them to SAMPLE_FILES"
    sample = SimpleUploadedFile(f"sample.{format}", SAMPLE_FILES[format])
    response = client.post("/api/uploads", data={"serving": name, "file": sample}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, (name, response.content)
    answered_as_documented(doc, "/api/uploads", "post", response)
    return response.json()["id"]


def test_a_multipart_job_and_its_files_are_answered_as_documented():
    client, token = csrf_client()
    doc = fetch_document(client)
    form = {"serving": "openapi-files", "flip": "true", "file": SimpleUploadedFile("me.png", SAMPLE_FILES["png"])}
    response = client.post("/api/jobs", data=form, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.content
    answered_as_documented(doc, "/api/jobs", "post", response)
    job = finished(client, response.json()["id"])
    assert job["status"] == "done", job
    answered_as_documented(doc, "/api/jobs/{job_id}", "get", client.get(f"/api/jobs/{job['id']}"))
    assert "200" in doc["paths"]["/api/jobs/{job_id}/files/{name}"]["get"]["responses"]
    assert client.get(job["files"][0]["url"]).status_code == 200
    missing = client.get(f"/api/jobs/{job['id']}/files/nope")
    assert answered_as_documented(doc, "/api/jobs/{job_id}/files/{name}", "get", missing)
    assert missing.json()["error"]["code"] == "not_found"
    assert Upload.objects.filter(serving="openapi-files").count() == 1


def documented_codes(doc: dict, path: str, method: str, status: int) -> set[str]:
    response = resolve(doc, doc["paths"][path][method]["responses"][str(status)])
    return set(response["content"]["application/json"]["examples"])


def test_an_unknown_serving_is_answered_as_documented():
    client, token = csrf_client()
    doc = fetch_document(client)
    response = client.post("/api/jobs", data=json.dumps({"serving": "no-such-serving", "input": "hi"}),
                           content_type="application/json", HTTP_X_CSRFTOKEN=token)
    with pytest.raises(jsonschema.ValidationError):  # no branch of the request schema takes it
        conforms(doc, {"serving": "no-such-serving", "input": "hi"},
                 doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    assert response.status_code == 404
    answered_as_documented(doc, "/api/jobs", "post", response)
    assert response.json()["error"]["code"] == "unknown_serving"
    assert "unknown_serving" in documented_codes(doc, "/api/jobs", "post", 404)
    assert not Job.objects.exists()


def test_bad_input_csrf_and_too_many_jobs_are_answered_as_documented(settings):
    client, token = csrf_client()
    doc = fetch_document(client)
    too_long = {"serving": "openapi-echo", "input": {"text": "x" * 51}}
    bad = client.post("/api/jobs", data=json.dumps(too_long), content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert bad.status_code == 400 and bad.json()["error"]["code"] in documented_codes(doc, "/api/jobs", "post", 400)
    answered_as_documented(doc, "/api/jobs", "post", bad)

    example = json_branches(doc)["openapi-echo"]["examples"][0]
    no_token = client.post("/api/jobs", data=json.dumps(example), content_type="application/json")
    assert no_token.status_code == 403
    answered_as_documented(doc, "/api/jobs", "post", no_token)
    assert no_token.json()["error"]["code"] in documented_codes(doc, "/api/jobs", "post", 403)

    settings.JOBS_MAX_ACTIVE_PER_OWNER = 0
    refused = client.post("/api/jobs", data=json.dumps(example), content_type="application/json",
                          HTTP_X_CSRFTOKEN=token)
    assert refused.status_code == 429
    described = answered_as_documented(doc, "/api/jobs", "post", refused)
    assert "Retry-After" in described["headers"] and refused["Retry-After"] == str(settings.JOBS_RETRY_AFTER_S)
    assert refused.json()["error"]["code"] in documented_codes(doc, "/api/jobs", "post", 429)
    assert not Job.objects.exists()


def test_the_job_and_upload_schemas_name_every_field_the_api_returns():
    doc = fetch_document()
    schemas = doc["components"]["schemas"]
    for model, schema in ((Job(serving="x", input={}), schemas["Job"]), (Upload(), schemas["Upload"])):
        fields = set(model.as_json())
        assert fields == set(schema["properties"]) == set(schema["required"]), (
            f"{type(model).__name__}.as_json and the OpenAPI schema differ: "
            f"{sorted(fields ^ set(schema['properties']))}; update webapp/jobs/openapi.py"
        )


def test_the_docs_page_lists_every_path_method_and_serving_with_curl_examples():
    client = Client()
    response = client.get("/api/docs/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert "csrftoken" in response.cookies  # the page gives the cookie the examples use
    html = response.content.decode()
    doc = fetch_document()
    shown = set(re.findall(r'data-testid="operation" data-method="(\w+)" data-path="([^"]+)"', html))
    assert shown == {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    for media_type in ("application/json", "multipart/form-data"):
        listed = re.findall(rf'data-testid="request-body" data-media-type="{media_type}" data-serving="([^"]+)"', html)
        assert listed[: len(offered())] == list(offered()), media_type
    curls = re.findall(r'<code data-testid="curl">(.*?)</code>', html, re.S)
    assert curls and all("-X POST" in c and "X-CSRFToken: $(awk" in c for c in curls)
    echo = next(html_module.unescape(c) for c in curls if "openapi-echo" in c and "application/json" in c)
    words = shlex.split(echo.replace("\\\n", " "))
    assert words[words.index("-d") + 1] == json.dumps(json_branches(doc)["openapi-echo"]["examples"][0])
    assert words[-1] == "http://testserver/api/jobs"
    assert {s for s in re.findall(r'data-testid="error-row" data-status="(\d+)"', html)} >= {
        "400", "403", "404", "405", "413", "429", "500"}
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html), "the page loads nothing external"
    assert 'href="/api/schema/"' in html


def test_the_site_links_to_the_docs_page():
    assert 'href="/api/docs/"' in Client().get("/").content.decode()
