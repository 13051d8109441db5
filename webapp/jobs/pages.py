"""The pages people see: one page per serving, drawn in the browser from data.

Every serving's page is the same template (``serving.html``): the view hands
it the serving's spec (what the page builds its form from), the owner's
recent jobs of that serving as JSON, and the site's navigation; the page's
modules (static/js/main.js) render it and the websocket keeps it live. ``/``
is the home serving's page (``MLSERVICES_HOME_SERVING``, default
``sentiment``); ``/s/<name>/`` is any serving's::

    GET /s/background_removal/   ->  serving.html with spec_json("background_removal")
"""

from __future__ import annotations

import mlservices
from django.conf import settings
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

from . import owners, validation

RECENT_JOBS = 20


def home_serving() -> str:
    return settings.MLSERVICES_HOME_SERVING


def title(name: str) -> str:
    """The name people see: the serving's own ``title`` (``"transcription"`` -> ``"Transcribe"``),
    else its name humanised (``"background_removal"`` -> ``"Background removal"``)."""
    own = validation.definition(name).title
    if own:
        return own
    words = name.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def serving_url(name: str) -> str:
    return reverse("home") if name == home_serving() else reverse("serving-page", args=[name])


def navigation(current: str | None) -> list[dict]:
    """The site's navigation: every registered serving, the current one marked."""
    return [
        {
            "name": name,
            "label": title(name),
            "url": serving_url(name),
            "current": name == current,
            "description": validation.definition(name).description,
        }
        for name in mlservices.names()
    ]


def _page(request, serving: str):
    if serving not in mlservices.names():
        return _not_found(request, serving)
    owner = owners.of_request(request, create_session=True)
    definition = validation.definition(serving)
    return render(
        request,
        "serving.html",
        {
            "serving": serving,
            "title": title(serving),
            "description": definition.description,
            "spec": validation.spec_json(serving),
            "jobs": [job.as_json() for job in owner.jobs().filter(serving=serving)[:RECENT_JOBS]],
            "nav_servings": navigation(serving),
            "mode": settings.MLSERVICES_MODE,
        },
    )


def _not_found(request, serving: str):
    return render(
        request,
        "not_found.html",
        {"serving": serving, "nav_servings": navigation(None)},
        status=404,
    )


@ensure_csrf_cookie
def home(request):
    return _page(request, home_serving())


@ensure_csrf_cookie
def serving_page(request, serving: str):
    return _page(request, serving)
