"""What a streamed run yields: progress events, then the final result.

``Runtime.stream(name, input)`` yields, in order::

    Progress(done=1, total=3, partial={...})   # item 1 of 3 finished: its postprocessed output
    Progress(done=2, total=3, partial={...})
    Final(result={...}, version="model@sha256:…")

An input that preprocess turns into a single item yields only the ``Final``.
``version`` names the weights that produced the result (the loaded serving's
``version``), so callers never read it out of the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Progress:
    done: int
    total: int
    partial: Any

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclasses.dataclass(frozen=True)
class Final:
    result: Any
    version: str


Event = Progress | Final
