"""Toy servings from ``mlservices.testing`` with a gate and a log a test in another process can use.

- ``toy``: ints; the result is ``{"input": n, "output": 2 * n}``.
- ``windows``: a streaming serving (``{"windows": N, "value": V}`` fans out into N items).
- ``files``: a file serving (PNG/JPEG/GIF bytes in; an artifact ``copy.bin`` out).

Options of each: ``gate``, a file path: inference waits until the file exists
(empty: never waits); if the file holds a number N, only the first N batches
pass until it holds a larger one; ``announce``, a file path: each batch's items are
appended to it as one JSON line when inference starts, so a test knows a
batch is in flight.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlservices import register
from mlservices.testing import Files, Toy, Windows


class FileGate:
    """``threading.Event``-like, but opened by creating a file (from any process).

    An empty file opens it for good; a file holding N lets N batches through
    in all (a turnstile: batches of one serving pass one at a time)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.passed = 0

    def _permits(self) -> float:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        return int(text) if text else float("inf")

    def is_set(self) -> bool:
        return self._permits() > self.passed

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._permits() <= self.passed:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        self.passed += 1
        return True


def gated(toy: Toy, gate: str, announce: str) -> Toy:
    """``toy`` with a file gate, announcing each batch to the file ``announce``."""
    if gate:
        toy.gate = FileGate(gate)
    inference = toy.inference

    def announced(model, items: list) -> list:
        if announce:
            with open(announce, "a", encoding="utf-8") as f:
                f.write(json.dumps({"pid": os.getpid(), "items": items}) + "\n")
        return inference(model, items)

    toy.inference = announced
    return toy


@register("toy")
def toy(gate: str = "", announce: str = ""):
    return gated(Toy(), gate, announce).serving("toy")


@register("windows")
def windows(gate: str = "", announce: str = ""):
    return gated(Windows(), gate, announce).serving("windows")


@register("files")
def files(gate: str = "", announce: str = ""):
    return gated(Files(), gate, announce).serving("files")
