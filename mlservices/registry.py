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

Where servings come from (``discover()``):

- every module of the ``mlservices.servings`` package (drop a file there);
- the packages (or modules) named by ``$MLSERVICES_EXTRA_SERVINGS``
  (comma-separated), or passed to ``discover("my_site.servings")``;
- the entry points of the group ``mlservices.servings`` of every installed
  distribution, so ``pip install some-servings`` is the whole change. An entry
  point names a module (``embeddings = "acme_servings.embeddings"``: importing
  it registers) or a factory (``embeddings = "acme_servings:make_embeddings"``,
  registered under the entry point's name unless it is already registered).

A name is registered once: a second factory under the same name (another
module or function) raises ``NameClash`` naming both; importing the same
module again is fine. ``build("reverse", suffix="!", batch_size=4)`` makes the
``Serving`` and checks it (name, stages, the spec's option defaults); an
unknown name or option fails with a message listing the known ones.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import pkgutil
import types
from collections.abc import Callable

from .errors import InvalidInput, ServingError, ServingNotFound
from .serving import Serving

ENTRY_POINT_GROUP = "mlservices.servings"
EXTRA_SERVINGS_ENV = "MLSERVICES_EXTRA_SERVINGS"
SERVING_OPTIONS = ("batch_size", "batch_timeout_ms", "parallel_batches", "max_queued")

_factories: dict[str, Callable[..., Serving]] = {}


class NameClash(ServingError):
    """Two different factories claim one serving name."""

    code = "name_clash"


class BrokenEntryPoint(ServingError):
    """An installed distribution's ``mlservices.servings`` entry point does not load."""

    code = "broken_entry_point"


def qualified_name(factory: Callable) -> str:
    """``module.function``: what tells two registrations apart (a re-import keeps it)."""
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


def register(name: str):
    """Register ``factory`` under ``name``; a different factory already there raises ``NameClash``."""

    def decorate(factory: Callable[..., Serving]) -> Callable[..., Serving]:
        known = _factories.get(name)
        if known is not None and qualified_name(known) != qualified_name(factory):
            raise NameClash(
                f"serving name {name!r} is registered twice: by {qualified_name(known)} and by "
                f"{qualified_name(factory)}; rename one of them (the name given to @register)"
            )
        _factories[name] = factory
        return factory

    return decorate


def unregister(name: str) -> None:
    """Forget ``name`` (tests register toys and clean up after themselves)."""
    _factories.pop(name, None)


def extra_packages() -> list[str]:
    """The packages named by ``$MLSERVICES_EXTRA_SERVINGS``."""
    return [p.strip() for p in os.environ.get(EXTRA_SERVINGS_ENV, "").split(",") if p.strip()]


def import_servings(name: str) -> None:
    """Import module ``name``, and every module in it when it is a package."""
    module = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", []), module.__name__ + "."):
        importlib.import_module(info.name)


def entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed ``mlservices.servings`` entry points, in a stable order."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(found, key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))


def load_entry_point(entry_point: importlib.metadata.EntryPoint) -> None:
    """Import what ``entry_point`` names; a bare factory is registered under the entry point's name."""
    dist = f"{entry_point.dist.name} {entry_point.dist.version}" if entry_point.dist else "an unknown distribution"
    where = f"entry point {entry_point.name} = {entry_point.value!r} (group {ENTRY_POINT_GROUP}) of {dist}"
    try:
        loaded = entry_point.load()
        if not isinstance(loaded, types.ModuleType) and loaded not in _factories.values():
            if not callable(loaded):
                raise TypeError(f"it names a {type(loaded).__name__}, not a module or a serving factory")
            register(entry_point.name)(loaded)
    except Exception as exc:
        raise BrokenEntryPoint(
            f"{where} failed to load: {type(exc).__name__}: {exc}. Fix that distribution or uninstall it"
        ) from exc


def discover(*packages: str) -> list[str]:
    """Import the servings: ``packages`` (default ``mlservices.servings`` and ``$MLSERVICES_EXTRA_SERVINGS``),
    then the ``mlservices.servings`` entry points of every installed distribution. Returns all names."""
    for package_name in packages or ("mlservices.servings", *extra_packages()):
        import_servings(package_name)
    for entry_point in entry_points():
        load_entry_point(entry_point)
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
    """Build serving ``name``; the ``SERVING_OPTIONS`` given (``batch_size``, ``max_queued``, ...) override its own.
    The result is checked (``check``): a malformed serving fails here, not on its first request."""
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
    if not isinstance(serving, Serving):
        raise InvalidInput(
            f"the factory registered as {name!r} ({qualified_name(make)}) returned a {type(serving).__name__}; "
            "return an mlservices.Serving"
        )
    if serving.name != name:
        raise InvalidInput(
            f"the factory registered as {name!r} built a serving named {serving.name!r}; "
            "make the two names equal"
        )
    check(serving)
    return serving.with_options(**serving_level) if serving_level else serving


def check(serving: Serving) -> Serving:
    """Refuse a serving whose stages are not functions or whose spec's option defaults the options refuse."""
    name = serving.name
    for stage in ("load", "preprocess", "inference", "postprocess"):
        if not callable(getattr(serving, stage)):
            raise InvalidInput(f"serving {name!r}: {stage} is {getattr(serving, stage)!r}; give it a function")
    for stage in ("reduce", "validate", "check_result", "evaluate"):
        value = getattr(serving, stage)
        if value is not None and not callable(value):
            raise InvalidInput(f"serving {name!r}: {stage} is {value!r}; give it a function or None")
    for field in ("warmup", "smoke"):
        if not isinstance(getattr(serving, field), (tuple, list)):
            raise InvalidInput(
                f"serving {name!r}: {field}={getattr(serving, field)!r}; give a tuple of inputs, e.g. ('some text',)"
            )
    spec = serving.spec
    for limit in ("max_chars", "max_bytes", "max_pixels", "max_seconds"):
        value = getattr(spec, limit)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise InvalidInput(f"serving {name!r}: input spec {limit}={value!r}; use a number above 0, or None")
    for option in spec.options:
        if option.minimum is not None and option.maximum is not None and option.minimum > option.maximum:
            raise InvalidInput(
                f"serving {name!r}: option {option.name!r} has minimum {option.minimum:g} above its maximum "
                f"{option.maximum:g}; swap them"
            )
        for choice in option.choices:
            if type(choice) is not option.type:
                raise InvalidInput(
                    f"serving {name!r}: option {option.name!r} of type {option.type.__name__} offers the choice "
                    f"{choice!r}; make every choice of type {option.type.__name__}"
                )
        if option.default is None:
            continue  # "not given": the serving decides
        try:
            option.coerce(name, option.default)
        except InvalidInput as exc:
            raise InvalidInput(
                f"serving {name!r}: the default of option {option.name!r} is invalid ({exc}); "
                "change the default or the option's type, range or choices"
            ) from None
    return serving
