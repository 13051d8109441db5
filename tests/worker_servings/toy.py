"""``toy``: mlservices.testing.Toy with a gate and a log a test in another process can use.

Options: ``gate``, a file path: inference waits until the file exists (empty:
never waits); ``announce``, a file path: each batch's items are appended to it
as one JSON line when inference starts, so a test knows a batch is in flight.
Inputs are ints; the result is ``{"input": n, "output": 2 * n}``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlservices import register
from mlservices.testing import Toy


class FileGate:
    """``threading.Event``-like, but opened by creating a file (from any process)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def is_set(self) -> bool:
        return self.path.exists()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.path.exists():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


class FileToy(Toy):
    def __init__(self, gate: str, announce: str):
        super().__init__(open_gate=True)
        if gate:
            self.gate = FileGate(gate)
        self.announce = announce

    def inference(self, model, items: list) -> list:
        if self.announce:
            with open(self.announce, "a", encoding="utf-8") as f:
                f.write(json.dumps({"pid": os.getpid(), "items": items}) + "\n")
        return super().inference(model, items)


@register("toy")
def toy(gate: str = "", announce: str = ""):
    return FileToy(gate, announce).serving("toy")
