"""Files a serving returns: ``Artifact(name, data, content_type)`` inside its result.

A result may hold artifacts anywhere in its dicts and lists::

    {"width": 640, "cutout": Artifact("cutout.png", png_bytes, "image/png")}

Front ends decide where the bytes go: the web app stores them as files of the
job and puts ``{"name": "cutout.png", "url": "/api/jobs/<id>/files/cutout.png",
"content_type": "image/png", "size": 48213}`` in their place; the CLI writes
them to ``--output``. ``replace(result, store)`` does that walk.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from .errors import ServingFailed

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclasses.dataclass(frozen=True)
class Artifact:
    name: str
    data: bytes
    content_type: str = "application/octet-stream"

    def __post_init__(self):
        if not NAME.match(self.name) or ".." in self.name:
            raise ServingFailed(
                f"artifact name {self.name!r}: use letters, digits, '.', '_' and '-' (at most 100), "
                "e.g. 'cutout.png'"
            )

    def __repr__(self) -> str:
        return f"Artifact({self.name!r}, <{len(self.data)} bytes>, {self.content_type!r})"


def replace(result: Any, store: Callable[[Artifact], Any]) -> Any:
    """``result`` with every ``Artifact`` replaced by ``store(artifact)``."""
    if isinstance(result, Artifact):
        return store(result)
    if isinstance(result, dict):
        return {k: replace(v, store) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [replace(v, store) for v in result]
    return result


def collect(result: Any) -> list[Artifact]:
    """Every artifact in ``result``, in order; two with one name are a serving bug."""
    found: list[Artifact] = []
    replace(result, lambda a: found.append(a))
    names = [a.name for a in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ServingFailed(f"the result holds two artifacts named {', '.join(twice)}; give each its own name")
    return found
