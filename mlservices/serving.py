"""A serving: preprocess → inference → postprocess (→ reduce), as a value.

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
  returns is handed to the other stages as ``model``; give it a ``version``
  attribute to name the weights (``LoadedServing.version``, shown to users as
  name@version and recorded on every job).
- ``preprocess(model, input) -> Prepared | list[Prepared]``: per request,
  outside the batch. ``Prepared.item`` joins the batch; ``Prepared.context``
  travels beside it (never through the model) to postprocess; ``Prepared.key``
  picks the batch (items of different keys, e.g. length buckets, never share
  one). A list *fans one input out* into several batch items (e.g. the 30 s
  windows of a recording); they join batches like any other items, with
  other requests' items.
- ``inference(model, items) -> outputs``: once per batch; must return exactly
  one output per item.
- ``postprocess(model, output, context) -> result``: per item, as soon as its
  batch is done. For a fanned-out input each item's result is streamed as a
  partial result (``mlservices.events.Progress``).
- ``reduce(model, results) -> result`` (optional): builds the final result of
  a fanned-out input from its items' results, in input order. Without it the
  final result is the list of results (or the one result, for one item).

Options (fields) and their defaults: ``spec=InputSpec()`` (what the serving
accepts, ``mlservices.spec``), ``batch_size=8`` (most items in one inference
call), ``batch_timeout_ms=5.0`` (how long the first item of a batch waits for
company), ``parallel_batches=None`` (how many batches run inference at once,
each on its own thread; ``None``: as many as the CPUs share out, see below, or
1 for a serving without ``set_threads``), ``max_queued=1000`` (most items waiting for a batch
across all callers; past it a call raises ``Overloaded`` with a
``retry_after``), ``warmup=()`` (inputs run once by ``setup``),
``description=""``, ``title=""`` (the name people see, e.g. "Transcribe" in
the site's navigation; empty: the name, humanised), ``validate=None``: a pure
function of the input (already normalised by the spec), with no model, that
returns it normalised or raises
``InvalidInput``; front ends call ``serving.check(input)`` before they
enqueue, so bad input is refused at the door, not in the worker.

Threads, for a serving that can be told how many intra-op threads a batch
uses (a torch model: ``torch.set_num_threads`` applies to the calling thread):
``set_threads=None`` (a function ``set_threads(model, n)`` that makes the
calling thread's next inference use ``n`` threads) and ``threads=None`` (the
threads a batch alone gets; ``None``: the CPUs this process may use). With
both, on a CPU, the batcher picks each batch's threads as it starts it
(``mlservices.batcher``): a request alone gets them all; when several batches
are ready they run at once, one thread each on 2 CPUs. Without
``set_threads`` batches keep the model's own thread settings.

What a new model version must pass before it serves (``models validate``):
``smoke=()`` (inputs it must run; empty: the ``warmup`` inputs),
``check_result=None`` (a function of one result that raises ``ServingFailed``
with the reason when the result is malformed), ``evaluate=None`` (a function
of the ``LoadedServing`` that returns quality figures on the serving's own
validation set, e.g. ``{"accuracy": 0.91, "examples": 872}``; numbers only).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .batcher import batch_threads
from .errors import InvalidInput, ServingError, ServingFailed
from .spec import InputSpec

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    preprocess: Callable[[Any, Any], Prepared | list[Prepared]]
    inference: Callable[[Any, list], Sequence]
    postprocess: Callable[[Any, Any, Any], Any]
    reduce: Callable[[Any, list], Any] | None = None
    spec: InputSpec = InputSpec()
    batch_size: int = 8
    batch_timeout_ms: float = 5.0
    parallel_batches: int | None = None
    max_queued: int = 1000
    warmup: tuple = ()
    description: str = ""
    validate: Callable[[Any], Any] | None = None
    title: str = ""
    smoke: tuple = ()
    check_result: Callable[[Any], None] | None = None
    evaluate: Callable[[LoadedServing], dict] | None = None
    threads: int | None = None
    set_threads: Callable[[Any, int], None] | None = None

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInput(
                f"serving {self.name!r}: batch_size={self.batch_size!r}; use an integer of at least 1"
            )
        if self.parallel_batches is not None and (
            not isinstance(self.parallel_batches, int) or self.parallel_batches < 1
        ):
            raise InvalidInput(
                f"serving {self.name!r}: parallel_batches={self.parallel_batches!r}; use an integer of at least 1, "
                "or null to let the batcher decide"
            )
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise InvalidInput(f"serving {self.name!r}: threads={self.threads!r}; use an integer of at least 1")
        if self.parallel_batches is None and self.set_threads is None:  # nothing to share out: one at a time
            object.__setattr__(self, "parallel_batches", 1)
        if not isinstance(self.max_queued, int) or self.max_queued < 1:
            raise InvalidInput(
                f"serving {self.name!r}: max_queued={self.max_queued!r}; use an integer of at least 1"
            )
        if not isinstance(self.batch_timeout_ms, (int, float)) or self.batch_timeout_ms < 0:
            raise InvalidInput(
                f"serving {self.name!r}: batch_timeout_ms={self.batch_timeout_ms!r}; use 0 or more"
            )
        if not isinstance(self.spec, InputSpec):
            raise InvalidInput(f"serving {self.name!r}: spec must be an mlservices.spec.InputSpec")

    def with_options(self, **options) -> Serving:
        """A copy with serving-level options (``batch_size``, ``batch_timeout_ms``,
        ``parallel_batches``, ``max_queued``) changed."""
        allowed = {"batch_size", "batch_timeout_ms", "parallel_batches", "max_queued"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InvalidInput(
                f"serving {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                f"serving-level options are {', '.join(sorted(allowed))}"
            )
        return dataclasses.replace(self, **options)

    def check(self, input: Any) -> Any:
        """The input normalised by the spec, then by ``validate``; loads nothing."""
        input = self.spec.normalise(self.name, input)
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

    ``prepare``/``infer``/``finish``/``combine`` are the stages with their
    failures turned into ``ServingError``s; ``run`` chains them for one
    input, inline.
    """

    def __init__(self, serving: Serving, model: Any, device: str):
        self.serving = serving
        self.model = model
        self.device = device
        self.version = str(getattr(model, "version", None) or serving.name)

    @property
    def batch_threads(self) -> int | None:
        """The intra-op threads the batcher shares between batches (``Batcher(threads=...)``):
        the serving's ``threads`` or the CPUs, when it takes ``set_threads`` and runs on a CPU;
        else ``None`` (batches keep the model's own settings)."""
        if self.serving.set_threads is None or self.device != "cpu":
            return None
        return self.serving.threads or usable_cpus()

    @property
    def name(self) -> str:
        return self.serving.name

    def prepare(self, input: Any) -> tuple[list[Prepared], bool]:
        """The input's batch items, and whether preprocess fanned it out (returned a list)."""
        try:
            input = self.serving.check(input)
            prepared = self.serving.preprocess(self.model, input)
        except ServingError:
            raise
        except Exception as exc:  # a bug or an input the serving did not foresee
            raise InvalidInput(f"{self.name}: could not preprocess the input: {exc}") from exc
        fanned = isinstance(prepared, (list, tuple))
        items = list(prepared) if fanned else [prepared]
        if not all(isinstance(p, Prepared) for p in items):
            wrong = next(type(p).__name__ for p in items if not isinstance(p, Prepared))
            raise ServingFailed(
                f"{self.name}: preprocess returned {wrong}; "
                "it must return mlservices.Prepared(item, context, key) or a list of them"
            )
        if not items:
            raise InvalidInput(f"{self.name}: the input holds nothing to process")
        return items, fanned

    def infer(self, items: list) -> list:
        """One batch through ``inference``; first the threads the batcher gave it, if any
        (``set_threads``, in this thread)."""
        threads = batch_threads()
        try:
            if threads is not None and self.serving.set_threads is not None:
                self.serving.set_threads(self.model, threads)
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
        return self._stage("postprocess", self.serving.postprocess, self.model, output, context)

    def combine(self, results: list, fanned: bool) -> Any:
        """The final result from the items' results (``reduce``, the list, or the one result)."""
        if self.serving.reduce is not None:
            return self._stage("reduce", self.serving.reduce, self.model, results)
        return results if fanned else results[0]

    def _stage(self, what: str, stage: Callable, *args) -> Any:
        try:
            return stage(*args)
        except ServingError:
            raise
        except Exception as exc:
            raise ServingFailed(f"{self.name}: {what} failed: {type(exc).__name__}: {exc}") from exc

    def run(self, input: Any) -> Any:
        """Run one input inline (each item a batch of one), in the calling thread."""
        items, fanned = self.prepare(input)
        results = [self.finish(self.infer([p.item])[0], p.context) for p in items]
        return self.combine(results, fanned)
