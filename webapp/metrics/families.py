"""The serving metrics this process records, and the calls that move them.

Labels: ``serving`` and ``version`` (the loaded serving's version string, as a
job's ``model_version`` shows it; empty for a request that failed before a
version answered it). Requests are counted where their outcome is recorded
(``webapp.jobs.execution``): in the worker that ran them, or in the web
process for a job it failed itself (``queue_unavailable``). Batches and loads
come from ``mlservices.observers`` in the process that ran them::

    job_finished(job)                                  # a job's outcome was recorded
    prediction_finished("sentiment", "v2@…", None)     # a live prediction was answered
    prediction_finished("sentiment", "", "invalid_input")
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from mlservices import observers

LABELS = ("serving", "version")
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "mlservices_requests", "Requests finished (failed ones included), by kind: job or prediction", [*LABELS, "kind"]
)
FAILURES = Counter(
    "mlservices_request_failures", "Requests that failed, by error code (as shown to their owner)",
    [*LABELS, "kind", "code"],
)
JOB_LATENCY = Histogram(
    "mlservices_job_latency_seconds", "A job from queued to finished (end to end), by final status",
    [*LABELS, "status"], buckets=JOB_SECONDS,
)
QUEUE_WAIT = Histogram(
    "mlservices_queue_wait_seconds", "How long the oldest item of a batch waited in the batcher", LABELS,
    buckets=SECONDS,
)
BATCH_SIZE = Histogram("mlservices_batch_size", "Items per model call (one batch)", LABELS, buckets=BATCH_SIZES)
INFERENCE = Histogram("mlservices_inference_seconds", "One model call (a batch)", LABELS, buckets=SECONDS)
BATCH_FAILURES = Counter("mlservices_batch_failures", "Model calls (batches) that raised", LABELS)
LOAD_SECONDS = Gauge(
    "mlservices_model_load_seconds", "How long the version took to load and warm up, at its last load",
    [*LABELS, "device"],
)
LOADED = Gauge("mlservices_model_loaded", "1 while the version is loaded in this process", [*LABELS, "device"])

_devices: dict[tuple[str, str], str] = {}  # (serving, version) -> the device it is loaded on
_lock = threading.Lock()


def job_finished(job) -> None:
    """Count ``job`` (its outcome was just recorded) and time it from queued to finished."""
    version = job.model_version or ""
    REQUESTS.labels(job.serving, version, "job").inc()
    if job.status == "failed":
        FAILURES.labels(job.serving, version, "job", job.error_code or "unknown").inc()
    if job.queued_at and job.finished_at:
        seconds = max(0.0, (job.finished_at - job.queued_at).total_seconds())
        JOB_LATENCY.labels(job.serving, version, job.status).observe(seconds)


def prediction_finished(serving: str, version: str, code: str | None) -> None:
    """Count a live prediction: answered (``code`` None) or failed with ``code``."""
    REQUESTS.labels(serving, version, "prediction").inc()
    if code is not None:
        FAILURES.labels(serving, version, "prediction", code).inc()


def on_event(event: observers.Event) -> None:
    """Record an ``mlservices.observers`` event (a batch, a load, an unload)."""
    if isinstance(event, observers.BatchDone):
        record, labels = event.record, (event.serving, event.version)
        BATCH_SIZE.labels(*labels).observe(record.size)
        QUEUE_WAIT.labels(*labels).observe(record.wait_ms / 1000.0)
        INFERENCE.labels(*labels).observe(record.inference_ms / 1000.0)
        if record.failed:
            BATCH_FAILURES.labels(*labels).inc()
    elif isinstance(event, observers.Loaded):
        with _lock:
            _devices[(event.serving, event.version)] = event.device
        LOAD_SECONDS.labels(event.serving, event.version, event.device).set(event.seconds)
        LOADED.labels(event.serving, event.version, event.device).set(1)
    elif isinstance(event, observers.Unloaded):
        with _lock:
            device = _devices.pop((event.serving, event.version), None)
        if device is not None:
            LOADED.remove(event.serving, event.version, device)
