"""Toy servings for tests: deterministic, instant, and gateable.

``gated(name)`` builds a serving whose inference doubles numbers but first
waits on ``gate`` (a ``threading.Event``) and announces each batch on
``started`` (a ``queue.Queue`` of the batch's items), so a test can hold the
batcher busy, line items up behind it, and then release it: batch composition
becomes arithmetic, not timing::

    toy = Toy()                         # gate open, nothing recorded yet
    loaded = toy.serving(batch_size=4).setup("cpu")
    loaded.run(21)                      # -> 42

Inputs: ints. ``"boom-pre"`` fails in preprocess, ``"boom-post"`` in
postprocess, and a batch containing ``"boom-infer"`` fails in inference; any
of them fails only where a real serving would.
"""

from __future__ import annotations

import queue
import threading

from .errors import InvalidInput
from .serving import Prepared, Serving


class Toy:
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

    def serving(self, name: str = "toy", **options) -> Serving:
        return Serving(
            name=name,
            load=self.load,
            preprocess=self.preprocess,
            inference=self.inference,
            postprocess=self.postprocess,
            **options,
        )
