"""Untrusted JSON (request bodies, websocket messages) parsed without the ways it can crash.

``json.loads`` alone lets a client turn a request into a 500: 100,000 nested
brackets raise ``RecursionError``, a 5,000-digit number exceeds Python's
int conversion limit (``ValueError``), ``NaN``/``1e999`` are stored as JSON
that PostgreSQL refuses, and a lone surrogate (``"\\ud800"``) or a NUL
(``"\\u0000"``) parses fine and then fails at the database insert.
``loads`` refuses each of these up front with ``InvalidJSON`` (code
``invalid_json``, an ``mlservices.InvalidInput``), whose message names what is
wrong, where, and the fix::

    >>> loads(b'{"serving": "sentiment", "input": {"text": "I love it"}}')
    {'serving': 'sentiment', 'input': {'text': 'I love it'}}
    >>> try:
    ...     loads('{"text": "a\\\\u0000b"}')
    ... except InvalidJSON as exc:
    ...     print(exc.code, "|", exc.message)
    invalid_json | the string at text contains a NUL character (\\u0000), which cannot be stored; remove it

The nesting depth is measured before parsing, by counting brackets outside
strings (no recursion), so ``json.loads`` never recurses deeper than
``max_depth``. Limits default to the settings ``JSON_MAX_DEPTH`` and
``JSON_MAX_NUMBER_DIGITS``. Each check first looks at the text cheaply
(bracket counts, byte translations, substring tests) and does the slow part
(the bracket scan, number hooks, walking the parsed value) only when the text
might fail it, so ordinary JSON costs little more than ``json.loads``.
"""

from __future__ import annotations

import json
import math
import re

import mlservices
import numpy as np
from django.conf import settings

# A JSON string from its opening quote: escapes and ordinary characters, then
# the closing quote if there is one. Possessive, so it never backtracks: an
# unterminated string costs one linear scan (json.loads then reports it).
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.S)
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1, +1, -1, -1 as int8
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# An escaped surrogate without its other half (an escaped pair is one character).
_LONE_SURROGATE_ESCAPE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F]"
)
# Bytes mapped to "n" (may be part of a number) or " "; and digits to "0", e/E to "e", +/- to "s".
_NUMBER_CHARS = bytes(ord("n") if c in b"0123456789.eE+-" else ord(" ") for c in range(256))
_EXPONENT_CHARS = bytes(
    ord("0") if c in b"0123456789" else ord("e") if c in b"eE" else ord("s") if c in b"+-" else ord(" ")
    for c in range(256)
)


class InvalidJSON(mlservices.InvalidInput):
    """The JSON cannot be accepted; ``message`` says why and what to send instead."""

    code = "invalid_json"

    @property
    def message(self) -> str:
        return str(self)


