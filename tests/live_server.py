"""Real processes for end-to-end tests: a database, the ASGI server, a worker.

``live_database(tmp_path)`` gives a ``DATABASE_URL`` for processes started
by a test: a fresh PostgreSQL database when ``DATABASE_URL`` points at
PostgreSQL (CI), else a SQLite file; either way migrated and private to the
test. ``asgi_server(env)`` starts daphne on a free loopback port and yields
its base URL once it answers; ``start_process`` is the general form.
Readiness is polled with a deadline, never slept on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS"))}
    env.update({"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "MLSERVICES_OFFLINE": "1"})
    env.update(extra)
    return env


@contextlib.contextmanager
def live_database(tmp_path: Path) -> Iterator[str]:
    outer = os.environ.get("DATABASE_URL", "")
    if outer.startswith(("postgres://", "postgresql://")):
        import psycopg

        name = f"live_{uuid.uuid4().hex[:12]}"
        admin_url = outer.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = outer.rsplit("/", 1)[0] + "/" + name
    else:
        name, url = None, f"sqlite:///{tmp_path / 'live.sqlite3'}"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=base_env(DATABASE_URL=url), check=True,
    )
    try:
        yield url
    finally:
        if name:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def start_process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


@contextlib.contextmanager
def asgi_server(env: dict[str, str], log_path: Path) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "webapp.asgi:application"]
    with start_process(args, env, log_path) as process:
        url = f"http://127.0.0.1:{port}"

        def ready():
            if process.poll() is not None:
                raise RuntimeError(f"daphne exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            return _answers(url + "/api/servings")

        wait_until(ready, timeout=60, what=f"daphne on {url}")
        yield url
