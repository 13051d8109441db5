"""Redis (broker and channel layer) outages in the logs: a few clear lines, not hundreds of tracebacks.

Losing Redis makes every component fail at once, over and over: each socket's
receive, each push of a job update, each enqueue, Celery's reconnect loop.
Two tools keep the log readable (docs/worker.md, "Redis outages"):

- ``Outage(log, what)`` is a dependency's state as one component sees it:
  ``failed(exc)`` logs one warning when it becomes unreachable, ``ok()`` one
  line when it answers again, with how long it was away::

      redis = Outage(log, "the channel layer's Redis")
      redis.failed(ConnectionError("Error 111 connecting to 127.0.0.1:6379"))   # logs a warning
      redis.failed(ConnectionError("Error 111 connecting to 127.0.0.1:6379"))   # logs nothing
      redis.ok()                                                                 # "... answers again after 4.2 s"

- ``QuietConnectionErrors`` is a logging filter for what other code logs: a
  record whose exception is a connection error (``is_connection_error``) is
  shown once per logger and message per ``window`` seconds, on one line with
  the error and without the traceback; repeats within the window are dropped
  and counted on the next line shown. Settings install it on the console
  handler (``LOGGING``); the worker on Celery's handlers.
"""

from __future__ import annotations

import logging
import threading
import time


def connection_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "Redis or the broker is unreachable"."""
    import kombu.exceptions
    import redis.exceptions

    return (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        kombu.exceptions.OperationalError,
        ConnectionError,  # OSError: refused, reset, broken pipe
        TimeoutError,
    )


def is_connection_error(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from (``raise ... from``), is a connection error."""
    kinds, seen = connection_errors(), set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return True
        seen.add(id(exc))
        exc = exc.__cause__
    return False


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Outage:
    """One warning when ``what`` becomes unreachable, one line when it is back (thread-safe)."""

    def __init__(self, log: logging.Logger, what: str, consequence: str = ""):
        self.log, self.what, self.consequence = log, what, consequence
        self._since: float | None = None
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> bool:
        """Record a failure; True (and one warning) when it starts an outage."""
        with self._lock:
            if self._since is not None:
                return False
            self._since = time.monotonic()
        self.log.warning("%s is unreachable (%s)%s", self.what, describe(exc),
                         f"; {self.consequence}" if self.consequence else "")
        return True

    def ok(self) -> None:
        """Record a success; logs once when it ends an outage."""
        if self._since is None:  # the common case: no lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            self.log.warning("%s answers again after %.1f s", self.what, time.monotonic() - since)


class QuietConnectionErrors(logging.Filter):
    """Shows a connection error once per logger and message per ``window`` seconds, without traceback."""

    def __init__(self, window: float = 60.0):
        super().__init__()
        self.window = window
        self._shown: dict[tuple[str, object], tuple[float, int]] = {}  # key -> (shown at, dropped since)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_connection_error(exc):
            return True
        key, now = (record.name, record.msg), time.monotonic()
        with self._lock:
            shown_at, dropped = self._shown.get(key, (None, 0))
            if shown_at is not None and now - shown_at < self.window:
                self._shown[key] = (shown_at, dropped + 1)
                return False
            self._shown[key] = (now, 0)
        record.msg = f"{record.getMessage()} ({describe(exc)})" + (
            f" [{dropped} more like this in the last {self.window:.0f} s]" if dropped else ""
        )
        record.args, record.exc_info, record.exc_text = (), None, None
        return True
