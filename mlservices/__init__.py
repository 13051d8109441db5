"""mlservices: servings with dynamic batching, usable with or without Django.

A *serving* is preprocess → inference → postprocess (``Serving``), loaded once
per process with ``setup(device)``. The *runtime* holds the loaded servings of
this process and a batcher for each; ``batched_run`` sends one input through
the batcher and returns its result::

    import mlservices
    mlservices.discover()                       # import mlservices.servings.*
    mlservices.configure({"sentiment": {"model": "../shared/models/sentiment-minilm-sst2"}})
    mlservices.batched_run("sentiment", "I love it")["label"]   # -> 'POSITIVE'

See ``serving`` (the stages), ``batcher`` (batching rules), ``registry``
(adding a serving in one module) and ``runtime`` (run, batched_run,
abatched_run).
"""

from .batcher import Batcher, BatchRecord
from .errors import (
    IntegrityError,
    InvalidInput,
    ModelNotInstalled,
    ServingError,
    ServingFailed,
    ServingNotFound,
)
from .registry import build, discover, names, register
from .runtime import Runtime, abatched_run, batched_run, configure, run
from .serving import LoadedServing, Prepared, Serving

__all__ = [
    "Batcher",
    "BatchRecord",
    "IntegrityError",
    "InvalidInput",
    "LoadedServing",
    "ModelNotInstalled",
    "Prepared",
    "Runtime",
    "Serving",
    "ServingError",
    "ServingFailed",
    "ServingNotFound",
    "abatched_run",
    "batched_run",
    "build",
    "configure",
    "discover",
    "names",
    "register",
    "run",
]
