#!/usr/bin/env python3
"""`make stack`: the distributed setup on one machine, without Docker.

Starts, against a local Redis (``REDIS_URL``, default redis://127.0.0.1:6379/0):

- a Celery worker: ``celery -A webapp worker -P threads -c 32`` (it loads its
  servings, then consumes their queues; ``WORKER_QUEUES=sentiment`` or
  ``MLSERVICES_WORKER_SERVINGS`` narrows them), and
- the ASGI server: ``daphne -b 127.0.0.1 -p 8000 webapp.asgi:application``.

It migrates the database first (``DATABASE_URL``, default the SQLite file of
``make run``). If nothing answers at ``REDIS_URL`` and ``redis-server`` is
installed, it starts one for the session (no persistence). A worker that
exits on its own (a crash, SIGKILL, or the hard time limit: exit 70) is
started again under the same node name (``stack-worker-<this pid>@<host>``):
the new process puts the jobs the old one was running back on the queue as it
starts (``webapp.jobs.liveness``), instead of Redis handing them out after
CELERY_VISIBILITY_TIMEOUT. Ctrl-C (or SIGTERM) stops
everything it started, gracefully, then for good after STOP_TIMEOUT seconds.

    .venv/bin/python bin/stack.py [--host 127.0.0.1] [--port 8000] [--concurrency 32] [--queues sentiment]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STOP_TIMEOUT = float(os.environ.get("STACK_STOP_TIMEOUT", "30"))
RESTARTS_ALLOWED = 5  # worker restarts within RESTART_WINDOW before the stack gives up
RESTART_WINDOW = 60.0


class Stop(Exception):
    """Ctrl-C or SIGTERM."""


def say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def _own_group_and_die_with_parent() -> None:
    """In each child: its own process group (so Ctrl-C reaches only this
    script, which then stops the children in order) and SIGTERM when this
    script dies, so a killed stack leaves nothing behind."""
    os.setpgrp()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(args, cwd=ROOT, env=env, preexec_fn=_own_group_and_die_with_parent)
    say(f"{name} started, pid {process.pid}: {' '.join(args)}")
    return process


def redis_answers(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return True  # nothing to check with; the worker will say
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"[stack] gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def stop(processes: dict[str, subprocess.Popen]) -> None:
    alive = {name: p for name, p in processes.items() if p.poll() is None}
    for name, p in alive.items():
        say(f"stopping {name} (pid {p.pid})")
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, p in alive.items():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop within {STOP_TIMEOUT:.0f} s; killing it")
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "32")))
    parser.add_argument("--queues", default=os.environ.get("WORKER_QUEUES", ""), help="comma-separated; default: the worker's servings")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)

    env = dict(os.environ, REDIS_URL=args.redis_url, PYTHONUNBUFFERED="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    processes: dict[str, subprocess.Popen] = {}

    def on_signal(signum, frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not redis_answers(args.redis_url):
            url = urlparse(args.redis_url)
            local = url.hostname in ("127.0.0.1", "localhost", "::1")
            if not (local and shutil.which("redis-server")):
                say(f"no Redis answers at {args.redis_url}; start one (`redis-server`) or set REDIS_URL")
                return 2
            processes["redis"] = spawn(
                "redis",
                ["redis-server", "--port", str(url.port or 6379), "--bind", url.hostname, "--save", "", "--appendonly", "no"],
                env,
            )
            wait_for(lambda: redis_answers(args.redis_url), 20, f"redis-server on {args.redis_url}")

        say("migrating the database")
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)

        worker_args = [
            sys.executable, "-m", "celery", "-A", "webapp", "worker", "-P", "threads",
            "-c", str(args.concurrency), "-n", f"stack-worker-{os.getpid()}@%h", "-l", "INFO",
        ]
        if args.queues:
            worker_args += ["-Q", args.queues]
        web_args = [sys.executable, "-m", "daphne", "-b", args.host, "-p", str(args.port), "webapp.asgi:application"]
        processes["worker"] = spawn("worker", worker_args, env)
        processes["web"] = spawn("web", web_args, env)
        say(f"the site: http://{args.host}:{args.port}  (Ctrl-C stops web and worker)")

        restarts: list[float] = []
        while True:
            pid, status = os.wait()  # a child ended (Ctrl-C interrupts this with Stop)
            code = os.waitstatus_to_exitcode(status)
            name = next((n for n, p in processes.items() if p.pid == pid), None)
            if name is None:
                continue
            processes[name].returncode = code
            if name != "worker":
                say(f"{name} exited with {code}; stopping the stack")
                return code or 1
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            if len(restarts) > RESTARTS_ALLOWED:
                say(f"the worker exited {len(restarts)} times within {RESTART_WINDOW:.0f} s; stopping the stack")
                return code or 1
            say(f"worker exited with {code}; starting a fresh one (it puts the jobs it left running back on the queue)")
            processes["worker"] = spawn("worker", worker_args, env)
    except Stop as why:
        say(f"{why}: stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave orphans
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop({n: p for n, p in processes.items() if n != "redis"})
        stop({n: p for n, p in processes.items() if n == "redis"})  # last: the worker hands its jobs back to it


if __name__ == "__main__":
    sys.exit(main())
