"""Command line: run a serving on text or files, install its weights, list servings.

    python -m mlservices run sentiment --model ../shared/models/sentiment-minilm-sst2 --text "I love it"
    {"label": "POSITIVE", "score": 0.9954, "scores": {...}, "model": "...", "truncated": false}

    python -m mlservices run sentiment --input texts.txt     # one JSON line per input line, in order
    python -m mlservices run background_removal --model ../shared/models/u2netp/model.onnx \\
        --input photo.jpg --output cutout.png                # cutout.png, and the mask as cutout-mask.png
    python -m mlservices run background_removal --input photos/ --output cutouts/ --only-mask
    python -m mlservices download sentiment                  # fetch + verify the pinned weights
    python -m mlservices list                                # servings, options, input specs

Inputs. ``--text`` is one input of a text serving. ``--input`` takes, for a
text serving, a file with one input per line ('-' for stdin); for a file
serving (spec kind image/audio), a file (one input; '-' for stdin) or a
folder (every file in it that does not start with '.', sorted by name). All
inputs go through the serving's batcher, so they share batches; file inputs
show a progress bar on stderr (redrawn in place on a terminal, one final line
otherwise).

Outputs. One JSON line per input on stdout, in input order; an input that
fails prints ``{"error": ..., "code": ...}`` in its place and the command
exits 1 at the end (a failed file is also named on one stderr line,
``error: <file>: <message>``). Files in a result (``mlservices.Artifact``)
are written under ``--output`` and replaced in the JSON by
``{"name", "file", "content_type", "size"}`` (``file`` is null without
``--output``): for one input, ``--output x.png`` receives its artifact (with
several, the first; the others go beside it as ``x-<artifact name>``); for a
folder of inputs (or when ``--output`` is a folder), ``--output DIR``
receives ``<input stem>.<ext>`` per input, or ``<input stem>-<artifact
name>`` when a result holds several. An input file is never overwritten.

Options. ``-o KEY=VALUE`` (VALUE read as JSON when it parses, else as a
string) sets either a factory option of the serving (``model``,
``threads``, ``batch_size``, ...) or a request option from its input spec
(``spec.options``); each key goes where it belongs and an unknown key is
refused with the list of both kinds. ``--only-mask``, ``--avatar`` and
``--bgcolor '#RRGGBB'`` are shorthands for the request options ``only_mask``,
``avatar`` and ``bgcolor``, accepted only by servings that declare them.

A missing model, an unknown serving, a bad option, an unreadable input or a
bad ``--device`` prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from . import registry
from .artifacts import Artifact, collect, replace
from .errors import InvalidInput, ServingError
from .runtime import Runtime
from .spec import InputSpec

DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
# Shorthand flags: (flag, the request option it sets, argparse action, help)
ALIASES = (
    ("--only-mask", "only_mask", "store_true", "-o only_mask=true: return only the mask"),
    ("--avatar", "avatar", "store_true", "-o avatar=true: a 512×512 square around the subject"),
    ("--bgcolor", "bgcolor", "store", "-o bgcolor='#RRGGBB': the subject over this colour"),
)


class UsageError(ServingError):
    """A command line that cannot run as written (exit 2)."""

    code = "usage"


@dataclasses.dataclass(frozen=True)
class Input:
    label: str  # for messages: the file, or "line N"
    stem: str  # output files are named after it
    load: Callable[[], Any]  # the serving's input (read when its turn comes)
    path: Path | None = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlservices", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help in (("run", "run a serving and print JSON"), ("download", "install a serving's weights")):
        sub = commands.add_parser(name, help=help)
        sub.add_argument("serving")
        sub.add_argument("--model", help="local folder or file, Hub id, or a named default")
        sub.add_argument("--revision", help="pinned Hub commit for --model")
        sub.add_argument("--sha256", help="pin the weights' sha256")
        sub.add_argument(
            "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
            help="a factory or request option (JSON values allowed), e.g. -o batch_size=32",
        )
        sub.add_argument("--device", help="cpu, cuda, cuda:1 (default: the best present)")
        if name == "run":
            what = sub.add_mutually_exclusive_group(required=True)
            what.add_argument("--text", help="one input of a text serving")
            what.add_argument("--input", help="text serving: a file, one input per line; file serving: a file "
                              "or a folder of files ('-': stdin)")
            sub.add_argument("--output", help="where files in the results go: a file (one input) or a folder")
            for flag, option, action, text in ALIASES:
                sub.add_argument(flag, dest=option, action=action, default=None, help=text)
    commands.add_parser("list", help="list the servings, their options and input specs")
    return parser


# --- options ----------------------------------------------------------------


def _pairs(args) -> dict[str, Any]:
    """Every option given: --model & co., then -o KEY=VALUE, then the shorthand flags."""
    options = {k: getattr(args, k) for k in ("model", "revision", "sha256") if getattr(args, k)}
    for pair in args.option:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {pair!r}: write it as KEY=VALUE, e.g. -o batch_size=32")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def route(name: str, options: dict[str, Any], flags: dict[str, Any]) -> tuple[dict, dict, InputSpec]:
    """Split options into the factory's and the request's; check both; return the spec too."""
    factory_keys = [*registry.options(name), *registry.SERVING_OPTIONS]
    factory = {k: v for k, v in options.items() if k in factory_keys}
    spec = registry.build(name, **factory).spec  # builds without loading: range checks happen here
    request_keys = [o.name for o in spec.options]
    unknown = sorted(set(options) - set(factory_keys) - set(request_keys))
    if unknown:
        raise UsageError(
            f"serving {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"factory options: {', '.join(factory_keys)}; request options: {', '.join(request_keys) or 'none'}"
        )
    request = {k: v for k, v in options.items() if k in request_keys}
    for flag, option, _, _ in ALIASES:
        if flags.get(option) is None:
            continue
        if option not in request_keys:
            raise UsageError(
                f"{flag}: serving {name!r} has no request option {option}; "
                f"its request options: {', '.join(request_keys) or 'none'}"
            )
        request[option] = flags[option]
    checked = spec.check_options(name, request)
    return factory, {k: checked[k] for k in request}, spec


# --- inputs -----------------------------------------------------------------


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def _lines(text: str) -> list[str]:
    """One input per line ('\\n' or '\\r\\n'; a last newline ends the last line, it adds no input)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _file_reader(path: Path | None, spec: InputSpec, name: str, request: dict) -> Callable[[], dict]:
    def load() -> dict:
        limit = spec.max_bytes
        if path is None:
            data = sys.stdin.buffer.read(limit + 1 if limit else -1)
            if limit is not None and len(data) > limit:
                raise InvalidInput(f"{name}: stdin holds more than {limit:,} bytes, the limit. Send a smaller file")
        else:
            if not path.is_file():
                raise InvalidInput(f"{name}: {path} is not a regular file")
            size = path.stat().st_size
            if limit is not None and size > limit:
                raise InvalidInput(f"{name}: the file is {size:,} bytes; the limit is {limit:,}. Send a smaller file")
            data = path.read_bytes()
        return {"file": data, **request}

    return load


