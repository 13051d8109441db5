"""The Celery app of the distributed mode; the worker is started with

    celery -A webapp worker -P threads -c 32 -Q sentiment

(see docs/worker.md). Settings are the Django ones prefixed ``CELERY_``;
``webapp.worker`` adds what a servings worker does at start (load the
servings it serves), the hard-time-limit watchdog and the ``mlservices``
inspect command (``celery -A webapp inspect mlservices``).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["webapp.jobs"])

from webapp import worker  # noqa: E402,F401  (signal handlers and inspect command)
