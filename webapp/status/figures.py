"""A batcher's recent records in the few numbers a person watching wants.

``live(records, now, batch_size)`` looks at the batches that started in the
``window_s`` seconds before ``now`` (both on the clock of the process that
ran them, ``time.time()``)::

    live([BatchRecord(8, None, 2.0, 10.0, False, started_at=99.0)], now=100.0, batch_size=16)
    # -> {"window_s": 60.0, "batches": 1, "items": 8, "failed": 0, "items_per_s": 0.133,
    #     "batch_fill": 0.5, "inference_ms": {"p50": 10.0, "p99": 10.0}, "wait_ms": {"p50": 2.0, "p99": 2.0}}

When the batcher keeps fewer records than the window holds (it keeps
``RECORDS_KEPT``), items/s is taken over the span the records cover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mlservices.batcher import RECORDS_KEPT, BatchRecord

WINDOW_S = 60.0


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def live(records: Sequence[BatchRecord], now: float, batch_size: int, window_s: float = WINDOW_S) -> dict:
    """Items/s, batch fill and p50/p99 of inference and wait over the last ``window_s`` seconds."""
    recent = [r for r in records if now - window_s <= r.started_at <= now]
    span = window_s
    if len(records) >= RECORDS_KEPT and recent and recent[0] is records[0]:  # older batches were forgotten
        span = max(now - records[0].started_at, 1e-3)
    items = sum(r.size for r in recent)
    inference = [r.inference_ms for r in recent]
    wait = [r.wait_ms for r in recent]

    def rounded(value):
        return None if value is None else round(value, 3)

    return {
        "window_s": window_s,
        "batches": len(recent),
        "items": items,
        "failed": sum(1 for r in recent if r.failed),
        "items_per_s": round(items / span, 3),
        "batch_fill": round(items / len(recent) / batch_size, 3) if recent else None,
        "inference_ms": {"p50": rounded(percentile(inference, 50)), "p99": rounded(percentile(inference, 99))},
        "wait_ms": {"p50": rounded(percentile(wait, 50)), "p99": rounded(percentile(wait, 99))},
    }