def _stems(paths: list[Path]) -> list[str]:
    """Each file's stem, or its whole name where two stems clash (a.jpg and a.png)."""
    counts = collections.Counter(p.stem for p in paths)
    return [p.name if counts[p.stem] > 1 else p.stem for p in paths]


def inputs(args, spec: InputSpec, name: str, request: dict) -> tuple[list[Input], bool]:
    """The inputs named on the command line, and whether they came from a folder."""
    if spec.is_file:
        if args.text is not None:
            raise UsageError(f"serving {name!r} reads {spec.kind} files; pass --input FILE|DIR, not --text")
        if args.input == "-":
            return [Input("stdin", "stdin", _file_reader(None, spec, name, request))], False
        source = Path(args.input)
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if not p.name.startswith(".") and p.is_file())
            if not files:
                raise UsageError(f"--input {source}: the folder holds no files")
            return [
                Input(str(p), stem, _file_reader(p, spec, name, request), p)
                for p, stem in zip(files, _stems(files))
            ], True
        if not source.exists():
            raise FileNotFoundError(2, "No such file or directory", str(source))
        return [Input(str(source), source.stem, _file_reader(source, spec, name, request), source)], False

    def text_input(text: str) -> Any:
        return {"text": text, **request} if request else text

    if args.text is not None:
        return [Input("--text", "text", lambda: text_input(args.text))], False
    if args.input != "-" and Path(args.input).is_dir():
        raise UsageError(f"--input {args.input}: is a folder; serving {name!r} reads text, one input per line of a file")
    if args.input == "-":
        data, where = sys.stdin.buffer.read(), "stdin"
    else:
        data, where = Path(args.input).read_bytes(), args.input
    lines = _lines(_decode_utf8(data, where))
    return [Input(f"line {i}", f"line-{i}", lambda line=line: text_input(line)) for i, line in enumerate(lines, 1)], False


