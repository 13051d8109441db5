"""The pages people see. They render state; the websocket keeps it live."""

from django.conf import settings
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from . import owners

RECENT_JOBS = 20


@ensure_csrf_cookie
def home(request):
    owner = owners.of_request(request, create_session=True)
    return render(
        request,
        "home.html",
        {
            "jobs": owner.jobs()[:RECENT_JOBS],
            "max_text_chars": settings.MLSERVICES_MAX_TEXT_CHARS,
            "mode": settings.MLSERVICES_MODE,
        },
    )
