"""The pages' server side: one template per serving, data for the page's modules, the nav.

The browser side (what the modules draw from this data) is tests/test_browser.py.
"""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

import mlservices
from mlservices.testing import Files, Windows
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def toys():
    """``windows`` (JSON kind, with options) and ``files`` (image kind) beside sentiment."""
    mlservices.register("windows")(lambda: Windows().serving("windows"))
    mlservices.register("files")(lambda: Files().serving("files"))
    yield
    mlservices.registry.unregister("windows")
    mlservices.registry.unregister("files")


def script_json(html: str, element_id: str):
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html, re.S)
    assert match, f"no json_script #{element_id} in the page"
    return json.loads(match.group(1))


def nav(html: str) -> list[tuple[str, str, bool]]:
    """(serving, href, current) of each link of the site's navigation."""
    links = re.findall(r'<a href="([^"]+)" data-testid="nav-serving" data-serving="([^"]+)"([^>]*)>', html)
    return [(serving, href, 'aria-current="page"' in rest) for href, serving, rest in links]


def test_home_is_the_sentiment_page_with_its_spec_and_the_nav(settings):
    settings.MLSERVICES_MAX_TEXT_CHARS = 321
    response = Client().get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-serving="sentiment"' in html and "csrftoken" in response.cookies
    spec = script_json(html, "serving-spec")
    assert spec["kind"] == "text" and spec["renderer"] == "sentiment"
    assert spec["limits"]["max_chars"] == 321  # the site's effective limit, not the spec's own
    assert script_json(html, "initial-jobs") == []
    links = nav(html)
    assert [serving for serving, _, _ in links] == mlservices.names()
    assert ("sentiment", "/", True) in links
    assert ("windows", "/s/windows/", False) in links
    assert '<script type="module" src="/static/js/main.js">' in html


def test_a_serving_page_carries_its_spec_and_only_its_own_jobs_of_this_owner():
    client = Client()
    client.get("/")  # a session
    session_key = client.session.session_key
    mine = Job.objects.create(serving="windows", input={"windows": 2}, input_summary="</script><b>x</b>",
                              session_key=session_key)
    Job.objects.create(serving="sentiment", input={"text": "hi"}, input_summary="hi", session_key=session_key)
    Job.objects.create(serving="windows", input={"windows": 1}, input_summary="someone else's",
                       session_key="another-session")

    html = client.get("/s/windows/").content.decode()
    spec = script_json(html, "serving-spec")
    assert spec["kind"] == "json"
    assert spec["options"]["properties"]["windows"] == {
        "type": "integer", "default": 3, "description": "how many batch items the input fans out into",
        "minimum": 1, "maximum": 1000,
    }
    jobs = script_json(html, "initial-jobs")
    assert [j["id"] for j in jobs] == [str(mine.id)]
    assert jobs[0]["input_summary"] == "</script><b>x</b>"  # data, escaped by json_script
    assert "<b>x</b>" not in html
    assert ("windows", "/s/windows/", True) in nav(html)
    assert ("sentiment", "/", False) in nav(html)


def test_a_file_servings_page_and_the_home_serving_setting(settings):
    html = Client().get("/s/files/").content.decode()
    spec = script_json(html, "serving-spec")
    assert spec["kind"] == "image" and spec["content_types"] == ["image/gif", "image/jpeg", "image/png"]
    assert 'data-api-uploads="/api/uploads"' in html

    settings.MLSERVICES_HOME_SERVING = "files"
    html = Client().get("/").content.decode()
    assert 'data-serving="files"' in html
    assert ("files", "/", True) in nav(html)


def test_an_unknown_serving_is_a_404_page_with_the_nav():
    response = Client().get("/s/no_such_serving/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "No serving named <code>no_such_serving</code>" in html
    assert [serving for serving, _, _ in nav(html)] == mlservices.names()
