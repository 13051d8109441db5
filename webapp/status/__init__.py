"""The staff status page (``/status/``): workers online, their servings and live figures.

- ``figures``: the last minute of a batcher's records in a few numbers (pure).
- ``snapshot``: what the page shows, collected from the workers (Celery
  ping and the ``mlservices`` inspect command) or, in in-process mode, from
  this process's runtime.
- ``views``: the page, staff only (others go to the admin's login).
- ``consumers``: the page's websocket (``/ws/status/``), pushing a fresh
  snapshot every ``STATUS_REFRESH_S`` seconds; staff only (close 4003).
"""
