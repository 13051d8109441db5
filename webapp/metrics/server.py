"""A worker's own metrics port: ``GET /metrics`` on ``WORKER_METRICS_HOST:WORKER_METRICS_PORT``.

A Celery worker has no web server, so it serves its metrics itself, on a
daemon thread (``wsgiref``, one thread per request), behind the same bearer
token as the web process's ``/metrics``. Started by ``webapp.worker`` when the
worker is set up, if ``WORKER_METRICS_PORT`` is not 0 and ``METRICS_TOKEN`` is
set. One port per worker process: with the threads or solo pool (the ones to
use) that process runs every task and batch, so its registry holds them all::

    server = serve(9100, "0.0.0.0", "s3cret")   # curl -H 'Authorization: Bearer s3cret' :9100/metrics
    server.shutdown()
"""

from __future__ import annotations

import logging
import socketserver
import threading
from http import HTTPStatus
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

from . import access

log = logging.getLogger(__name__)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the worker's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per scrape would drown the worker's log
        pass


def protected(app, token: str):
    """``app`` (WSGI) at ``/metrics`` only, for the bearer of ``token``."""

    def guarded(environ, start_response):
        refused = access.refusal(environ.get("HTTP_AUTHORIZATION"), token)
        if refused is None and environ.get("PATH_INFO", "") != "/metrics":
            refused = 404, "Not Found; the metrics are at /metrics"
        if refused is not None:
            status, message = refused
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            if status == 401:
                headers.append(("WWW-Authenticate", 'Bearer realm="metrics"'))
            start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            return [message.encode() + b"\n"]
        return app(environ, start_response)

    return guarded


def serve(port: int, host: str, token: str) -> WSGIServer:
    """Serve this process's registry on ``host:port`` from a daemon thread; returns the server."""
    server = make_server(host, port, protected(make_wsgi_app(REGISTRY), token), _Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def start_from_settings() -> WSGIServer | None:
    """The worker's metrics port as the settings ask (None when off); a port taken is logged, not raised."""
    from django.conf import settings

    port, host, token = settings.WORKER_METRICS_PORT, settings.WORKER_METRICS_HOST, settings.METRICS_TOKEN
    if not port:
        return None
    if not token:
        log.warning("WORKER_METRICS_PORT=%d but METRICS_TOKEN is not set: metrics are not served; "
                    "set METRICS_TOKEN (the scraper's bearer token) to serve them", port)
        return None
    try:
        server = serve(port, host, token)
    except OSError as exc:
        log.error("metrics not served: cannot listen on %s:%d (%s); give each worker on this host its own "
                  "WORKER_METRICS_PORT", host, port, exc)
        return None
    log.info("metrics served on http://%s:%d/metrics (bearer METRICS_TOKEN)", host, server.server_port)
    return server
