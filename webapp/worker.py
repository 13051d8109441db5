"""The Celery worker's side of the distributed mode (docs/worker.md).

Imported with the Celery app, so its signal handlers exist in every process
that loads the app, but they act only in a worker:

- **Servings load at start.** Before the worker takes its first message it
  loads (and warms up) the servings it serves, on the best device present
  (``mlservices.devices.best_device``: CUDA when available, else CPU; set
  ``MLSERVICES_DEVICE`` to force one). With the threads or solo pool that is
  the worker process itself, one copy of each model; with prefork each child
  loads after the fork (``worker_process_init``), so CUDA is never initialised
  in a process that forks. Which servings: ``MLSERVICES_WORKER_SERVINGS``, else
  those its ``-Q`` queues name, else every configured one; the worker then
  also consumes each loaded serving's queue. A serving that fails to load is
  logged and its jobs fail with the readable reason (e.g. how to install the
  weights), so owners are told instead of waiting forever.
- **Hard time limits.** Celery's own time limits do nothing in the threads
  pool, so a watchdog thread watches every model call (one batch) and every
  task's run (``watch``): one still going after its serving's hard limit
  means the model or the GPU is stuck, and the worker exits at once (exit
  code 70), even when the jobs of that batch have already failed on the soft
  limit. Jobs still running were not acknowledged (``acks_late``): the
  liveness checks (``webapp.jobs.liveness``) put them back on the queue once
  the worker's heartbeat stops; ``JOBS_MAX_ATTEMPTS`` bounds how often. The soft limit is a bounded wait in
  ``webapp.jobs.execution.run_stream`` (per step: a long stream that keeps making progress is not stuck).
- **Batch records.** ``celery -A webapp inspect mlservices`` answers, per
  serving of each worker: device, model version, batcher settings, items
  waiting, and the most recent batches (size, key, wait, inference time,
  start); under ``versions`` the same for every deployed version, with the
  last minute's figures (what the staff status page shows, docs/operations.md).
- **Metrics.** With ``WORKER_METRICS_PORT`` and ``METRICS_TOKEN`` set, the
  worker serves its Prometheus metrics on that port (``webapp.metrics.server``).
- **Nothing stuck.** The worker names itself ``"<node name>:<pid>"`` on the
  jobs it claims (``execution.WORKER``) and starts ``webapp.jobs.liveness``
  before it loads its servings: heartbeats, the jobs of dead workers (and of
  its own earlier process) back on the queue, lost messages sent again.
- **Redis outages.** The worker's broker channels acknowledge through
  ``OutageProofQoS``, so a lost connection no longer runs jobs twice or stops
  the worker; Celery's log handlers get ``webapp.outages``'s filter: an outage
  logs a few lines, not a traceback per failed call.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time

from celery import signals
from celery.worker.control import control_command, inspect_command
from kombu.transport import redis as kombu_redis

log = logging.getLogger("webapp.worker")

EXIT_HARD_TIME_LIMIT = 70  # EX_SOFTWARE: a supervisor (compose, bin/stack.py) starts a fresh worker
RECENT_BATCHES = 100

_state: dict = {"in_worker": False, "pool": None, "servings": [], "loaded_in": None, "errors": {}}


# --- Which servings, loaded when ----------------------------------------------


def _pool_name(pool_cls) -> str:
    if isinstance(pool_cls, str):
        return pool_cls.rsplit(":", 1)[0].rsplit(".", 1)[-1]
    return getattr(pool_cls, "__module__", repr(pool_cls)).rsplit(".", 1)[-1]


def discover_extra_servings() -> list[str]:
    """Import the packages named by ``MLSERVICES_EXTRA_SERVINGS``; return all serving names."""
    import mlservices
    from django.conf import settings

    if settings.MLSERVICES_EXTRA_SERVINGS:  # their options come from MLSERVICES_CONFIG, like any serving's
        mlservices.discover(*settings.MLSERVICES_EXTRA_SERVINGS)
    return mlservices.names()


def servings_to_serve(queues: list[str]) -> list[str]:
    """The servings a worker consuming ``queues`` loads (see the module docstring)."""
    from django.conf import settings

    known = discover_extra_servings()
    wanted = settings.MLSERVICES_WORKER_SERVINGS
    if not wanted:
        wanted = [q for q in queues if q in known] or [n for n in settings.MLSERVICES if n in known]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise RuntimeError(
            f"MLSERVICES_WORKER_SERVINGS names {', '.join(unknown)}, which no serving module registers; "
            f"known servings: {', '.join(known) or 'none'}"
        )
    return list(dict.fromkeys(wanted))


def load_servings(names: list[str]) -> dict[str, str]:
    """Load and warm up ``names`` in this process; return {name: error} for those that failed."""
    import mlservices
    from mlservices.devices import best_device

    from webapp.versions import sync as versions

    runtime = mlservices.runtime.default()
    runtime.first_routes = versions.first_routes  # the database's active versions, if any (docs/models.md)
    errors = {}
    for name in names:
        started = time.monotonic()
        log.info("loading serving %s on %s", name, runtime.device or best_device())
        try:
            runtime.serving(name)
        except Exception as exc:  # the worker keeps going; its jobs fail with this reason
            errors[name] = f"{type(exc).__name__}: {exc}"
            log.error("serving %s did not load; its jobs will fail with the reason: %s", name, exc)
            continue
        batcher = runtime.batcher(name)
        log.info(
            "serving %s loaded and warmed up in %.1f s; batches of up to %d, waiting up to %g ms",
            name, time.monotonic() - started,
            batcher.max_batch_size, batcher.max_wait * 1000,
        )
    _state["loaded_in"] = os.getpid()
    _state["errors"] = errors
    versions.start_polling(runtime, names)  # version changes a broadcast missed
    return errors


def _check_limits(names: list[str]) -> None:
    from django.conf import settings

    from webapp.jobs.execution import time_limits

    visibility = settings.CELERY_VISIBILITY_TIMEOUT
    for name in names:
        soft, hard = time_limits(name)
        if soft >= hard:
            log.warning("serving %s: soft time limit %g s is not below the hard one (%g s)", name, soft, hard)
        if hard >= visibility:
            log.warning(
                "serving %s: hard time limit %g s is not below CELERY_VISIBILITY_TIMEOUT (%g s): a slow job "
                "can be handed to a second worker while the first still runs it (its outcome is still "
                "recorded once)", name, hard, visibility,
            )


@signals.celeryd_after_setup.connect
def _on_worker_setup(sender=None, instance=None, **kwargs):
    """In the worker's main process, before it consumes: pick servings, queues, and load."""
    worker = instance
    if worker is None or not hasattr(worker, "app"):
        return
    from django.apps import apps

    if not apps.ready:  # the Django fixup has set it up already; setup() again would redo LOGGING
        import django

        django.setup()
    _state["in_worker"] = True
    import mlservices
    from django.conf import settings

    mlservices.configure(settings.MLSERVICES, wrap_infer=watched_infer)  # nothing loaded yet
    _state["pool"] = pool = _pool_name(worker.pool_cls)
    queues = worker.app.amqp.queues
    names = servings_to_serve(list(queues.consume_from))
    for name in names:
        if name not in queues.consume_from:
            queues.select_add(name)
    _state["servings"] = names
    log.info(
        "worker %s: pool %s, concurrency %s, servings %s, queues %s",
        worker.hostname, pool, worker.concurrency, ", ".join(names) or "none",
        ", ".join(queues.consume_from),
    )
    _check_limits(names)
    kombu_redis.Channel.QoS = OutageProofQoS  # this process's broker channels live through Redis outages
    _start_liveness(worker, names)
    from webapp.metrics.server import start_from_settings

    start_from_settings()  # WORKER_METRICS_PORT: this process's metrics (docs/operations.md)
    if pool == "prefork":
        log.warning(
            "the prefork pool loads one copy of every model per child process; prefer "
            "`-P threads` (one copy per device, batches shared by all tasks)"
        )
        return  # each child loads after the fork (_on_worker_process_init); the parent never does
    if pool not in ("threads", "thread", "solo"):
        log.warning("pool %s is not tested with servings; use -P threads", pool)
    load_servings(names)


