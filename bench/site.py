"""The site as a user reaches it: a real daphne, real websocket clients.

``Site`` starts ``daphne webapp.asgi:application`` on a free loopback port, in
either mode of the site (``inprocess``: the serving runs in daphne; ``celery``:
daphne enqueues, a worker runs it); ``Sockets`` are websocket clients of it
(the ``websockets`` library's), one socket per client thread, sending
``predict`` messages as the site's page does::

    with Site(mode="inprocess", env={...}, workdir=tmp) as site:
        sockets = Sockets(site.ws_url, site.origin)
        sockets.predict("sentiment", "I loved it")   # the "prediction" message's result
        sockets.ping_ms()                             # a websocket round trip that runs no model
        sockets.close()

so ``closed_loop(lambda text: sockets.predict("sentiment", text), ...)``
measures what a page feels: its websocket, the consumer, the dispatch (a
thread pool, or Celery), the serving, and the answer's way back over the
channel layer.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench.harness import ANSWER_TIMEOUT, ROOT, BenchError, child_env

READY_TIMEOUT = 120  # seconds for daphne to answer, or for the first prediction (the model loads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """``daphne webapp.asgi:application`` in ``mode`` (``inprocess`` or ``celery``).

    ``env`` adds the site's settings (``DATABASE_URL``, ``SENTIMENT_MODEL``,
    ``MLSERVICES_CONFIG``, thread variables, and in ``celery`` mode
    ``REDIS_URL``; without ``REDIS_URL`` the channel layer is the in-memory one).
    ``clients``: how many sockets of one anonymous owner may each have a
    prediction running (``PREDICTIONS_PER_OWNER``; the bench's clients have no
    session, so the site sees them as one owner)."""

    def __init__(self, *, mode: str, env: dict[str, str], workdir: Path, clients: int, root: Path = ROOT):
        if mode not in ("inprocess", "celery"):
            raise BenchError(f"mode={mode!r}; use inprocess or celery")
        self.mode = mode
        self.root = root
        self.port = free_port()
        self.log_path = workdir / f"daphne-{mode}.log"
        self.env = child_env(
            MLSERVICES_MODE=mode,
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(48),
            PREDICTIONS_PER_OWNER=str(max(4, clients)),
            **env,
        )
        if mode == "inprocess":
            self.env.pop("REDIS_URL", None)
        self.args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "webapp.asgi:application"]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/jobs"

    @property
    def origin(self) -> str:
        return self.url

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def migrate(self) -> None:
        """Create the site's tables in its ``DATABASE_URL`` (a fresh SQLite file, say)."""
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=self.root, env=self.env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode:
            raise BenchError(f"manage.py migrate failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def __enter__(self) -> Site:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                raise BenchError(f"daphne ({self.mode}) exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"daphne ({self.mode}) did not answer within {READY_TIMEOUT} s:\n{self.log_tail()}")
            time.sleep(0.1)  # polling a server that is starting, with a deadline
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/api/servings", timeout=2) as response:
                return response.status < 500
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Sockets:
    """Websocket clients of a site (the ``websockets`` library's): each client thread that
    calls ``predict`` gets a socket of its own, opened on its first call, as each page has
    one, and waits on it for the answer to its own request. Sockets are kept by thread
    name, so the next measurement's ``client-3`` (``closed_loop``) reuses this one's."""

    def __init__(self, ws_url: str, origin: str):
        self.ws_url = ws_url
        self.origin = origin
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.sockets: dict[str, object] = {}
        self.open = contextlib.ExitStack()  # closes every socket

    def _socket(self):
        name = threading.current_thread().name
        with self.lock:
            connection = self.sockets.get(name)
        if connection is None:
            from websockets.sync.client import connect

            opening = connect(self.ws_url, origin=self.origin, open_timeout=READY_TIMEOUT, max_size=None)
            with self.lock:
                connection = self.open.enter_context(opening)
            greeting = json.loads(connection.recv(timeout=READY_TIMEOUT))  # every socket is told its jobs first
            if greeting.get("type") != "jobs":
                raise BenchError(f"the site greeted a websocket with {greeting!r}")
            with self.lock:
                self.sockets[name] = connection
        return connection

    def ask(self, message: dict, timeout: float = ANSWER_TIMEOUT, *, answered_by_id: bool = True) -> dict:
        """Send ``message`` (with a fresh ``request_id``) on this thread's socket; the answer to it
        (``answered_by_id=False``: the next answer without a request id)."""
        connection = self._socket()
        request_id = next(self.ids)
        connection.send(json.dumps({**message, "request_id": request_id}))
        wanted = request_id if answered_by_id else None
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = json.loads(connection.recv(timeout=max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                raise BenchError(f"no answer to websocket request {request_id} within {timeout:g} s") from None
            except Exception as exc:  # the site closed the socket
                raise BenchError(f"websocket request {request_id} failed: {type(exc).__name__}: {exc}") from exc
            if answer.get("request_id") == wanted:
                return answer

    def predict(self, serving: str, input, timeout: float = ANSWER_TIMEOUT) -> dict:
        """A live prediction, as the page sends it; its result (anything but a ``prediction`` fails the bench)."""
        message = self.ask({"type": "predict", "serving": serving, "input": input}, timeout)
        if message.get("type") != "prediction" or "result" not in message:
            raise BenchError(f"the site answered {message!r}")
        return message["result"]

    def ping_ms(self) -> float:
        """One websocket round trip that runs no model: a message the consumer refuses at once
        (daphne, the consumer, JSON both ways). Milliseconds."""
        started = time.perf_counter()
        message = self.ask({"type": "bench.ping"}, answered_by_id=False)  # refused without its request id
        elapsed = (time.perf_counter() - started) * 1000.0
        if message.get("code") != "invalid_message":
            raise BenchError(f"the site answered a ping with {message!r}")
        return elapsed

    def close(self) -> None:
        with self.lock:
            self.sockets = {}
            with contextlib.suppress(Exception):  # a socket the site closed already
                self.open.close()
