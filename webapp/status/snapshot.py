"""What the status page shows, as JSON: the workers online and, per serving version, live figures.

Distributed mode: the workers that answer a Celery ping
(``app.control.inspect().ping()``), each with its ``mlservices`` inspect
answer (``webapp.worker.report``: servings, versions, device, batch
settings, items waiting, the last minute's figures), and the messages
waiting in each serving's broker queue. In-process mode: this process's own
runtime, as one "worker". Blocking (it waits up to ``PING_TIMEOUT_S`` +
``REPORT_TIMEOUT_S`` for the workers): call it from a thread. ``latest()``
shares one collection between the pages open at the same time::

    {"type": "status", "mode": "celery", "taken_at": 1763762000.1, "refresh_s": 2.0,
     "queues": {"sentiment": 0},
     "workers": [{"node": "worker@host", "pid": 7, "pool": "threads", "answered": true, "load_errors": {},
                  "servings": [{"serving": "sentiment", "version": "v2@…", "route": "v2", "weight": 100.0,
                                "device": "cpu", "batch_size": 32, "batch_timeout_ms": 5.0, "pending": 0,
                                "parallel_batches": 2, "max_queued": null,
                                "last_minute": {"items_per_s": 12.5, "batch_fill": 0.4, ...}}]}]}
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

PING_TIMEOUT_S = 1.0
REPORT_TIMEOUT_S = 2.0

_lock = threading.Lock()
_latest: dict = {}


def worker_entry(node: str, report: dict | None) -> dict:
    """One worker's row: its servings flattened to one entry per deployed version."""
    if report is None:  # answered the ping, not the report (busy, or an older worker)
        return {"node": node, "pid": None, "pool": None, "answered": False, "load_errors": {}, "servings": []}
    servings = [
        {"serving": name, **{k: v for k, v in version.items() if k != "batches"}}
        for name, serving in sorted(report["servings"].items())
        for version in serving.get("versions", [])
    ]
    return {
        "node": node, "pid": report.get("pid"), "pool": report.get("pool"), "answered": True,
        "load_errors": report.get("load_errors", {}), "servings": servings,
    }


def celery_workers() -> list[dict]:
    """Every worker that answers a ping, with its ``mlservices`` report."""
    from webapp.celery import app

    pongs = app.control.inspect(timeout=PING_TIMEOUT_S).ping() or {}
    nodes = sorted(pongs)
    reports: dict[str, dict] = {}
    if nodes:
        for answer in app.control.broadcast(
            "mlservices", arguments={"recent": 0}, destination=nodes, reply=True,
            timeout=REPORT_TIMEOUT_S, limit=len(nodes),
        ):
            reports.update(answer)
    return [worker_entry(node, reports.get(node)) for node in nodes]


def this_process() -> list[dict]:
    """In-process mode: this web process, which runs the servings itself."""
    from webapp import worker
    from webapp.jobs import execution

    report = worker.report(recent=0)
    return [{**worker_entry(execution.WORKER, report), "pool": "inprocess"}]


def collect() -> dict:
    """A fresh snapshot (blocking)."""
    distributed = settings.MLSERVICES_MODE == "celery"
    snapshot = {
        "type": "status",
        "mode": settings.MLSERVICES_MODE,
        "taken_at": time.time(),
        "refresh_s": settings.STATUS_REFRESH_S,
        "workers": celery_workers() if distributed else this_process(),
        "queues": None,
    }
    if distributed and settings.REDIS_URL:
        from webapp.metrics.collectors import broker_queues

        snapshot["queues"] = broker_queues(settings.REDIS_URL).lengths()
    return snapshot


def latest(max_age: float | None = None) -> dict:
    """A snapshot at most ``max_age`` seconds old (default: half of ``STATUS_REFRESH_S``), shared by all callers."""
    max_age = settings.STATUS_REFRESH_S / 2 if max_age is None else max_age
    with _lock:  # one collection at a time; callers meanwhile get its result
        if not _latest or time.monotonic() - _latest["at"] > max_age:
            _latest.update(at=time.monotonic(), snapshot=collect())
        return _latest["snapshot"]
