"""What a serving accepts: its declared input spec.

One ``InputSpec`` per serving is read by every front end: the web door
validates with it, ``GET /api/servings`` publishes it (``as_json``), the CLI
reads files or text by its ``kind``, and the page picks its input widget from
it. Building one does no I/O::

    from mlservices.spec import InputSpec, Option

    spec = InputSpec(
        kind="image",
        formats=("jpeg", "png", "webp"),
        max_bytes=15_000_000,
        max_pixels=40_000_000,
        options=(Option("avatar", bool, False, "square 512×512 crop around the subject"),),
    )
    spec.normalise({"file": b"...", "avatar": "true"})   # -> {"file": b"...", "avatar": True}

Kinds:

- ``text``: the input is a string or ``{"text": str, **options}``; it is
  normalised to the object form. ``max_chars`` bounds the text.
- ``image`` / ``audio``: ``{"file": bytes, **options}``; ``max_bytes`` bounds
  the file and ``formats`` names the accepted formats (``mlservices.formats``
  sniffs them from the bytes, never from a file name). ``max_pixels`` and
  ``max_seconds`` are enforced by the serving once it decodes, and published
  here so that clients can check before they upload.
- ``json``: any JSON value; options are checked when it is an object.

Options are request-level parameters with a type (``str``, ``int``,
``float``, ``bool``), a default, and optional ``choices`` or ``minimum`` /
``maximum``. Unknown options are refused with the list of known ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import InvalidInput
from .formats import CONTENT_TYPES, sniff

KINDS = ("text", "image", "audio", "json")
FILE_KINDS = ("image", "audio")
FILE_FIELD = "file"
TEXT_FIELD = "text"
_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def check_unicode(what: str, text: str) -> None:
    """Refuse a NUL or a lone surrogate: no database stores them, and no model reads them."""
    if "\x00" in text:
        raise InvalidInput(f"{what} holds a NUL character (U+0000) at character {text.index(chr(0)) + 1}; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} holds a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start + 1}, "
            "which is not valid Unicode; send valid UTF-8"
        ) from None


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self):
        if self.type not in _TYPE_NAMES:
            raise InvalidInput(f"option {self.name!r}: type {self.type!r}; use str, int, float or bool")

    def coerce(self, serving: str, value: Any) -> Any:
        """``value`` as this option's type (form fields arrive as strings), range-checked."""
        where = f"{serving}: option {self.name}={value!r}"
        if value is None:
            return self.default
        value = self._typed(where, value)
        if self.choices and value not in self.choices:
            raise InvalidInput(f"{where}: choose one of {', '.join(map(repr, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise InvalidInput(f"{where}: use {self.minimum:g} or more")
        if self.maximum is not None and value > self.maximum:
            raise InvalidInput(f"{where}: use {self.maximum:g} or less")
        return value

    def _typed(self, where: str, value: Any) -> Any:
        wanted = {"integer": "an integer"}.get(_TYPE_NAMES[self.type], f"a {_TYPE_NAMES[self.type]}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off", ""):
                return value.lower() in ("true", "1", "yes", "on")
            raise InvalidInput(f"{where}: send a boolean (true or false)")
        if self.type is str:
            if not isinstance(value, str):
                raise InvalidInput(f"{where}: send a string")
            check_unicode(where, value)
            return value
        if isinstance(value, bool):
            raise InvalidInput(f"{where}: send {wanted}")
        if isinstance(value, str):
            try:
                value = float(value) if self.type is float else int(value.strip())
            except ValueError:
                raise InvalidInput(f"{where}: send {wanted}") from None
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (self.type is int and not isinstance(value, int)):
            raise InvalidInput(f"{where}: send {wanted}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"{where}: send a finite number")
        return self.type(value)

    def as_json(self) -> dict:
        schema: dict[str, Any] = {"type": _TYPE_NAMES[self.type], "default": self.default}
        if self.help:
            schema["description"] = self.help
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@dataclasses.dataclass(frozen=True)
class InputSpec:
    kind: str = "json"
    formats: tuple[str, ...] = ()
    max_chars: int | None = None
    max_bytes: int | None = None
    max_pixels: int | None = None
    max_seconds: float | None = None
    options: tuple[Option, ...] = ()
    renderer: str = ""  # the page's renderer module; empty: the generic one for the kind

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidInput(f"input spec kind={self.kind!r}; use one of {', '.join(KINDS)}")
        unknown = [f for f in self.formats if f not in CONTENT_TYPES]
        if unknown:
            raise InvalidInput(
                f"input spec formats {', '.join(unknown)} are not known to mlservices.formats; "
                f"known: {', '.join(sorted(CONTENT_TYPES))}"
            )
        if self.kind in FILE_KINDS and not self.formats:
            raise InvalidInput(f"an {self.kind} input spec must name its accepted formats")
        names = [o.name for o in self.options]
        clash = {n for n in names if names.count(n) > 1} | ({FILE_FIELD, TEXT_FIELD} & set(names))
        if clash:
            raise InvalidInput(f"input spec options {', '.join(sorted(clash))} clash; give each option its own name")

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_KINDS

    @property
    def main_field(self) -> str | None:
        return FILE_FIELD if self.is_file else TEXT_FIELD if self.kind == "text" else None

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def check_options(self, serving: str, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` (without the main field) typed, range-checked, defaults filled in."""
        known = {o.name: o for o in self.options}
        unknown = sorted(set(values) - set(known))
        if unknown:
            fields = [f for f in (self.main_field,) if f] + list(known)
            raise InvalidInput(
                f"{serving}: unknown input field(s) {', '.join(unknown)}; "
                f"known: {', '.join(fields) or 'none'}"
            )
        return {name: option.coerce(serving, values.get(name)) for name, option in known.items()}

    def check_text(self, serving: str, text: Any, max_chars: int | None = None) -> str:
        if not isinstance(text, str):
            raise InvalidInput(f"{serving}: the text is {type(text).__name__}; send a string of text")
        check_unicode(f"{serving}: the text", text)
        limit = max_chars or self.max_chars
        if limit is not None and len(text) > limit:
            raise InvalidInput(
                f"{serving}: the text is {len(text):,} characters; the limit is {limit:,}. Send a shorter text"
            )
        return text

    def check_file(self, serving: str, data: Any, max_bytes: int | None = None) -> str:
        """Size and sniffed format of ``data``; returns the format name."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"{serving}: the {self.kind} is {type(data).__name__}; send the file's bytes")
        if not data:
            raise InvalidInput(f"{serving}: the file is empty; send a {'/'.join(self.formats)} file")
        limit = max_bytes or self.max_bytes
        if limit is not None and len(data) > limit:
            raise InvalidInput(
                f"{serving}: the file is {len(data):,} bytes; the limit is {limit:,}. Send a smaller file"
            )
        return self.check_format(serving, sniff(bytes(data[:64])))

    def check_format(self, serving: str, format: str | None) -> str:
        if format not in self.formats:
            found = f"a {format} file" if format else "not a file type it can read"
            raise InvalidInput(
                f"{serving}: the file is {found}; send one of: {', '.join(self.formats)}"
            )
        return format

    def normalise(self, serving: str, input: Any) -> Any:
        """The input in its one canonical form, checked against this spec."""
        if self.kind == "json":
            if isinstance(input, dict) and self.options:
                return {**input, **self.check_options(serving, {k: input[k] for k in input if k in self.defaults()})}
            return input
        if self.kind == "text" and isinstance(input, str):
            input = {TEXT_FIELD: input}
        field = self.main_field
        if not isinstance(input, dict) or field not in input:
            example = '{"text": "..."}' if self.kind == "text" else '{"file": <the file>}'
            raise InvalidInput(
                f"{serving}: the input is {type(input).__name__}; send {example}"
                + (" or a plain string" if self.kind == "text" else "")
            )
        rest = {k: v for k, v in input.items() if k != field}
        if self.kind == "text":
            main = self.check_text(serving, input[field])
        else:
            main = input[field]
            self.check_file(serving, main)
        return {field: main, **self.check_options(serving, rest)}

    def as_json(self) -> dict:
        """The spec for clients (``GET /api/servings``): limits, formats, and a JSON schema of the options."""
        return {
            "kind": self.kind,
            "formats": list(self.formats),
            "content_types": sorted({CONTENT_TYPES[f] for f in self.formats}),
            "limits": {
                k: v
                for k, v in {
                    "max_chars": self.max_chars,
                    "max_bytes": self.max_bytes,
                    "max_pixels": self.max_pixels,
                    "max_seconds": self.max_seconds,
                }.items()
                if v is not None
            },
            "options": {
                "type": "object",
                "properties": {o.name: o.as_json() for o in self.options},
                "additionalProperties": False,
            },
            "renderer": self.renderer or self.kind,
        }
