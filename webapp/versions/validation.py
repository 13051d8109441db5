"""A validation run: load a stored version, run its serving's smoke inputs, measure, free.

``validate_version(serving, version)`` re-hashes the version's files
(``Repository.verify``: a mismatch refuses it before anything is loaded),
builds the serving on the version's folder, loads it (``load_time_s``, warm-up
included), runs each smoke input (``Serving.smoke``, else its ``warmup``)
``SMOKE_RUNS`` times inline, checks each result with ``Serving.check_result``
and that it is JSON (artifacts described, as a live prediction's are),
records the median latency (``latency_ms``), then the serving's ``evaluate``
figures (``quality``), and frees the model (CUDA cache included). It returns
the figures; a refusal (loading fails, a malformed or non-JSON result, a hash
mismatch, an evaluation that fails) is the figures so far plus ``error``.
``validate_and_record`` stores the outcome (``actions.record_validation``).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time

import mlservices
from django.db import connections
from mlservices.devices import best_device, release_memory

from webapp.jobs.uploads import described

from . import actions, sync

log = logging.getLogger("webapp.versions.validation")
SMOKE_RUNS = 3  # runs of each smoke input; the median latency is over all of them
SUMMARY_CHARS = 100


class Refused(Exception):
    """The version may not serve; the message says why."""


def summary(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def json_result(serving: str, result):
    """``result`` as stored JSON (artifacts described), or ``Refused`` naming what is not JSON."""
    value = described(result)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise Refused(f"{serving}: a smoke result is not JSON ({exc}); postprocess must return JSON data") from None
    return value


def quality_figures(serving: str, figures) -> dict:
    if not isinstance(figures, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for k, v in figures.items()
    ):
        raise Refused(f"{serving}: evaluate returned {summary(figures)}; it must return a dict of finite numbers")
    return figures


def validate_version(serving: str, version: str, runtime: mlservices.Runtime | None = None, repo=None) -> dict:
    """The figures of a validation run of ``serving`` ``version`` (``error`` set when refused)."""
    runtime = runtime or mlservices.runtime.default()
    repo = repo or sync.repository()
    figures: dict = {}
    loaded = definition = None
    try:
        stored = repo.verify(serving, version)
        definition = runtime.definition(serving, sync.version_options(serving, stored.path))
        device = runtime.device or best_device()
        started = time.perf_counter()
        loaded = definition.setup(device)
        figures["load_time_s"] = round(time.perf_counter() - started, 3)
        figures["device"] = device
        figures["model_version"] = loaded.version
        inputs = definition.smoke or definition.warmup
        outputs, latencies = [], []
        for value in inputs:
            for _ in range(SMOKE_RUNS):
                started = time.perf_counter()
                result = loaded.run(value)
                latencies.append((time.perf_counter() - started) * 1000)
            if definition.check_result is not None:
                definition.check_result(result)
            outputs.append({"input": summary(value), "output": json_result(serving, result)})
        figures["smoke"] = outputs
        if latencies:
            figures["latency_ms"] = round(statistics.median(latencies), 3)
        if definition.evaluate is not None:
            figures["quality"] = quality_figures(serving, definition.evaluate(loaded))
    except Exception as exc:  # every failure refuses the version, with its reason
        figures["error"] = str(exc) if isinstance(exc, (Refused, mlservices.ServingError)) else f"{type(exc).__name__}: {exc}"
        log.warning("%s %s refused: %s", serving, version, figures["error"])
    finally:
        loaded = definition = None  # the only references: the model goes with them
        release_memory()
    return figures


def validate_and_record(serving: str, version: str, username: str = "") -> dict:
    """Validate and store the outcome (the Celery task and the in-process thread both call this)."""
    figures = validate_version(serving, version)
    actions.record_validation(serving, version, figures, username)
    return figures


def validate_on_thread(serving: str, version: str, username: str = "") -> None:
    """``validate_and_record`` on a thread of its own (in-process mode)."""
    try:
        validate_and_record(serving, version, username)
    except Exception:
        log.exception("could not record the validation of %s %s", serving, version)
    finally:
        connections.close_all()  # this thread's connections only
