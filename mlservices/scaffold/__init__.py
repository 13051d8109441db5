"""Templates of a new serving: its module, its test and its docs page (``manage.py startserving``).

``render(name, module=..., module_path=..., test_path=...)`` fills the
templates (plain text files beside this module, shipped as package data) and
returns ``{"serving": ..., "test": ..., "doc": ...}``; ``check_name(name)``
refuses what cannot be a serving's name (it is a Python function name, a
Celery queue, a URL part and an environment variable prefix).
"""

from __future__ import annotations

import keyword
import re
from importlib import resources

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TEMPLATES = {"serving": "serving.py.txt", "test": "test.py.txt", "doc": "doc.md.txt"}


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a serving, or None."""
    if not NAME.match(name) or keyword.iskeyword(name):
        return (
            f"{name!r} is not a valid serving name: use a lowercase Python identifier (letters, digits and "
            "underscores, starting with a letter, not a Python keyword), e.g. text_embeddings"
        )
    return None


def title(name: str) -> str:
    words = name.replace("_", " ")
    return words[:1].upper() + words[1:]


def render(name: str, *, module: str, module_path: str, test_path: str) -> dict[str, str]:
    """The three files' text for serving ``name`` living in module ``module``."""
    problem = check_name(name)
    if problem:
        raise ValueError(problem)
    values = {
        "name": name,
        "NAME": name.upper(),
        "title": title(name),
        "module": module,
        "module_path": module_path,
        "test_path": test_path,
    }
    folder = resources.files(__name__)
    rendered = {}
    for kind, filename in TEMPLATES.items():
        text = folder.joinpath(filename).read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        rendered[kind] = text
    return rendered
