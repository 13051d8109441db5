"""The door: what the web process checks before anything is enqueued.

``check(serving, input)`` refuses unknown servings, oversized text and input
the serving's own ``validate`` rejects, each with a message that names the
value and the limit. It loads no model, so it is the same in both modes.
"""

from __future__ import annotations

import functools

import mlservices
from django.conf import settings


@functools.cache
def _serving(name: str) -> mlservices.Serving:
    mlservices.registry.factory(name)  # unknown names: ServingNotFound listing the known ones
    return mlservices.build(name, **settings.MLSERVICES.get(name, {}))


def _text_of(input) -> str | None:
    if isinstance(input, str):
        return input
    if isinstance(input, dict) and isinstance(input.get("text"), str):
        return input["text"]
    return None


def check(serving: str, input):
    if not isinstance(serving, str) or not serving:
        raise mlservices.InvalidInput("'serving' is missing; name one, e.g. \"sentiment\"")
    text = _text_of(input)
    limit = settings.MLSERVICES_MAX_TEXT_CHARS
    if text is not None and len(text) > limit:
        raise mlservices.InvalidInput(
            f"the text is {len(text):,} characters; the limit is {limit:,} "
            "(MLSERVICES_MAX_TEXT_CHARS). Send a shorter text"
        )
    return _serving(serving).check(input)


def summary(input) -> str:
    text = _text_of(input)
    shown = text if text is not None else repr(input)
    shown = " ".join(shown.split())
    return shown if len(shown) <= 120 else shown[:119] + "…"
