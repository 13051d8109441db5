"""The Celery app of the distributed mode; the worker is started with

    celery -A webapp worker -P threads -c 32 -Q sentiment

(see docs/worker.md). Settings are the Django ones prefixed ``CELERY_``.
A worker process (and only a worker: web processes import this app to send
tasks) also loads ``webapp.worker``: what a servings worker does at start
(load the servings it serves), the hard-time-limit watchdog and the
``mlservices`` inspect command (``celery -A webapp inspect mlservices``).
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["webapp.jobs", "webapp.versions"])


@signals.celeryd_init.connect
def _load_the_worker_side(**kwargs):
    """Fires in ``celery worker`` before it sets up: connect the worker's handlers."""
    from webapp import worker  # noqa: F401  (signal handlers and the inspect command)
