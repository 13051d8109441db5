"""The site's servings, checked when Django starts (``JobsConfig.ready``).

``prepare_servings(config, extra_packages)`` discovers every serving (the
``mlservices.servings`` package, ``MLSERVICES_EXTRA_SERVINGS``, the
``mlservices.servings`` entry points of installed distributions), gives each a
configuration, and builds each one. Building is pure (nothing is loaded), so
this costs nothing, yet whatever would fail on a serving's first request
fails here, before the site serves anything, with ``ImproperlyConfigured``
and a message that says what to fix:

- two factories registering one name (``NameClash``, naming both modules);
- an entry point that does not load (naming the distribution);
- settings naming a serving nobody registers, or an option its factory lacks;
- a malformed serving or spec (an unknown ``kind``, an option default outside
  its own range or choices, a stage that is not a function).

Every discovered serving is offered by the site: ``MLSERVICES`` gets an entry
for each one it lacks, so the serving's page, ``POST /api/jobs``, the nav,
``GET /api/servings`` and a worker started without ``-Q`` all include it. A
serving whose factory takes ``model``/``revision``/``sha256`` reads them from
``<NAME>_MODEL``, ``<NAME>_REVISION`` and ``<NAME>_SHA256`` (e.g.
``EMBEDDINGS_MODEL``) unless its settings set them.
"""

from __future__ import annotations

import os

import mlservices
from django.core.exceptions import ImproperlyConfigured
from mlservices import registry

ENV_OPTIONS = ("model", "revision", "sha256")


def env_options(name: str, environ=os.environ) -> dict[str, str]:
    """``model``/``revision``/``sha256`` of serving ``name`` from ``<NAME>_MODEL`` & co., for those its factory takes."""
    takes = registry.options(name)
    found = {option: environ.get(f"{name.upper()}_{option.upper()}", "") for option in ENV_OPTIONS if option in takes}
    return {option: value for option, value in found.items() if value}


def prepare_servings(config: dict[str, dict], extra_packages: list[str]) -> dict[str, dict]:
    """Discover, configure and build every serving; ``config`` (``settings.MLSERVICES``) is
    completed in place and returned. Raises ``ImproperlyConfigured`` with the fix."""
    try:
        mlservices.discover()
        if extra_packages:
            mlservices.discover(*extra_packages)
    except mlservices.ServingError as exc:
        raise ImproperlyConfigured(str(exc)) from exc
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"could not import a servings package ({exc}); check MLSERVICES_EXTRA_SERVINGS and PYTHONPATH"
        ) from exc
    known = mlservices.names()
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ImproperlyConfigured(
            f"MLSERVICES configures {', '.join(map(repr, unknown))}, which no serving registers; known servings: "
            f"{', '.join(known)}. Fix the name in MLSERVICES_CONFIG, or add the package to MLSERVICES_EXTRA_SERVINGS"
        )
    for name in known:
        config[name] = {**env_options(name), **config.get(name, {})}
    for name in known:
        try:
            registry.build(name, **config[name])
        except Exception as exc:  # a ServingError says what to fix; anything else is a bug in the module
            detail = str(exc) if isinstance(exc, mlservices.ServingError) else f"{type(exc).__name__}: {exc}"
            raise ImproperlyConfigured(
                f"serving {name!r} ({registry.qualified_name(registry.factory(name))}) cannot be built "
                f"with its settings {config[name]!r}: {detail}"
            ) from exc
    return config
