"""``GET /status/``: the live status page, for staff only (others are sent to the admin's login).

The page starts from a snapshot taken now (``snapshot.latest``) and keeps
itself current over ``/ws/status/`` (``consumers.StatusConsumer``).
"""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from . import snapshot


@staff_member_required
def status_page(request):
    return render(request, "status.html", {"snapshot": snapshot.latest()})