# --- outputs ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where artifacts go: a folder (``<stem>.<ext>`` / ``<stem>-<name>``) or one file."""

    target: Path | None
    is_dir: bool
    protected: frozenset[Path]  # the inputs: never written over

    def paths(self, artifacts: list[Artifact], stem: str) -> list[Path]:
        if self.is_dir:
            if len(artifacts) == 1:
                return [self.target / f"{stem}{Path(artifacts[0].name).suffix}"]
            return [self.target / f"{stem}-{a.name}" for a in artifacts]
        first, rest = artifacts[0], artifacts[1:]
        wanted = Path(first.name).suffix.lower()
        if self.target.suffix and wanted and self.target.suffix.lower() != wanted:
            raise InvalidInput(
                f"--output {self.target}: the result's {first.name} is a {wanted} file; "
                f"name the output {self.target.with_suffix(wanted).name}"
            )
        return [self.target, *(self.target.with_name(f"{self.target.stem}-{a.name}") for a in rest)]

    def write(self, result: Any, stem: str) -> Any:
        """``result`` with its artifacts written and replaced by ``{"name", "file", "content_type", "size"}``."""
        found = collect(result)
        if self.target is None or not found:
            return replace(result, lambda a: _described(a, None))
        where = {id(a): path for a, path in zip(found, self.paths(found, stem))}
        for path in where.values():
            if path.resolve() in self.protected:
                raise InvalidInput(f"--output: {path} is an input; choose another --output")
        for artifact in found:
            path = where[id(artifact)]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(artifact.data)
        return replace(result, lambda a: _described(a, where[id(a)]))


def _described(artifact: Artifact, path: Path | None) -> dict:
    return {
        "name": artifact.name,
        "file": str(path) if path else None,
        "content_type": artifact.content_type,
        "size": len(artifact.data),
    }


def outputs(output: str | None, items: list[Input], from_dir: bool) -> Outputs:
    protected = frozenset(i.path.resolve() for i in items if i.path)
    if not output:
        return Outputs(None, False, protected)
    target = Path(output)
    several = from_dir or len(items) > 1
    if several and target.exists() and not target.is_dir():
        raise UsageError(f"--output {target}: is a file; give a folder for {len(items)} inputs")
    is_dir = several or target.is_dir() or output.endswith(("/", os.sep))
    return Outputs(target, is_dir, protected)


# --- running ----------------------------------------------------------------


class ProgressBar:
    """``[#####.....] 5/10, 1 failed, 2.3 s`` on stderr: redrawn in place on a terminal,
    one final line otherwise. ``note(line)`` prints a line (an error) without garbling the bar."""

    def __init__(self, total: int, stream: TextIO, tty: bool | None = None, width: int = 24):
        self.total, self.stream, self.width = total, stream, width
        self.tty = stream.isatty() if tty is None else tty
        self.done = self.failed = 0
        self.started = time.monotonic()
        self._shown = 0
        self._draw()

    def line(self) -> str:
        filled = self.width * self.done // max(self.total, 1)
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}{failed}, "
            f"{time.monotonic() - self.started:.1f} s"
        )

    def _draw(self) -> None:
        if self.tty:
            text = self.line()
            self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
            self._shown = len(text)
            self.stream.flush()

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        self._draw()

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0
        self.stream.write(text + "\n")
        self._draw()

    def close(self) -> None:
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def workers(runtime: Runtime, name: str) -> int:
    """Inputs in flight at once: enough to fill every batch the serving runs, and the next ones."""
    serving = runtime.serving(name).serving
    return max(2, 2 * serving.batch_size * runtime.batcher(name).parallel)


