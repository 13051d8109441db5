"""Toy servings for tests: deterministic, instant, and gateable.

``gated(name)`` builds a serving whose inference doubles numbers but first
waits on ``gate`` (a ``threading.Event``) and announces each batch on
``started`` (a ``queue.Queue`` of the batch's items), so a test can hold the
batcher busy, line items up behind it, and then release it: batch composition
becomes arithmetic, not timing::

    toy = Toy()                         # gate open, nothing recorded yet
    loaded = toy.serving(batch_size=4).setup("cpu")
    loaded.run(21)                      # -> 42

The gate may also be a ``Turnstile``: each batch takes one permit, so a test
lets exactly N batches through (``release(n)``) and holds the next one.

Inputs: ints. ``"boom-pre"`` fails in preprocess, ``"boom-post"`` in
postprocess, and a batch containing ``"boom-infer"`` fails in inference; any
of them fails only where a real serving would.

Two more toys share the gate and the doubling model:

- ``Windows``: a streaming serving. ``{"windows": 3, "value": 10}`` fans out
  into 3 items (10, 11, 12); each finished item streams
  ``{"index": i, "output": 2 * (value + i)}`` and the final result is
  ``{"outputs": [20, 22, 24], "total": 66}``. ``"fail_at": i`` makes item i
  fail in postprocess (the input fails; other inputs do not).
- ``Files``: a file serving (``image`` kind, PNG/JPEG/GIF by their first
  bytes, no decoding): ``{"file": bytes, "flip": False}`` gives
  ``{"bytes": n, "doubled": 2 * n, "copy": Artifact("copy.bin", ...)}``,
  the copy reversed when ``flip`` is true.
"""

from __future__ import annotations

import queue
import threading

from .artifacts import Artifact
from .errors import InvalidInput
from .serving import Prepared, Serving
from .spec import InputSpec, Option


class Turnstile:
    """A gate that lets one batch through per permit (``release(n)``), or all once ``set()``."""

    def __init__(self, permits: int = 0):
        self._permits = threading.Semaphore(permits)
        self._open = threading.Event()

    def release(self, n: int = 1) -> None:
        self._permits.release(n)

    def set(self) -> None:
        self._open.set()
        self._permits.release()  # wakes a batch that waits now; later ones see the gate open

    def is_set(self) -> bool:
        return self._open.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._open.is_set():
            return True
        if not self._permits.acquire(timeout=timeout):
            return False
        if self._open.is_set():
            self._permits.release()  # pass the wake-up on to the next waiter
        return True


class Toy:
    NAME = "toy"
    SPEC = InputSpec()  # any JSON
    reduce = None  # one item per input: no reduce step

    def __init__(self, *, open_gate: bool = True):
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.started: queue.Queue[list] = queue.Queue()
        self.loads = 0

    def load(self, device: str):
        self.loads += 1
        return self

    @property
    def version(self) -> str:
        return "toy@1"

    def preprocess(self, model, input) -> Prepared:
        if input == "boom-pre":
            raise InvalidInput("toy: boom in preprocess")
        key = input.get("key") if isinstance(input, dict) else None
        value = input["value"] if isinstance(input, dict) else input
        return Prepared(item=value, context={"input": value}, key=key)

    def inference(self, model, items: list) -> list:
        self.started.put(list(items))
        if not self.gate.wait(timeout=30):
            raise TimeoutError("toy: the test never opened the gate")
        if "boom-infer" in items:
            raise RuntimeError("toy: boom in inference")
        return [item if isinstance(item, str) else item * 2 for item in items]

    def postprocess(self, model, output, context) -> dict:
        if output == "boom-post":
            raise ValueError("toy: boom in postprocess")
        return {"input": context["input"], "output": output}

    def serving(self, name: str | None = None, **options) -> Serving:
        return Serving(
            name=name or self.NAME,
            load=self.load,
            preprocess=self.preprocess,
            inference=self.inference,
            postprocess=self.postprocess,
            reduce=self.reduce,
            spec=self.SPEC,
            **options,
        )


class Windows(Toy):
    NAME = "windows"
    SPEC = InputSpec(
        kind="json",
        options=(
            Option("windows", int, 3, "how many batch items the input fans out into", minimum=1, maximum=1000),
            Option("value", int, 0, "the first item's value"),
            Option("fail_at", int, -1, "the item that fails in postprocess (-1: none)"),
        ),
    )

    def preprocess(self, model, input) -> list[Prepared]:
        if not isinstance(input, dict):
            raise InvalidInput('windows: send {"windows": N, "value": V}')
        n, value, fail_at = input["windows"], input["value"], input["fail_at"]
        return [
            Prepared(item="boom-post" if i == fail_at else value + i, context={"index": i}, key=input.get("key"))
            for i in range(n)
        ]

    def postprocess(self, model, output, context) -> dict:
        if output == "boom-post":
            raise ValueError(f"toy: boom in postprocess of window {context['index']}")
        return {"index": context["index"], "output": output}

    def reduce(self, model, results: list) -> dict:
        outputs = [r["output"] for r in results]
        return {"outputs": outputs, "total": sum(outputs)}


class Files(Toy):
    NAME = "files"
    SPEC = InputSpec(
        kind="image",
        formats=("png", "jpeg", "gif"),
        max_bytes=1_000_000,
        options=(Option("flip", bool, False, "reverse the copy's bytes"),),
    )

    def preprocess(self, model, input) -> Prepared:
        data = bytes(input["file"])
        return Prepared(item=len(data), context={"data": data, "flip": input["flip"]})

    def postprocess(self, model, output, context) -> dict:
        data = context["data"][::-1] if context["flip"] else context["data"]
        return {"bytes": len(data), "doubled": output, "copy": Artifact("copy.bin", data)}
