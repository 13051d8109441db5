"""Command line: run a serving on text, install its weights, list servings.

    python -m mlservices run sentiment --model ../shared/models/sentiment-minilm-sst2 --text "I love it"
    {"label": "POSITIVE", "score": 0.9954, "scores": {...}, "model": "...", "truncated": false}

    python -m mlservices run sentiment --input texts.txt     # one JSON line per input line, in order
    python -m mlservices download sentiment                  # fetch + verify the pinned weights
    python -m mlservices list

With ``--input`` every line goes through the serving's batcher, so the file is
processed in batches. A line that fails prints ``{"error": ..., "code": ...}``
in its place and the command exits 1 at the end; a missing model, an unknown
serving or a bad option prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import registry
from .errors import ServingError
from .runtime import Runtime


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlservices", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help in (("run", "run a serving and print JSON"), ("download", "install a serving's weights")):
        sub = commands.add_parser(name, help=help)
        sub.add_argument("serving")
        sub.add_argument("--model", help="local folder or Hub id")
        sub.add_argument("--revision", help="pinned Hub commit for --model")
        sub.add_argument("--sha256", help="pin the weights' sha256")
        sub.add_argument(
            "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
            help="any other serving option (JSON values allowed), e.g. -o batch_size=32",
        )
        sub.add_argument("--device", help="cpu, cuda, cuda:1 (default: the best present)")
        if name == "run":
            what = sub.add_mutually_exclusive_group(required=True)
            what.add_argument("--text", help="one input")
            what.add_argument("--input", help="a file with one input per line ('-' for stdin)")
    commands.add_parser("list", help="list the registered servings and their options")
    return parser


def _options(args) -> dict:
    options = {k: getattr(args, k) for k in ("model", "revision", "sha256") if getattr(args, k)}
    for pair in args.option:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ServingError(f"--option {pair!r}: write it as KEY=VALUE, e.g. -o batch_size=32")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _run(runtime: Runtime, name: str, args) -> int:
    if args.text is not None:
        print(json.dumps(runtime.run(name, args.text)))
        return 0
    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    with stream:
        lines = stream.read().splitlines()
    loaded = runtime.serving(name)
    batcher = runtime.batcher(name)
    pending = []  # (prepared | error, future | None), in input order
    for line in lines:
        try:
            prepared = loaded.prepare(line)
        except ServingError as exc:
            pending.append((exc, None))
        else:
            pending.append((prepared, batcher.submit(prepared.item, prepared.key)))
    failures = 0
    for prepared, future in pending:
        try:
            if future is None:
                raise prepared
            print(json.dumps(loaded.finish(future.result(), prepared.context)), flush=False)
        except ServingError as exc:
            failures += 1
            print(json.dumps({"error": str(exc), "code": exc.code}))
    if failures:
        print(f"error: {failures} of {len(lines)} inputs failed (see their lines)", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    registry.discover()
    if args.command == "list":
        for name in registry.names():
            options = ", ".join(f"{k}={v!r}" for k, v in registry.options(name).items())
            print(f"{name}: {options}")
        return 0
    runtime = Runtime({args.serving: _options(args)}, device=args.device)
    try:
        if args.command == "download":
            loaded = runtime.serving(args.serving)
            print(f"installed {args.serving}: {loaded.version}")
            return 0
        return _run(runtime, args.serving, args)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    finally:
        runtime.close()