class OutageProofQoS(kombu_redis.QoS):
    """kombu's Redis acknowledgements, made to live through a lost broker connection.

    When the connection drops, Celery closes its channel and consumes on a new
    one; the jobs it had delivered keep running (the threads pool cannot stop
    them). kombu then (1) put those messages back on close, so each ran a
    second time, counting an attempt, and with Redis still down that close
    crashed the consumer ("Unrecoverable error: AttributeError: 'NoneType'
    object has no attribute 'hostname'"); and (2) crashed it again when a job
    finished and was acknowledged on the closed channel ("... no attribute
    'client'"). Either stopped the worker. Here nothing is put back on close,
    and an acknowledgement on a closed channel is dropped: a delivery Redis
    still holds comes back after the visibility timeout and finds its job done;
    the jobs of a worker that really died come back through
    ``webapp.jobs.liveness``.
    """

    restore_at_shutdown = False

    def ack(self, delivery_tag):
        if self.channel.connection is not None:  # None: closed after a lost connection
            super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        if self.channel.connection is not None:
            super().reject(delivery_tag, requeue=requeue)


def _start_liveness(worker, names: list[str]) -> None:
    """Claim jobs as this worker, announce it, and put back what an earlier process left running."""
    from webapp.jobs import execution
    from webapp.jobs.liveness import Liveness

    execution.WORKER = f"{worker.hostname}:{os.getpid()}"
    Liveness(worker.app, execution.WORKER, worker.hostname, names).start()


