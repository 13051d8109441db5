"""Servings by name: register a factory, discover modules, build with options.

A serving module is one file holding a factory decorated with ``register``.
The factory's keyword arguments are the serving's options, its defaults the
defaults; it returns a ``Serving`` and does no I/O::

    from mlservices import Prepared, Serving, register

    @register("reverse")
    def reverse(suffix: str = "") -> Serving:
        return Serving(
            name="reverse",
            load=lambda device: None,
            preprocess=lambda model, text: Prepared(text),
            inference=lambda model, items: [t[::-1] + suffix for t in items],
            postprocess=lambda model, output, context: output,
        )

``discover()`` imports every module of the ``mlservices.servings`` package
(and of any other package named), so dropping such a file there is enough.
``build("reverse", suffix="!", batch_size=4)`` makes the ``Serving``;
an unknown name or option fails with a message listing the known ones.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

from .errors import InvalidInput, ServingNotFound
from .serving import Serving

_factories: dict[str, Callable[..., Serving]] = {}
SERVING_OPTIONS = ("batch_size", "batch_timeout_ms", "parallel_batches", "max_queued")


def register(name: str):
    """Register ``factory`` under ``name``; re-registering replaces it."""

    def decorate(factory: Callable[..., Serving]) -> Callable[..., Serving]:
        _factories[name] = factory
        return factory

    return decorate


def unregister(name: str) -> None:
    """Forget ``name`` (tests register toys and clean up after themselves)."""
    _factories.pop(name, None)


def discover(*packages: str) -> list[str]:
    """Import every module of each package (default ``mlservices.servings``)."""
    for package_name in packages or ("mlservices.servings",):
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    return names()


def names() -> list[str]:
    return sorted(_factories)


def factory(name: str) -> Callable[..., Serving]:
    try:
        return _factories[name]
    except KeyError:
        known = ", ".join(names()) or "none (did discover() run?)"
        raise ServingNotFound(f"no serving named {name!r}; known servings: {known}") from None


def options(name: str) -> dict[str, object]:
    """The factory options of serving ``name`` with their defaults."""
    params = inspect.signature(factory(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD}


def build(name: str, **opts) -> Serving:
    """Build serving ``name``; the ``SERVING_OPTIONS`` given (``batch_size``, ``max_queued``, ...) override its own."""
    make = factory(name)
    known = options(name)
    serving_level = {k: opts.pop(k) for k in SERVING_OPTIONS if k in opts}
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise InvalidInput(
            f"serving {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"known options: {', '.join([*known, *SERVING_OPTIONS])}"
        )
    serving = make(**opts)
    if serving.name != name:
        raise InvalidInput(
            f"the factory registered as {name!r} built a serving named {serving.name!r}; "
            "make the two names equal"
        )
    return serving.with_options(**serving_level) if serving_level else serving