def loads(data: bytes | str, *, max_depth: int | None = None, max_number_digits: int | None = None) -> object:
    """``json.loads`` for untrusted input: UTF-8 only, bounded depth and numbers, storable strings."""
    max_depth = settings.JSON_MAX_DEPTH if max_depth is None else max_depth
    max_digits = settings.JSON_MAX_NUMBER_DIGITS if max_number_digits is None else max_number_digits
    text, raw = _text_and_bytes(data)
    if raw.count(b"[") + raw.count(b"{") > max_depth:  # with fewer brackets it cannot be too deep
        depth = nesting_depth(text)
        if depth > max_depth:
            raise InvalidJSON(
                f"the JSON is nested {depth:,} levels deep; the limit is {max_depth} (JSON_MAX_DEPTH). "
                "Send a flatter structure"
            )
    hooks = {}
    if _numbers_need_checking(raw, max_digits):
        hooks = {
            "parse_int": lambda literal: int(_bounded(literal, max_digits)),
            "parse_float": lambda literal: _finite(float(_bounded(literal, max_digits)), literal),
        }
    try:
        value = json.loads(text, parse_constant=_no_constant, **hooks)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f'this is not valid JSON: {exc}; send a JSON document such as {{"key": "value"}}') from None
    # Decoded text holds no NUL or surrogate of its own (the parser refuses raw
    # control characters in strings): only escapes make them.
    if "\\u0000" in text or (("\\ud" in text or "\\uD" in text) and _LONE_SURROGATE_ESCAPE.search(text)):
        _check_strings(value)
    return value


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of ``text``, ignoring brackets inside strings.

    The running count of open brackets, at its highest: for invalid JSON at
    least as deep as a parser gets before it fails.

    >>> nesting_depth('{"a": [[1], "]]]"]}')
    3
    """
    outside = _STRING.sub("", text).encode("utf-8", "surrogatepass")  # only brackets are kept
    steps = outside.translate(None, _NOT_BRACKETS).translate(_BRACKET_STEPS)
    return int(np.frombuffer(steps, dtype=np.int8).cumsum(dtype=np.int64).max(initial=0))


def _text_and_bytes(data: bytes | str) -> tuple[str, bytes]:
    """The JSON as text and as UTF-8, checked to be Unicode (no lone surrogate in a str)."""
    try:
        if isinstance(data, str):
            return data, data.encode("utf-8")
        return bytes(data).decode("utf-8"), bytes(data)
    except UnicodeEncodeError as exc:
        raise InvalidJSON(
            f"the JSON text holds a lone surrogate (\\u{ord(exc.object[exc.start]):04x}) at character {exc.start:,}; "
            "send valid Unicode"
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidJSON(
            f"the JSON is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start:,}); "
            "send it encoded as UTF-8"
        ) from None


def _numbers_need_checking(raw: bytes, max_digits: int) -> bool:
    """Whether a number might have more than ``max_digits`` digits or overflow a float (1e999).

    Either shows in the raw text: a run of more than ``max_digits`` number
    characters, or an exponent of 3 digits or more (strings may trip it too: harmless).
    """
    exponents = raw.translate(_EXPONENT_CHARS)
    return b"n" * (max_digits + 1) in raw.translate(_NUMBER_CHARS) or b"0e000" in exponents or b"0es000" in exponents


def _bounded(literal: str, max_digits: int) -> str:
    digits = sum(c.isdigit() for c in literal)
    if digits > max_digits:
        shown = literal if len(literal) <= 24 else f"{literal[:20]}…"
        raise InvalidJSON(
            f"the number {shown} has {digits:,} digits; the limit is {max_digits} (JSON_MAX_NUMBER_DIGITS). "
            "Send large numbers as strings"
        )
    return literal


def _finite(value: float, literal: str) -> float:
    if not math.isfinite(value):
        raise InvalidJSON(f"the number {literal} is out of range for a 64-bit float; send a smaller number")
    return value


def _no_constant(name: str):
    raise InvalidJSON(f"{name} is not a JSON number; send a finite number, or null")


def _check_strings(value: object) -> None:
    """Refuse NUL and lone surrogates in any string or key, walking with a stack (no recursion).

    A path is kept as nested pairs ``(parent, key)``, flattened only for a message.
    """
    if isinstance(value, str):
        _check_string(value, None)
    stack: list[tuple[dict | list, tuple | None]] = [(value, None)] if isinstance(value, (dict, list)) else []
    while stack:
        container, path = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, child in items:
            if isinstance(key, str):
                _check_string(key, path, is_key=True)
            if isinstance(child, str):
                _check_string(child, (path, key))
            elif isinstance(child, (dict, list)):
                stack.append((child, (path, key)))


def _check_string(text: str, path: tuple | None, is_key: bool = False) -> None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return
    if is_key:
        where = f"a key in {_dotted(path)}" if path else "a key of the top-level object"
    else:
        where = f"the string at {_dotted(path)}" if path else "the JSON string"
    char = found.group()
    if char == "\x00":
        raise InvalidJSON(f"{where} contains a NUL character (\\u0000), which cannot be stored; remove it")
    raise InvalidJSON(
        f"{where} contains a lone surrogate (\\u{ord(char):04x}) at character {found.start():,}, "
        "which is not valid Unicode; send text as UTF-8, or characters outside the BMP as a "
        "\\ud83d\\ude00-style surrogate pair"
    )


def _dotted(path: tuple | None) -> str:
    """``(((None, "input"), "items"), 3)`` → ``input.items[3]``."""
    parts = []
    while path is not None:
        path, key = path
        parts.append(key)
    out = ""
    for part in reversed(parts):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
