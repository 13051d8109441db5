"""mlservices: servings with dynamic batching, usable with or without Django.

A *serving* is preprocess → inference → postprocess (``Serving``), loaded once
per process with ``setup(device)``. The *runtime* holds the loaded servings of
this process and a batcher for each; ``batched_run`` sends one input through
the batcher and returns its result; ``stream`` yields partial results first::

    import mlservices
    mlservices.discover()                       # import mlservices.servings.*
    mlservices.configure({"sentiment": {"model": "../shared/models/sentiment-minilm-sst2"}})
    mlservices.batched_run("sentiment", "I love it")["label"]   # -> 'POSITIVE'

See ``serving`` (the stages), ``spec`` (what a serving accepts), ``batcher``
(batching rules), ``registry`` (adding a serving in one module), ``runtime``
(run, stream, batched_run and their async forms), ``events`` (what a stream
yields) and ``artifacts`` (files in results).
"""

from .artifacts import Artifact
from .batcher import Batcher, BatchRecord
from .errors import (
    IntegrityError,
    InvalidInput,
    ModelNotInstalled,
    Overloaded,
    ServingError,
    ServingFailed,
    ServingNotFound,
)
from .events import Final, Progress
from .registry import build, discover, names, register
from .runtime import Runtime, abatched_run, astream, batched_run, configure, run, stream
from .serving import LoadedServing, Prepared, Serving
from .spec import InputSpec, Option

__all__ = [
    "Artifact",
    "Batcher",
    "BatchRecord",
    "Final",
    "InputSpec",
    "IntegrityError",
    "InvalidInput",
    "LoadedServing",
    "ModelNotInstalled",
    "Option",
    "Overloaded",
    "Prepared",
    "Progress",
    "Runtime",
    "Serving",
    "ServingError",
    "ServingFailed",
    "ServingNotFound",
    "abatched_run",
    "astream",
    "batched_run",
    "build",
    "configure",
    "discover",
    "names",
    "register",
    "run",
    "stream",
]
