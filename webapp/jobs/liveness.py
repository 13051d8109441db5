"""Nothing stuck: a dead worker's jobs go back on the queue; lost messages are sent again.

Runs in every Celery worker, on one thread (``Liveness``, started by
``webapp.worker``); docs/worker.md ("Reliability") gives the numbers.

- **Heartbeats.** Every ``JOBS_WORKER_HEARTBEAT`` seconds a worker writes the
  Redis key ``mlservices:worker:<identity>`` (its servings and pid), which
  expires after ``JOBS_WORKER_DEAD_AFTER`` seconds: a worker whose key has
  expired is dead (SIGKILL, OOM, power, the hard time limit's exit).
- **Dead workers.** A job records who claimed it (``Job.worker``, from
  ``execution.WORKER``: ``"<node name>:<pid>"``). At every heartbeat one worker
  of the cluster (a Redis lock) looks for jobs ``running`` on a worker without
  a key and puts each back: ``queued`` again (pushed to its owner), and its
  message back on its queue, by moving the dead worker's unacknowledged
  delivery from Redis's ``unacked`` hash back to the queue (so it does not also
  come back after ``CELERY_VISIBILITY_TIMEOUT``), or by sending it again when
  Redis has lost it. At start, before it consumes, a worker does the same for
  the jobs of an earlier process with its own node name: ``make stack``,
  compose and systemd restart a worker under the same name, and node names
  are unique among live workers.
- **Reaper.** Every ``JOBS_REAPER_INTERVAL`` seconds (again one worker of the
  cluster), jobs ``queued`` for longer than ``JOBS_REQUEUE_AFTER`` whose message
  waits in no queue and was not delivered within that time (Redis restarted
  without persistence, say) are sent again. A job sent again more than
  ``JOBS_MAX_REQUEUES`` times fails with ``lost``; a job whose serving no live
  worker serves fails with ``unserved`` once queued for ``JOBS_UNSERVED_AFTER``.

Both checks wait until Redis has been up for ``JOBS_WORKER_DEAD_AFTER`` seconds:
after a Redis restart every key is gone until each worker's next heartbeat,
and no live worker may be taken for dead. Putting a job back twice is
harmless: ``execute_job`` runs a job at most once at a time, records one
outcome, and counts attempts (``JOBS_MAX_ATTEMPTS``).

A worker thread rather than Celery beat: beat is one more process to run and
supervise (exactly one in the whole cluster), and its checks would wait in
the same queues as the jobs they rescue; every worker has this thread, so the
checks run as long as any worker lives, and the Redis locks make each run once
per interval across workers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from webapp.outages import Outage, connection_errors

from . import events, execution
from .models import Job

log = logging.getLogger(__name__)

PREFIX = "mlservices:"
WORKERS = PREFIX + "workers"  # the set of identities that have sent a heartbeat
EXECUTE = "jobs.execute"
REAP_BATCH = 1000  # queued jobs looked at per run of the reaper
RESENT_KEPT_S = 86400  # how long a job's count of re-sends is kept


def worker_key(identity: str) -> str:
    return f"{PREFIX}worker:{identity}"


def job_of(payload: dict) -> str | None:
    """The job id a broker message is about (``jobs.execute``, Celery's message protocol 2), else None.

    >>> job_of({"headers": {"task": "jobs.execute"}, "properties": {"body_encoding": "base64"},
    ...         "body": base64.b64encode(b'[["0b7e..."], {}, {}]').decode()})
    '0b7e...'
    """
    try:
        if payload["headers"]["task"] != EXECUTE:
            return None
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


@dataclass
class Delivery:
    tag: str
    delivered_at: float  # time.time() of the worker that received it


class Broker:
    """What liveness reads and writes in the broker's Redis, through a kombu channel (its key names apply).

    ``broker = Broker.open(celery_app)`` ... ``broker.close()``; its calls time
    out instead of hanging on a stuck Redis.
    """

    def __init__(self, connection):
        self.connection = connection
        self.channel = connection.default_channel  # connects (and pings)
        with self.channel.conn_or_acquire() as client:
            self.client = client

    @classmethod
    def open(cls, app) -> Broker:
        connection = app.connection_for_write(transport_options={"socket_timeout": 5, "socket_connect_timeout": 3})
        try:
            return cls(connection)
        except BaseException:
            connection.release()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.release()

    # Who is alive

    def beat(self, identity: str, info: dict, ttl: float) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(worker_key(identity), json.dumps(info), px=int(ttl * 1000)).sadd(WORKERS, identity).execute()

    def alive(self) -> dict[str, dict]:
        """{identity: its heartbeat} of every worker whose heartbeat has not expired."""
        identities = sorted(m.decode() for m in self.client.smembers(WORKERS))
        if not identities:
            return {}
        beats = self.client.mget([worker_key(i) for i in identities])
        gone = [i for i, beat in zip(identities, beats) if beat is None]
        if gone:
            self.client.srem(WORKERS, *gone)
        return {i: json.loads(beat) for i, beat in zip(identities, beats) if beat is not None}

    def uptime(self) -> float:
        """Seconds since Redis started (a Redis that will not say is taken as up for long)."""
        import redis

        try:
            return float(self.client.info("server")["uptime_in_seconds"])
        except (redis.ResponseError, KeyError, ValueError):
            return float("inf")

    def lock(self, name: str, seconds: float) -> bool:
        """Take the cluster-wide lock ``name`` for ``seconds`` (never released: it spaces the runs)."""
        return bool(self.client.set(f"{PREFIX}lock:{name}", str(os.getpid()), nx=True, px=max(1, int(seconds * 1000))))

    # Where the messages are

    def deliveries(self) -> dict[str, list[Delivery]]:
        """{job id: its deliveries not acknowledged yet} (kombu's ``unacked`` hash and index)."""
        times = dict(self.client.zrange(self.channel.unacked_index_key, 0, -1, withscores=True))
        found: dict[str, list[Delivery]] = {}
        for tag, raw in self.client.hgetall(self.channel.unacked_key).items():
            job_id = job_of(json.loads(raw)[0])
            if job_id is not None:
                found.setdefault(job_id, []).append(Delivery(tag.decode(), times.get(tag, 0.0)))
        return found

    def waiting(self, queues) -> set[str]:
        """Ids of the jobs whose message waits in one of ``queues`` (every priority's list)."""
        keys = {self.channel._q_for_pri(q, pri) for q in queues for pri in self.channel.priority_steps}
        found = set()
        for key in sorted(keys):
            for raw in self.client.lrange(key, 0, -1):
                job_id = job_of(json.loads(raw))
                if job_id is not None:
                    found.add(job_id)
        return found

    def restore(self, delivery: Delivery) -> None:
        """Move an unacknowledged delivery back to its queue, as the visibility timeout would later."""
        self.channel.qos.restore_by_tag(delivery.tag, client=self.client)

    def count_resend(self, job_id: str) -> int:
        key = f"{PREFIX}resent:{job_id}"
        with self.client.pipeline() as pipe:
            count, _ = pipe.incr(key).expire(key, RESENT_KEPT_S).execute()
        return int(count)


# --- Putting jobs back -------------------------------------------------------------


def send(job: Job) -> None:
    """A fresh ``jobs.execute`` message for ``job`` on its serving's queue (what dispatch sends)."""
    from .tasks import execute

    execute.apply_async((str(job.pk),), queue=job.serving)


def put_back(broker: Broker, job: Job, deliveries: dict[str, list[Delivery]]) -> str:
    """Its unacknowledged deliveries back on the queue, or, with none, a new message; says which."""
    mine = deliveries.get(str(job.pk), [])
    for delivery in mine:
        broker.restore(delivery)
    if mine:
        return "restored"
    send(job)
    return "sent again"


def requeue_running(broker: Broker, jobs, why: str) -> int:
    """Put ``jobs`` (running on a dead worker) back on the queue; returns how many went back."""
    deliveries, count = broker.deliveries(), 0
    for job in jobs:
        back = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, worker=job.worker, attempts=job.attempts)
        if not back.update(status=Job.Status.QUEUED, progress=0.0, partials=[]):
            continue  # finished, or claimed again, meanwhile
        job.status, job.progress, job.partials = Job.Status.QUEUED, 0.0, []
        events.job_changed(job)
        how = put_back(broker, job, deliveries)
        log.info("job %s: %s; back on queue %s (%s)", job.pk, why, job.serving, how)
        count += 1
    return count


def sweep_dead_workers(broker: Broker) -> int:
    """Requeue the jobs running on workers whose heartbeat has expired; returns how many."""
    alive = broker.alive()
    running = Job.objects.filter(status=Job.Status.RUNNING).exclude(worker="").exclude(worker__startswith="web:")
    dead = sorted(set(running.values_list("worker", flat=True)) - set(alive))
    count = 0
    for worker in dead:
        jobs = list(running.filter(worker=worker))
        n = requeue_running(broker, jobs, f"its worker {worker} is dead (no heartbeat for "
                                          f"{settings.JOBS_WORKER_DEAD_AFTER:g} s)")
        if n:
            log.warning("worker %s is dead (no heartbeat for %g s): %d of its running jobs are back on their "
                        "queues", worker, settings.JOBS_WORKER_DEAD_AFTER, n)
        count += n
    return count


def requeue_previous(broker: Broker, node: str, started) -> int:
    """At a worker's start (``started``): requeue the jobs earlier processes with this node name left running."""
    jobs = list(Job.objects.filter(status=Job.Status.RUNNING, worker__startswith=f"{node}:", started_at__lt=started))
    n = requeue_running(broker, jobs, f"its worker {node} was restarted")
    if n:
        log.warning("%d running jobs of an earlier worker named %s are back on their queues", n, node)
    return n


def reap(broker: Broker) -> dict[str, int]:
    """Send again the queued jobs whose message was lost; fail the hopeless ones. Counts by outcome."""
    now = timezone.now()
    candidates = list(
        Job.objects.filter(status=Job.Status.QUEUED, queued_at__lt=now - timedelta(seconds=settings.JOBS_REQUEUE_AFTER))
        .order_by("queued_at")[:REAP_BATCH]
    )
    counts = {"sent again": 0, "restored": 0, "lost": 0, "unserved": 0}
    if not candidates:
        return counts
    served = {name for beat in broker.alive().values() for name in beat.get("servings", [])}
    waiting = broker.waiting(sorted({job.serving for job in candidates}))
    deliveries, wall = broker.deliveries(), time.time()
    for job in candidates:
        key, age = str(job.pk), (now - job.queued_at).total_seconds()
        if job.serving not in served:
            if age > settings.JOBS_UNSERVED_AFTER and execution.fail_job(
                job, "unserved",
                f"no worker serves {job.serving} (none has for {age:.0f} s); the site's operator must start one "
                "(MLSERVICES_WORKER_SERVINGS), then submit this again",
            ):
                counts["unserved"] += 1
            continue
        if key in waiting or any(wall - d.delivered_at < settings.JOBS_REQUEUE_AFTER for d in deliveries.get(key, [])):
            continue  # in line, or a worker has just taken it
        if broker.count_resend(key) > settings.JOBS_MAX_REQUEUES:
            if execution.fail_job(
                job, "lost",
                f"the job was lost {settings.JOBS_MAX_REQUEUES + 1} times (the task queue restarted, or the workers "
                "taking it stopped before starting it) and was given up. Submit it again",
            ):
                counts["lost"] += 1
            continue
        counts[put_back(broker, job, deliveries)] += 1
    if any(counts.values()):
        log.warning("reaper: of %d jobs queued for over %g s, %s", len(candidates), settings.JOBS_REQUEUE_AFTER,
                    ", ".join(f"{n} {what}" for what, n in counts.items() if n))
    return counts


# --- The thread ------------------------------------------------------------------------


class Liveness:
    """A worker's heartbeat (one daemon thread) and its checks (another, so a long reaper run never
    delays a heartbeat and makes a live worker look dead).

    ``Liveness(app, identity, node, servings).start()`` once the worker is set
    up, before it consumes: it beats at once and puts back the jobs an earlier
    process with the same node name left running (at the first check that
    reaches Redis and the database); then both threads tick every
    ``JOBS_WORKER_HEARTBEAT`` seconds for as long as the process lives.
    """

    def __init__(self, app, identity: str, node: str, servings: list[str]):
        self.app, self.identity = app, identity
        self.info = {"node": node, "pid": os.getpid(), "servings": list(servings)}
        self.redis = Outage(log, "Redis (worker liveness)", "dead workers and lost jobs are looked for again when it is back")
        self.database = Outage(log, "the database (worker liveness)")
        if settings.JOBS_WORKER_DEAD_AFTER < 2 * settings.JOBS_WORKER_HEARTBEAT:
            log.warning("JOBS_WORKER_DEAD_AFTER (%g s) is less than two heartbeats (JOBS_WORKER_HEARTBEAT, %g s): "
                        "live workers may be taken for dead", settings.JOBS_WORKER_DEAD_AFTER,
                        settings.JOBS_WORKER_HEARTBEAT)
        self._previous = (node, timezone.now())  # put back once: jobs of this node name claimed before now
        self._next_reap = 0.0
        self._brokers: dict[str, Broker] = {}

    def start(self) -> None:
        self._tick("beat", self._beat)
        self._tick("check", self._check)
        for name, step in (("beat", self._beat), ("check", self._check)):
            threading.Thread(target=self._loop, args=(name, step), name=f"liveness-{name}", daemon=True).start()

    def _loop(self, name: str, step) -> None:
        while True:
            time.sleep(settings.JOBS_WORKER_HEARTBEAT)
            self._tick(name, step)

    def _beat(self, broker: Broker) -> None:
        broker.beat(self.identity, self.info, settings.JOBS_WORKER_DEAD_AFTER)

    def _check(self, broker: Broker) -> None:
        if self._previous is not None:
            requeue_previous(broker, *self._previous)
            self._previous = None
        if broker.uptime() < settings.JOBS_WORKER_DEAD_AFTER:
            return  # every heartbeat went with the restart: the view of who is alive is not complete yet
        if broker.lock("dead-workers", settings.JOBS_WORKER_HEARTBEAT * 0.9):
            sweep_dead_workers(broker)
        if time.monotonic() >= self._next_reap:
            self._next_reap = time.monotonic() + settings.JOBS_REAPER_INTERVAL
            if broker.lock("reaper", settings.JOBS_REAPER_INTERVAL * 0.9):
                reap(broker)

    def _tick(self, name: str, step) -> None:
        """``step(broker)`` on this thread's connection; outages logged once, never raised."""
        try:
            if name not in self._brokers:
                self._brokers[name] = Broker.open(self.app)
            step(self._brokers[name])
            self.redis.ok()
            if name == "check":
                self.database.ok()
        except connection_errors() as exc:
            self.redis.failed(exc)
            broker = self._brokers.pop(name, None)
            if broker is not None:
                broker.close()
        except DatabaseError as exc:
            self.database.failed(exc)
        except Exception:
            log.exception("worker liveness (%s) failed; trying again in %g s", name, settings.JOBS_WORKER_HEARTBEAT)
        finally:
            if name == "check":
                close_old_connections()