@signals.after_setup_logger.connect
def _quiet_outages(logger=None, **kwargs):
    """Celery replaced the root logger's handlers (Django's LOGGING filter went with them): filter its own."""
    from webapp.outages import QuietConnectionErrors

    quiet = QuietConnectionErrors()
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(quiet)


@signals.worker_process_init.connect
def _on_worker_process_init(**kwargs):
    """A prefork child (or the solo pool): load here unless this process already has."""
    if _state["in_worker"] and _state["loaded_in"] != os.getpid():
        load_servings(_state["servings"])


# --- Hard time limits -------------------------------------------------------------


class Watchdog:
    """Exits the process when a watched run outlives its deadline.

    ``with watchdog.watch(serving, what):`` around each run; a thread checks
    the deadlines. ``exit`` is what is called on a breach (``os._exit`` by
    default: the process cannot trust its stuck threads to unwind).
    """

    def __init__(self, hard_limit=None, exit=None, check_every: float = 0.5):
        self._hard_limit = hard_limit
        self._exit = exit or os._exit
        self._check_every = check_every
        self._runs: dict[int, tuple[float, float, str, str]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def hard_limit(self, serving: str) -> float:
        if self._hard_limit is not None:
            return self._hard_limit(serving)
        from webapp.jobs.execution import time_limits

        return time_limits(serving)[1]

    @contextlib.contextmanager
    def watch(self, serving: str, what: str):
        limit = self.hard_limit(serving)
        run_id = next(self._ids)
        with self._lock:
            self._runs[run_id] = (time.monotonic() + limit, limit, serving, what)
            self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._runs.pop(run_id, None)

    def overdue(self) -> list[tuple[float, str, str]]:
        now = time.monotonic()
        with self._lock:
            return [(limit, serving, what) for deadline, limit, serving, what in self._runs.values() if now > deadline]

    def _ensure_thread(self) -> None:  # with self._lock held
        if self._thread is None or self._pid != os.getpid():  # a forked child needs its own
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="hard-time-limit", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        stop = threading.Event()  # never set: the thread lives as long as the process
        while not stop.wait(self._check_every):
            late = self.overdue()
            if late:
                self._fire(late)
                return

    def _fire(self, late) -> None:
        for limit, serving, what in late:
            log.critical(
                "%s of serving %s is still running after its hard time limit of %g s: the model or the "
                "device is stuck. Stopping this worker (exit %d) so that a fresh one gets its unfinished "
                "jobs again (each job is tried at most JOBS_MAX_ATTEMPTS times)",
                what, serving, limit, EXIT_HARD_TIME_LIMIT,
            )
        for handler in logging.getLogger().handlers + log.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        self._exit(EXIT_HARD_TIME_LIMIT)


watchdog = Watchdog()


def watched_infer(name: str, infer):
    """The runtime's ``wrap_infer``: every model call (one batch) runs under the watchdog."""

    def call(items):
        with watchdog.watch(name, f"a batch of {len(items)}"):
            return infer(items)

    return call


def guard(serving: str, what: str):
    """The execution guard of this process: the watchdog in a worker, nothing elsewhere.

    In a worker it watches the run itself (preprocess, the wait, postprocess);
    the model calls are watched by ``watched_infer``: the soft limit ends a job's
    wait, but only the hard limit notices a batch that never returns.
    """
    if not _state["in_worker"]:
        return contextlib.nullcontext()
    return watchdog.watch(serving, what)


# --- What the worker reports ---------------------------------------------------


def _json_key(key):
    return key if key is None or isinstance(key, (bool, int, float, str)) else repr(key)


def _batches(records, recent: int) -> list[dict]:
    return [
        {
            "size": r.size,
            "key": _json_key(r.key),
            "wait_ms": round(r.wait_ms, 3),
            "inference_ms": round(r.inference_ms, 3),
            "failed": r.failed,
            "started_at": round(r.started_at, 6),
        }
        for r in (records[-recent:] if recent > 0 else [])
    ]


def _version_report(deployed, recent: int, now: float) -> dict:
    """One deployed version: its route, batcher settings, and the last minute of its batches."""
    from webapp.status.figures import live

    batcher, records = deployed.batcher, deployed.batcher.records()
    return {
        "version": deployed.loaded.version,
        "route": deployed.route.version,
        "weight": deployed.route.weight,
        "device": deployed.loaded.device,
        "batch_size": batcher.max_batch_size,
        "batch_timeout_ms": batcher.max_wait * 1000,
        "parallel_batches": batcher.parallel,
        "max_queued": batcher.max_queued,
        "pending": batcher.pending(),
        "last_minute": live(records, now, batcher.max_batch_size),
        "batches": _batches(records, recent),
    }


def report(recent: int = RECENT_BATCHES) -> dict:
    """This process's servings and their recent batches, as JSON-able data: per serving, its main
    version's figures, and under ``versions`` every deployed version's (``time``: this process's clock)."""
    import mlservices

    runtime = mlservices.runtime.default()
    now = time.time()
    servings = {}
    for name in runtime.loaded():
        loaded, batcher = runtime.serving(name), runtime.batcher(name)
        records = batcher.records()
        servings[name] = {
            "device": loaded.device,
            "version": loaded.version,
            "batch_size": batcher.max_batch_size,
            "batch_timeout_ms": batcher.max_wait * 1000,
            "pending": batcher.pending(),
            "batches_recorded": len(records),
            "batches": _batches(records, recent),
            "versions": [_version_report(d, recent, now) for d in runtime.deployed(name) if d.loaded is not None],
        }
    return {
        "pid": os.getpid(), "pool": _state["pool"], "time": now, "servings": servings, "load_errors": _state["errors"],
    }


@inspect_command(
    name="mlservices",
    args=[("recent", int)],
    signature="[N=100]",
)
def _inspect_mlservices(state, recent=RECENT_BATCHES, **kwargs):
    """Servings of this worker and their recent batches (size, wait, inference time)."""
    return report(int(recent))


@control_command(name="mlservices_sync", args=[("serving", str)], signature="[SERVING]")
def _control_mlservices_sync(state, serving=None, **kwargs):
    """Deploy the database's versions of this worker's servings now (sent after every admin action)."""
    import mlservices

    from webapp.versions import sync as versions

    names = [n for n in _state["servings"] if serving in (None, n)]
    if _state["in_worker"] and _state["loaded_in"] == os.getpid() and names:
        versions.sync_in_background(mlservices.runtime.default(), names)  # never block the consumer
    return {"ok": f"syncing {', '.join(names) or 'nothing'}"}
