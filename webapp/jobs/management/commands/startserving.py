"""``python manage.py startserving NAME [--directory DIR]``: scaffold a new serving.

Writes three files from the templates of ``mlservices.scaffold``:

- the serving's module, ``mlservices/servings/NAME.py`` (or ``DIR/NAME.py``):
  a text serving that works as generated (page, REST API, CLI, queue), with
  TODOs where the model goes;
- its test, ``tests/test_NAME.py`` (``--tests-directory``), runnable as generated;
- its docs page, ``docs/servings/NAME.md`` (``--docs-directory``).

It refuses, with one line and nothing written, a name that is not a lowercase
Python identifier, a name a serving already has, a module that already
exists, and any file that already exists.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import mlservices
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from mlservices import registry, scaffold


def module_name(directory: Path, name: str) -> str:
    """The dotted name ``directory/name.py`` is imported by: up through the folders holding ``__init__.py``."""
    parts = [name]
    folder = directory.resolve()
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def shown(path: Path) -> str:
    """``path`` relative to the project when inside it (for messages and the docs)."""
    try:
        return str(path.resolve().relative_to(Path(settings.BASE_DIR).resolve()))
    except ValueError:
        return str(path)


class Command(BaseCommand):
    help = "Scaffold a serving: its module, its test and a docs page."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the serving's name: a lowercase Python identifier, e.g. text_embeddings")
        parser.add_argument("--directory", help="the module's folder (default: mlservices/servings)")
        parser.add_argument("--tests-directory", help="the test's folder (default: tests)")
        parser.add_argument("--docs-directory", help="the docs page's folder (default: docs/servings)")

    def handle(self, *args, name, directory=None, tests_directory=None, docs_directory=None, **options):
        base = Path(settings.BASE_DIR)
        problem = scaffold.check_name(name)
        if problem:
            raise CommandError(problem)
        mlservices.discover()
        if name in mlservices.names():
            raise CommandError(
                f"a serving named {name!r} already exists ({registry.qualified_name(registry.factory(name))}); "
                "choose another name"
            )
        folder = Path(directory) if directory else base / "mlservices" / "servings"
        module = module_name(folder, name)
        paths = {
            "serving": folder / f"{name}.py",
            "test": Path(tests_directory or base / "tests") / f"test_{name}.py",
            "doc": Path(docs_directory or base / "docs" / "servings") / f"{name}.md",
        }
        for path in paths.values():
            if path.exists():
                raise CommandError(f"{shown(path)} already exists; choose another name, or move that file away")
        if self._importable(module):
            raise CommandError(f"a module named {module} already exists; choose another serving name")
        texts = scaffold.render(
            name, module=module, module_path=shown(paths["serving"]), test_path=shown(paths["test"])
        )
        for kind, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(texts[kind], encoding="utf-8")
        self._report(name, module, folder, paths, base)

    @staticmethod
    def _importable(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that does not import: nothing shadows it
            return False

    def _report(self, name: str, module: str, folder: Path, paths: dict[str, Path], base: Path) -> None:
        write = self.stdout.write
        write(f"Created the serving {name!r}:")
        write(f"  {shown(paths['serving'])}  the serving ({module}): fill in its TODOs")
        write(f"  {shown(paths['test'])}  its tests: python -m pytest -q {shown(paths['test'])}")
        write(f"  {shown(paths['doc'])}  its docs page")
        if not module.startswith("mlservices.servings."):
            package = module.rpartition(".")[0] or module
            root = folder.resolve()
            for _ in module.split(".")[:-1]:
                root = root.parent
            write(
                f"It is outside mlservices/servings: make {package} importable (PYTHONPATH={root}{os.pathsep}...) "
                f"and set MLSERVICES_EXTRA_SERVINGS={package}, or declare it as an entry point "
                f'([project.entry-points."mlservices.servings"] {name} = "{module}").'
            )
        write(f'Try it: python -m mlservices run {name} --text "Hello world"; the site serves it at /s/{name}/.')
