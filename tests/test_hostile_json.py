"""Hostile JSON: each body once answered 500 (RecursionError, the int conversion limit,
UnicodeEncodeError or a PostgreSQL error at the insert); now a 400 ``invalid_json``.

``webapp.jobs.json_body.loads`` is tested on small inputs first, then through
``POST /api/jobs`` and the websocket, which parse with it.
"""

from __future__ import annotations

import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client

import mlservices
from webapp.asgi import application
from webapp.jobs.json_body import InvalidJSON, loads, nesting_depth
from webapp.jobs.models import Job

DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE = {
    "100,000-deep nesting": (
        '{"serving": "sentiment", "input": {"text": "x", "deep": ' + DEEP + "}}", "JSON_MAX_DEPTH"),
    "a 5,000-digit number": (
        '{"serving": "sentiment", "input": {"text": "x", "n": ' + "9" * 5000 + "}}", "JSON_MAX_NUMBER_DIGITS"),
    "a lone surrogate": ('{"serving": "sentiment", "input": {"text": "\\ud800"}}', "lone surrogate"),
    "a NUL": ('{"serving": "sentiment", "input": {"text": "a\\u0000b"}}', "NUL"),
    "NaN": ('{"serving": "sentiment", "input": {"text": "x", "n": NaN}}', "not a JSON number"),
    "a number out of float range": ('{"serving": "sentiment", "input": {"text": "x", "n": 1e999}}', "out of range"),
}


def refused(text, **limits) -> str:
    with pytest.raises(InvalidJSON) as caught:
        loads(text, **limits)
    assert caught.value.code == "invalid_json" and isinstance(caught.value, mlservices.InvalidInput)
    assert caught.value.message == str(caught.value)
    return caught.value.message


# --- loads, on small inputs ------------------------------------------------------


def test_ordinary_json_parses_from_bytes_or_text():
    body = {"serving": "sentiment", "input": {"text": "I love it 😀", "n": -12, "x": 1.5, "ok": [True, None]}}
    assert loads(json.dumps(body).encode()) == body
    assert loads(json.dumps(body)) == body
    assert loads('"\\ud83d\\ude00"') == "😀"  # a surrogate pair is a character, not a lone surrogate


@pytest.mark.parametrize("what", HOSTILE)
def test_each_hostile_body_is_refused_with_what_is_wrong(what):
    text, named = HOSTILE[what]
    assert named in refused(text)


def test_depth_is_limited_exactly_and_the_limit_is_named():
    assert loads("[[[1]]]", max_depth=3) == [[[1]]]
    message = refused("[[[[1]]]]", max_depth=3)
    assert "nested 4 levels deep; the limit is 3 (JSON_MAX_DEPTH)" in message


def test_the_depth_limit_comes_from_settings(settings):
    settings.JSON_MAX_DEPTH = 2
    assert loads('{"a": [1]}') == {"a": [1]}
    assert "the limit is 2" in refused('{"a": [[1]]}')


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"text": "[[[[{{{{" * 100 + '\\"]]' + "}}}}]]]]" * 100})
    assert nesting_depth(text) == 1
    assert loads(text, max_depth=1)["text"].startswith("[[[[")


def test_the_depth_is_measured_in_linear_time_even_for_an_unterminated_string():
    text = '"' + '\\"' * 300_000  # a naive string pattern would retry from every escaped quote
    started = time.monotonic()
    assert "not valid JSON" in refused(text)
    assert time.monotonic() - started < 5


def test_numbers_are_limited_in_digits_ints_and_floats():
    assert loads("1" * 30, max_number_digits=30) == int("1" * 30)
    assert "has 31 digits; the limit is 30 (JSON_MAX_NUMBER_DIGITS)" in refused("1" * 31, max_number_digits=30)
    assert "Send large numbers as strings" in refused("0." + "1" * 5000)
    assert loads("[-1.25e-3, 1.5e-07, 1e308, 12345678901234567890]") == [-0.00125, 1.5e-07, 1e308, 12345678901234567890]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_constants_are_refused(constant):
    assert f"{constant} is not a JSON number" in refused(f'{{"x": {constant}}}')


@pytest.mark.parametrize(
    "text, where",
    [
        ('{"input": {"text": "\\ud800"}}', "the string at input.text"),
        ('{"input": {"items": ["ok", "\\udfff"]}}', "the string at input.items[1]"),
        ('{"input": {"\\ud800": 1}}', "a key in input"),
        ('{"\\ud800": 1}', "a key of the top-level object"),
        ('"\\udc00"', "the JSON string"),
    ],
)
def test_lone_surrogates_are_refused_wherever_they_are(text, where):
    message = refused(text)
    assert message.startswith(where) and "lone surrogate" in message


def test_an_escaped_backslash_before_u_is_ordinary_text():
    assert loads('{"text": "\\\\ud800 and \\\\u0000"}') == {"text": "\\ud800 and \\u0000"}


def test_a_str_holding_a_raw_lone_surrogate_is_refused():
    assert "lone surrogate (\\ud800) at character 10" in refused('{"text": "\ud800"}')


@pytest.mark.parametrize("text", ['{"text": "\\u0000"}', '{"a\\u0000": "x"}', '[[["\\u0000"]]]'])
def test_nul_is_refused_in_values_and_keys(text):
    assert "NUL character (\\u0000)" in refused(text)


def test_bytes_that_are_not_utf8_are_refused():
    assert "not UTF-8 (byte 0xff at offset 9)" in refused(b'{"text": \xff}')


def test_invalid_json_says_so():
    assert "not valid JSON: Expecting" in refused(b'{"serving": ')


# --- through the API and the websocket -------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("what", HOSTILE)
def test_the_api_answers_400_invalid_json_and_stores_nothing(what):
    text, named = HOSTILE[what]
    client = Client(raise_request_exception=False)
    response = client.post("/api/jobs", data=text.encode(), content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and named in error["message"]
    assert Job.objects.count() == 0


@sync_to_async
def new_session() -> str:
    session = SessionStore()
    session.create()
    return session.session_key


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("what", ["100,000-deep nesting", "a 5,000-digit number"])
async def test_the_websocket_answers_invalid_json_and_stays_open(what):
    text, named = HOSTILE[what]
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
               (b"cookie", f"sessionid={await new_session()}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/jobs", headers=headers)
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    assert (await communicator.receive_json_from(timeout=30))["type"] == "jobs"
    await communicator.send_to(text_data=text.replace('"serving"', '"type": "predict", "serving"', 1))
    reply = await communicator.receive_json_from(timeout=30)
    assert reply["type"] == "error" and reply["code"] == "invalid_json" and named in reply["message"]
    await communicator.send_json_to({"type": "shout"})  # still reading
    assert (await communicator.receive_json_from(timeout=30))["code"] == "invalid_message"
    await communicator.disconnect()
