"""``GET /metrics``: this web process's metrics in Prometheus' text format, for the bearer of METRICS_TOKEN.

In in-process mode they include the servings' (this process runs them); in
distributed mode the servings' are on each worker's port, and this process
adds the messages waiting in each serving's broker queue
(``collectors.BrokerQueues``), counted here once for the whole cluster.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from . import access
from .collectors import broker_queues


class _WebRegistry:
    """The process's registry, plus the broker's queues in distributed mode."""

    def collect(self):
        yield from REGISTRY.collect()
        if settings.MLSERVICES_MODE == "celery" and settings.REDIS_URL:
            yield from broker_queues(settings.REDIS_URL).collect()


@csrf_exempt
@require_GET
def metrics(request):
    refused = access.refusal(request.headers.get("Authorization"), settings.METRICS_TOKEN)
    if refused is not None:
        status, message = refused
        response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_WebRegistry()), content_type=CONTENT_TYPE_LATEST)