def run_inputs(
    runtime: Runtime, name: str, items: list[Input], out: Outputs, stdout: TextIO, bar: ProgressBar | None
) -> int:
    """Every input through the serving's batcher, results printed in order; how many failed."""

    def one(item: Input) -> str:
        result = runtime.batched_run(name, item.load())
        return json.dumps(out.write(result, item.stem))

    failures = 0
    with ThreadPoolExecutor(workers(runtime, name), thread_name_prefix="mlservices-cli") as pool:
        futures = [pool.submit(one, item) for item in items]
        try:
            for item, future in zip(items, futures):
                failed = False
                try:
                    line = future.result()
                except (ServingError, OSError) as exc:
                    failed = True
                    message = str(exc) if isinstance(exc, ServingError) else _os_message(exc)
                    line = json.dumps({"error": message, "code": getattr(exc, "code", "os_error")})
                    if bar:
                        bar.note(f"error: {item.label}: {message}")
                failures += failed
                print(line, file=stdout, flush=True)
                if bar:
                    bar.advance(failed)
        finally:
            for future in futures:
                future.cancel()
    return failures


def _os_message(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")


def _run(runtime: Runtime, name: str, args, spec: InputSpec, request: dict) -> int:
    items, from_dir = inputs(args, spec, name, request)
    out = outputs(args.output, items, from_dir)
    _load(runtime, name, args.device)
    if args.text is not None:
        (item,) = items
        print(json.dumps(out.write(runtime.run(name, item.load()), item.stem)))
        return 0
    bar = ProgressBar(len(items), sys.stderr) if spec.is_file else None
    try:
        failures = run_inputs(runtime, name, items, out, sys.stdout, bar)
    finally:
        if bar:
            bar.close()
    if failures and not spec.is_file:
        print(f"error: {failures} of {len(items)} inputs failed (see their lines)", file=sys.stderr)
    return 1 if failures else 0


def _load(runtime: Runtime, name: str, device: str | None) -> None:
    try:
        runtime.serving(name)
    except ServingError:
        raise
    except Exception as exc:  # e.g. a device this machine lacks
        raise UsageError(
            f"could not load {name} on {device or 'the default device'}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}"
        ) from exc


# --- list -------------------------------------------------------------------


def describe(name: str) -> list[str]:
    """The lines ``list`` prints for serving ``name``."""
    lines = []
    try:
        serving = registry.build(name)
    except ServingError as exc:
        return [f"{name}: cannot be built with its defaults: {exc}"]
    lines.append(f"{name}: {serving.description}" if serving.description else name)
    factory = ", ".join(f"{k}={v!r}" for k, v in registry.options(name).items())
    lines.append(f"  factory options: {factory or 'none'}")
    batching = ", ".join(f"{k}={_shown(getattr(serving, k))}" for k in registry.SERVING_OPTIONS)
    lines.append(f"  serving options: {batching}")
    spec = serving.spec
    limits = ", ".join(f"{k}={v:,}" for k, v in spec.as_json()["limits"].items())
    formats = f" ({', '.join(spec.formats)})" if spec.formats else ""
    lines.append(f"  input: {spec.kind}{formats}; limits: {limits or 'none'}")
    if not spec.options:
        lines.append("  request options: none")
    else:
        lines.append("  request options:")
        for option in spec.options:
            schema = option.as_json()
            extra = []
            if option.choices:
                extra.append("one of " + "|".join(map(str, option.choices)))
            if option.minimum is not None or option.maximum is not None:
                extra.append(f"{_g(option.minimum)}..{_g(option.maximum)}")
            detail = f", {', '.join(extra)}" if extra else ""
            help = f": {option.help}" if option.help else ""
            lines.append(f"    {option.name} ({schema['type']}{detail}; default {option.default!r}){help}")
    return lines


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


# --- main -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    registry.discover()
    if args.command == "list":
        for name in registry.names():
            print("\n".join(describe(name)))
        return 0
    runtime = None
    try:
        if args.device is not None and not DEVICE.match(args.device):
            raise UsageError(f"--device {args.device!r}: use cpu, cuda, cuda:N (e.g. cuda:1) or mps")
        flags = {option: getattr(args, option, None) for _, option, _, _ in ALIASES}
        factory, request, spec = route(args.serving, _pairs(args), flags)
        runtime = Runtime({args.serving: factory}, device=args.device)
        if args.command == "download":
            _load(runtime, args.serving, args.device)
            print(f"installed {args.serving}: {runtime.serving(args.serving).version}")
            return 0
        return _run(runtime, args.serving, args, spec, request)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {_os_message(exc)}", file=sys.stderr)
        return 2
    finally:
        if runtime is not None:
            runtime.close()
