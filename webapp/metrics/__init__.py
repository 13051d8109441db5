"""Prometheus metrics of the servings, per serving and model version (docs/operations.md).

Every process that runs servings records them in prometheus_client's default
registry: the web process in in-process mode, each Celery worker in
distributed mode. They are read at ``/metrics`` (the web process,
``webapp.metrics.views``) and on each worker's own port
(``WORKER_METRICS_PORT``, ``webapp.metrics.server``), both behind
``Authorization: Bearer <METRICS_TOKEN>`` (``webapp.metrics.access``); with
no ``METRICS_TOKEN`` set, metrics are not served at all.

- ``families``: the metrics, and what moves them: ``job_finished(job)`` and
  ``prediction_finished(...)`` (called by ``webapp.jobs.execution`` where
  outcomes are recorded), ``on_event`` (subscribed to ``mlservices.observers``:
  batches, loads, unloads).
- ``collectors``: figures read when scraped: items waiting in each batcher,
  messages waiting in each serving's broker queue, GPU memory and utilisation.
- The process's CPU seconds and resident memory are prometheus_client's own
  ``process_*`` metrics (Linux).
"""

from .families import job_finished, prediction_finished

__all__ = ["job_finished", "prediction_finished"]
