"""Serve what the database says: each serving's active and canary versions, swapped live.

``desired_routes(name)`` turns the database records into the runtime's routes:
the active version with 100 − canary % of the requests, the canary with its
percentage; no active version means the settings' own model (``Route()``).
``sync(runtime, names)`` deploys those routes where they differ from what the
runtime serves (``Runtime.deploy`` loads beside, switches atomically, drains
the old; each newly loaded version's files are re-hashed first with
``Repository.verify``: a tampered version is refused and the old routes keep
serving). It runs:

- at a serving's first use in a worker or an in-process web server: the runtime
  deploys ``first_routes(name)`` (set by ``webapp.worker.load_servings`` and
  ``VersionsConfig.ready``), so a process that starts later serves the active
  versions, never the settings' model first;
- when told: every admin action broadcasts the Celery control command
  ``mlservices_sync`` (``notify``); in in-process mode the web process
  syncs its own runtime instead;
- every ``MODELS_SYNC_INTERVAL`` seconds in every process holding servings
  (``Poller``), for broadcasts it missed and for actions of other processes.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import mlservices
from django.conf import settings
from django.db import connections
from mlservices.runtime import Route

from .models import ModelVersion

log = logging.getLogger("webapp.versions.sync")
CONTROL_COMMAND = "mlservices_sync"
_lock = threading.Lock()  # one sync at a time per process (poll, broadcast, start)
_web = {"started": False, "poller": None}
_last_errors: dict[str, str | None] = {}  # the last sync error of each serving (logged when it changes)


def repository():
    """The model repository of this site (``$MLSERVICES_MODEL_REPOSITORY``)."""
    from mlservices.model_repository import Repository

    return Repository()


def version_options(name: str, path) -> dict:
    """The factory options that serve the stored version at ``path``: its folder, and no
    pins from the settings (those name the settings' model, not this version)."""
    options = {"model": str(path)}
    known = mlservices.registry.options(name)
    options.update({pin: None for pin in ("revision", "sha256") if pin in known})
    return options


def desired_routes(name: str, repo=None) -> list[Route]:
    """The routes the database asks ``name`` to serve (reads manifests, hashes nothing)."""
    rows = {
        row.status: row
        for row in ModelVersion.objects.filter(
            serving=name, status__in=(ModelVersion.Status.ACTIVE, ModelVersion.Status.CANARY)
        )
    }
    active, canary = rows.get(ModelVersion.Status.ACTIVE), rows.get(ModelVersion.Status.CANARY)
    if active is None and canary is None:
        return [Route()]
    repo = repo or repository()
    share = canary.canary_percent if canary else 0
    routes = []
    if active is not None:
        routes.append(Route(active.version, version_options(name, repo.get(name, active.version).path), float(100 - share)))
    else:
        routes.append(Route("", {}, float(100 - share)))
    if canary is not None:
        routes.append(Route(canary.version, version_options(name, repo.get(name, canary.version).path), float(share)))
    return routes


def sync_serving(runtime: mlservices.Runtime, name: str, repo=None) -> bool:
    """Deploy ``name``'s desired routes if they differ from the runtime's; True if it deployed.

    A serving not loaded yet stays as it is: its first use deploys the database's
    routes (``first_routes``, the runtime's hook)."""
    current = runtime.routes(name)
    if not current:
        return False
    repo = repo or repository()
    routes = desired_routes(name, repo)
    if routes == current:
        return False
    for route in routes:
        if route.version and not any(c.same_version(route) for c in current):
            repo.verify(name, route.version)  # IntegrityError: nothing is switched
    runtime.deploy(name, routes)
    return True


def first_routes(name: str) -> list[Route]:
    """What a serving's first use deploys (``Runtime.first_routes``): the database's versions,
    their hashes verified; the settings' model when none is chosen or they cannot be served."""
    try:
        repo = repository()
        routes = desired_routes(name, repo)
        for route in routes:
            if route.version:
                repo.verify(name, route.version)
        return routes
    except Exception as exc:  # no database here (a script, a test), or a tampered version
        log.warning("serving %s: serving the settings' model, not the database's versions (%s: %s)",
                    name, type(exc).__name__, exc)
        return [Route()]


def sync(runtime: mlservices.Runtime, names: list[str]) -> dict[str, str]:
    """Sync each serving of ``names``; returns {name: error} for those that could not be."""
    errors = {}
    with _lock:
        for name in names:
            try:
                if sync_serving(runtime, name):
                    log.info("serving %s now serves %s", name, ", ".join(
                        f"{r.version or 'the settings model'} ({r.weight:g} %)" for r in runtime.routes(name)))
            except Exception as exc:  # keep serving what serves now; the admin shows the versions
                errors[name] = f"{type(exc).__name__}: {exc}"
                if _last_errors.get(name) != errors[name]:  # once per new reason, not at every poll
                    log.error("serving %s: could not deploy its versions from the database: %s", name, errors[name])
        for name in names:
            _last_errors[name] = errors.get(name)
    return errors


def _sync_on_thread(runtime: mlservices.Runtime, names: list[str]) -> None:
    try:
        sync(runtime, names)
    except Exception as exc:  # the database is away: the next tick tries again
        log.warning("could not check the model versions (%s: %s)", type(exc).__name__, exc)
    finally:
        connections.close_all()  # this thread's connections only


def sync_in_background(runtime: mlservices.Runtime, names: list[str]) -> threading.Thread:
    """``sync`` on a thread (a control command's handler must not block the consumer)."""
    thread = threading.Thread(target=_sync_on_thread, args=(runtime, names), name="versions-sync", daemon=True)
    thread.start()
    return thread


class Poller:
    """Syncs ``names`` every ``interval`` seconds on a daemon thread until ``stop()``."""

    def __init__(self, runtime: mlservices.Runtime, names: list[str], interval: float):
        self.runtime, self.names, self.interval = runtime, list(names), interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="versions-poll", daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            _sync_on_thread(self.runtime, self.names)


def start_polling(runtime: mlservices.Runtime, names: list[str]) -> Poller | None:
    interval = settings.MODELS_SYNC_INTERVAL
    return Poller(runtime, names, interval).start() if interval > 0 and names else None


def celery_app():
    """The Celery app that reaches the workers (the site's; tests point it at theirs)."""
    from webapp.celery import app

    return app


def notify(serving: str) -> None:
    """Tell every process holding ``serving`` to sync now (after an action has committed)."""
    from webapp.jobs.dispatch import distributed

    if distributed():
        try:
            celery_app().control.broadcast(CONTROL_COMMAND, arguments={"serving": serving})
        except Exception as exc:  # the broker is away: the workers' poll catches up
            log.warning("could not broadcast %s (%s); workers sync within MODELS_SYNC_INTERVAL", CONTROL_COMMAND, exc)
    elif _web["started"]:
        sync_in_background(mlservices.runtime.default(), [serving])


def web_server_process() -> bool:
    """Whether this process is the site's web server (daphne, or ``manage.py runserver``),
    not a test run or a management command that happens to handle a request."""
    program = Path(sys.argv[0]) if sys.argv else Path()
    return program.name == "daphne" or "daphne" in program.parts[-2:-1] or sys.argv[1:2] == ["runserver"]


def start_in_web_process(**signal_kwargs) -> None:
    """In-process mode, at the first request of a web server process: start polling the
    database for version changes (``request_started`` handler; does nothing elsewhere)."""
    from django.core.signals import request_started

    from webapp.jobs.dispatch import distributed

    request_started.disconnect(start_in_web_process, dispatch_uid="versions-sync-in-web-process")
    if distributed() or not web_server_process() or _web["started"]:
        return  # Celery mode (workers hold the servings), or not a server (a test, a command)
    _web["started"] = True
    _web["poller"] = start_polling(mlservices.runtime.default(), mlservices.names())
