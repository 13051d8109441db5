"""A serving: preprocess → inference → postprocess, as a value.

A ``Serving`` is built from plain functions and does no I/O when built. The
process that serves calls ``serving.setup(device)`` once: it loads the weights
(``load``), runs the warm-up inputs, and returns a ``LoadedServing`` that the
batcher and the inline path both drive::

    from mlservices import Serving, Prepared

    echo = Serving(
        name="shout",
        load=lambda device: None,                          # the "model"
        preprocess=lambda model, text: Prepared(text.upper()),
        inference=lambda model, items: [s + "!" for s in items],
        postprocess=lambda model, output, context: output,
    )
    loaded = echo.setup("cpu")
    loaded.run("hi")        # -> 'HI!'

The stages:

- ``load(device) -> model``: runs once in the serving process. Whatever it
  returns is handed to the three other stages as ``model``; give it a
  ``version`` attribute to name the weights (shown to users as name@version).
- ``preprocess(model, input) -> Prepared``: per request, outside the batch.
  ``Prepared.item`` joins the batch; ``Prepared.context`` travels beside it
  (never through the model) to postprocess; ``Prepared.key`` picks the batch
  (items of different keys, e.g. length buckets, never share one).
- ``inference(model, items) -> outputs``: once per batch; must return exactly
  one output per item.
- ``postprocess(model, output, context) -> result``: per request.

Options (fields) and their defaults: ``batch_size=8`` (most items in one
inference call), ``batch_timeout_ms=5.0`` (how long the first item of a batch
waits for company), ``parallel_batches=1`` (how many batches run inference
at once, each on its own thread), ``warmup=()`` (inputs run once by ``setup``),
``description=""``, ``validate=None``: a pure function of the raw input, with no
model, that returns it normalised or raises ``InvalidInput``; front ends call
``serving.check(input)`` before they enqueue, so bad input is refused at the
door, not in the worker.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .errors import InvalidInput, ServingError, ServingFailed

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What preprocess hands on: the batch item, its context and batch key."""

    item: Any
    context: Any = None
    key: Hashable = None


@dataclasses.dataclass(frozen=True)
class Serving:
    name: str
    load: Callable[[str], Any]
    preprocess: Callable[[Any, Any], Prepared]
    inference: Callable[[Any, list], Sequence]
    postprocess: Callable[[Any, Any, Any], Any]
    batch_size: int = 8
    batch_timeout_ms: float = 5.0
    parallel_batches: int = 1
    warmup: tuple = ()
    description: str = ""
    validate: Callable[[Any], Any] | None = None

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInput(
                f"serving {self.name!r}: batch_size={self.batch_size!r}; use an integer of at least 1"
            )
        if not isinstance(self.parallel_batches, int) or self.parallel_batches < 1:
            raise InvalidInput(
                f"serving {self.name!r}: parallel_batches={self.parallel_batches!r}; use an integer of at least 1"
            )
        if self.batch_timeout_ms < 0:
            raise InvalidInput(
                f"serving {self.name!r}: batch_timeout_ms={self.batch_timeout_ms!r}; use 0 or more"
            )

    def with_options(self, **options) -> Serving:
        """A copy with serving-level options (``batch_size``, ``batch_timeout_ms``,
        ``parallel_batches``) changed."""
        allowed = {"batch_size", "batch_timeout_ms", "parallel_batches"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InvalidInput(
                f"serving {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                f"serving-level options are {', '.join(sorted(allowed))}"
            )
        return dataclasses.replace(self, **options)

    def check(self, input: Any) -> Any:
        """Validate ``input`` without loading anything (see ``validate``)."""
        return self.validate(input) if self.validate else input

    def setup(self, device: str = "cpu") -> LoadedServing:
        """Load the weights on ``device`` and warm up. Call once per process."""
        model = self.load(device)
        loaded = LoadedServing(self, model, device)
        for sample in self.warmup:
            loaded.run(sample)
        log.info("serving %s ready on %s (%s)", self.name, device, loaded.version)
        return loaded


class LoadedServing:
    """A serving with its weights loaded in this process.

    ``prepare``/``infer``/``finish`` are the three stages with their failures
    turned into ``ServingError``s; ``run`` chains them for one input, inline.
    """

    def __init__(self, serving: Serving, model: Any, device: str):
        self.serving = serving
        self.model = model
        self.device = device
        self.version = str(getattr(model, "version", None) or serving.name)

    @property
    def name(self) -> str:
        return self.serving.name

    def prepare(self, input: Any) -> Prepared:
        try:
            prepared = self.serving.preprocess(self.model, input)
        except ServingError:
            raise
        except Exception as exc:  # a bug or an input the serving did not foresee
            raise InvalidInput(f"{self.name}: could not preprocess the input: {exc}") from exc
        if not isinstance(prepared, Prepared):
            raise ServingFailed(
                f"{self.name}: preprocess returned {type(prepared).__name__}; "
                "it must return mlservices.Prepared(item, context, key)"
            )
        return prepared

    def infer(self, items: list) -> list:
        try:
            outputs = list(self.serving.inference(self.model, items))
        except ServingError:
            raise
        except Exception as exc:
            raise ServingFailed(
                f"{self.name}: inference failed on a batch of {len(items)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if len(outputs) != len(items):
            raise ServingFailed(
                f"{self.name}: inference returned {len(outputs)} outputs for {len(items)} inputs; "
                "it must return exactly one output per input, in order"
            )
        return outputs

    def finish(self, output: Any, context: Any) -> Any:
        try:
            return self.serving.postprocess(self.model, output, context)
        except ServingError:
            raise
        except Exception as exc:
            raise ServingFailed(
                f"{self.name}: postprocess failed: {type(exc).__name__}: {exc}"
            ) from exc

    def run(self, input: Any) -> Any:
        """Run one input inline (a batch of one), in the calling thread."""
        prepared = self.prepare(input)
        (output,) = self.infer([prepared.item])
        return self.finish(output, prepared.context)
