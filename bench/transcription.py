"""Transcription benchmark: our serving vs the Hugging Face pipeline vs faster-whisper.

One run measures, side by side, on the same Whisper weights (``--model``,
default ``../shared/models/whisper-base``) and the same CPU thread count
everywhere (``--threads``), greedy decoding everywhere:

(a) ``inprocess_batched``: ``Runtime.batched_run("transcription", {"file": bytes})``,
    the serving as the site runs it in-process: decoding, windows cut at quiet
    points, the windows of one file and of concurrent requests batched
    (``batch_size`` 8);
(b) ``inprocess_unbatched``: the same with ``batch_size=1``, which is how
    batching is switched off in production (MLSERVICES_CONFIG);
(a') ``inprocess_batched_int8``: (a) with the serving option ``quantize="int8"``
    (the linear layers in int8, per-channel: PyTorch's dynamic quantisation);
(c) ``hf_pipeline``: ``transformers.pipeline("automatic-speech-recognition",
    chunk_length_s=30, batch_size=--hf-batch-size, return_timestamps=True)`` on
    the same fp32 network, fed the same decoded 16 kHz samples;
(d) ``faster_whisper``: faster-whisper's ``WhisperModel.transcribe(beam_size=1)``
    (CTranslate2) on the same weights converted here with
    ``ct2-transformers-converter --quantization int8``, ``compute_type="int8"``;
(e) ``faster_whisper_batched``: its ``BatchedInferencePipeline`` (``batch_size`` 8).

Two loads: ``long`` (the 127 s address of ``../shared/data/audio/speech``,
one request at a time) and ``short8`` (the 8 short English clips, the 7 of
the manifest and jfk.flac, sent at once: 8 client threads for our serving and
faster-whisper, one call with the list for the pipeline). The figure is the
real-time factor: seconds of audio transcribed per second of wall clock. The
word error rate of each path is measured on the short clips (their exact
references) and on the long one (its reference is approximate). It prints the
table and the ratios and writes ``bench/results/transcription-<time>.json``
(see RECORD_KEYS and bench/README.md).

Run it from the project root::

    .venv/bin/python -m bench.transcription
    .venv/bin/python -m bench.transcription --help

(d) and (e) need the ``bench`` extra (``faster-whisper``, ``ctranslate2``);
without it they are skipped with a note. Every measurement has a time budget
(``--budget`` seconds, at least one run), after one unmeasured run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/transcription.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402 - after the sys.path fix above
    BUSY_FOREIGN_CORES,
    SHARED,
    BenchError,
    CpuMonitor,
    Quiet,
    busy_note,
    least_disturbed,
    machine_info,
    ratio,
    rounded,
    run_and_report,
    say,
    warn,
    warn_if_busy,
)

SERVING = "transcription"
DEFAULT_MODEL = SHARED / "models" / "whisper-base"
DEFAULT_SPEECH = SHARED / "data" / "audio" / "speech"
DEFAULT_LONG = DEFAULT_SPEECH / "gb0_bush_radio_address_2008-11-01.wav"
DEFAULT_JFK = SHARED / "data" / "audio" / "jfk.flac"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
SAMPLE_RATE = 16_000
SHORT_MAX_SECONDS = 30.0  # a clip of the manifest shorter than this is a short clip
PATHS = (
    "inprocess_batched", "inprocess_unbatched", "inprocess_batched_int8",
    "hf_pipeline", "faster_whisper", "faster_whisper_batched",
)  # fmt: skip
RECORD_KEYS = ("path", "long_rtf", "short8_rtf", "wer_short", "wer_long", "long_runs", "short8_rounds", "machine_busy")
RATIOS = {  # name: (numerator path, denominator path, load)
    "ours_over_faster_whisper_batched_long": ("inprocess_batched", "faster_whisper_batched", "long"),
    "ours_over_faster_whisper_long": ("inprocess_batched", "faster_whisper", "long"),
    "ours_over_hf_pipeline_long": ("inprocess_batched", "hf_pipeline", "long"),
    "batched_over_unbatched_long": ("inprocess_batched", "inprocess_unbatched", "long"),
    "ours_int8_over_faster_whisper_batched_long": ("inprocess_batched_int8", "faster_whisper_batched", "long"),
    "ours_int8_over_ours_long": ("inprocess_batched_int8", "inprocess_batched", "long"),
    "ours_over_faster_whisper_batched_short8": ("inprocess_batched", "faster_whisper_batched", "short8"),
    "ours_over_faster_whisper_short8": ("inprocess_batched", "faster_whisper", "short8"),
    "ours_over_hf_pipeline_short8": ("inprocess_batched", "hf_pipeline", "short8"),
    "batched_over_unbatched_short8": ("inprocess_batched", "inprocess_unbatched", "short8"),
    "ours_int8_over_faster_whisper_batched_short8": ("inprocess_batched_int8", "faster_whisper_batched", "short8"),
}
TARGET = {"ratio": "ours_over_faster_whisper_batched_long", "at_least": 0.8}
COLUMNS = [  # (title, key, width, format)
    ("path", "path", 22, "{}"),
    ("long RTF", "long_rtf", 9, "{:.2f}"),
    ("short8 RTF", "short8_rtf", 10, "{:.2f}"),
    ("WER short", "wer_short", 9, "{:.3f}"),
    ("WER long*", "wer_long", 9, "{:.3f}"),
    ("long s", "long_seconds_per_run", 7, "{:.1f}"),
    ("others", "foreign_cpu_cores", 6, "{:.2f}"),
]
LEGEND = (
    "RTF: seconds of audio per second of wall clock (higher is faster); long: the 127 s recording alone;\n"
    "short8: the 8 short clips at once; WER short: on the short clips; WER long*: against an approximate\n"
    "reference; others: CPU cores other processes used meanwhile (busy!: more than "
    f"{BUSY_FOREIGN_CORES})"
)


# --- inputs ------------------------------------------------------------------------------


class Clip:
    def __init__(self, name: str, data: bytes, reference: str):
        from mlservices.audio import decode

        self.name = name
        self.data = data
        self.reference = reference
        self.samples = decode(data, max_seconds=3600)
        self.seconds = self.samples.size / SAMPLE_RATE


def load_clips(speech: Path, long: Path, jfk: Path | None) -> tuple[Clip, list[Clip]]:
    """The long recording and the short English clips (the manifest's, then jfk.flac)."""
    manifest = speech / "manifest.tsv"
    if not manifest.is_file():
        raise BenchError(f"no manifest.tsv in {speech}; pass --speech")
    rows = list(csv.DictReader(manifest.open(encoding="utf-8"), delimiter="\t"))
    by_name = {r["file"]: r for r in rows}
    if long.name not in by_name:
        raise BenchError(f"{long.name} is not in {manifest}: its reference is needed")
    long_clip = Clip(long.name, long.read_bytes(), by_name[long.name]["reference"])
    short = [
        Clip(r["file"], (speech / r["file"]).read_bytes(), r["reference"])
        for r in rows
        if r["language"] == "en" and r["file"] != long.name and float(r["duration_s"]) < SHORT_MAX_SECONDS
    ]
    if jfk is not None:
        short.append(Clip(jfk.name, jfk.read_bytes(), JFK_TEXT))
    if not short:
        raise BenchError(f"no short English clips in {manifest}")
    return long_clip, short


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word errors over all clips per reference word (mlservices.transcripts.word_errors)."""
    from mlservices.transcripts import word_errors

    errors = [word_errors(r, h) for r, h in zip(references, hypotheses)]
    return round(sum(e for e, _ in errors) / max(1, sum(n for _, n in errors)), 4)


# --- the paths: each transcribes one clip, or all the short clips at once, to text --------


class Transcriber:
    """A way to transcribe: ``one(clip) -> text`` and ``together(clips) -> texts``."""

    name = ""
    settings: dict = {}

    def one(self, clip: Clip) -> str:
        raise NotImplementedError

    def together(self, clips: Sequence[Clip]) -> list[str]:
        """The clips at once, as concurrent requests (one client thread each)."""
        with concurrent.futures.ThreadPoolExecutor(len(clips)) as pool:
            return list(pool.map(self.one, clips))

    def close(self) -> None:
        pass


class Ours(Transcriber):
    def __init__(self, name: str, model: Path, threads: int, options: dict):
        from mlservices import Runtime

        self.name = name
        self.options = {"model": str(model), "threads": threads, **options}
        self.runtime = Runtime({SERVING: self.options}, device="cpu")
        self.settings = {"serving_options": self.options}

    def one(self, clip: Clip) -> str:
        return self.runtime.batched_run(SERVING, {"file": clip.data}, timeout=3600)["text"]

    def batch_sizes(self) -> list[int]:
        return [r.size for r in self.runtime.batcher(SERVING).records()]

    def close(self) -> None:
        self.runtime.close()


class HfPipeline(Transcriber):
    name = "hf_pipeline"

    def __init__(self, model: Path, batch_size: int, max_new_tokens: int | None):
        import torch
        from transformers import (
            WhisperForConditionalGeneration,
            WhisperProcessor,
            pipeline,
        )

        processor = WhisperProcessor.from_pretrained(model)
        network = WhisperForConditionalGeneration.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
        self.batch_size = batch_size
        # greedy, as the others (the pipeline's own default is 5 beams)
        self.generate_kwargs = {"num_beams": 1, **({"max_new_tokens": max_new_tokens} if max_new_tokens else {})}
        self.pipe = pipeline(
            "automatic-speech-recognition",
            model=network.eval(),
            tokenizer=processor.tokenizer,
            feature_extractor=processor.feature_extractor,
            chunk_length_s=30,
            device="cpu",
        )
        self.settings = {
            "chunk_length_s": 30, "batch_size": batch_size, "return_timestamps": True, "dtype": "float32",
            "generate_kwargs": self.generate_kwargs,
        }  # fmt: skip

    def _run(self, samples: list):
        return self.pipe(
            [s.copy() for s in samples], batch_size=self.batch_size, return_timestamps=True,
            generate_kwargs=self.generate_kwargs,
        )  # fmt: skip

    def one(self, clip: Clip) -> str:
        return self._run([clip.samples])[0]["text"].strip()

    def together(self, clips: Sequence[Clip]) -> list[str]:
        return [r["text"].strip() for r in self._run([c.samples for c in clips])]


class FasterWhisper(Transcriber):
    def __init__(self, name: str, converted: Path, threads: int, batched: bool, batch_size: int, max_new_tokens: int | None):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.name = name
        self.model = WhisperModel(str(converted), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)
        self.pipeline = BatchedInferencePipeline(self.model) if batched else None
        self.batch_size = batch_size
        self.extra = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
        self.settings = {
            "compute_type": "int8", "cpu_threads": threads, "num_workers": 1, "beam_size": 1,
            **({"batch_size": batch_size} if batched else {}),
        }  # fmt: skip

    def one(self, clip: Clip) -> str:
        if self.pipeline is not None:
            segments, _ = self.pipeline.transcribe(clip.samples, batch_size=self.batch_size, beam_size=1, **self.extra)
        else:
            segments, _ = self.model.transcribe(clip.samples, beam_size=1, **self.extra)
        return " ".join(s.text.strip() for s in segments)


def converted_model(model: Path, folder: Path) -> Path:
    """``model`` converted to CTranslate2 int8 with faster-whisper's converter, in ``folder``."""
    out = folder / "ct2-int8"
    command = [  # ct2-transformers-converter, with this interpreter
        sys.executable, "-c", "from ctranslate2.converters.transformers import main; main()", "--model", str(model),
        "--output_dir", str(out), "--quantization", "int8",
        "--copy_files", "tokenizer.json", "preprocessor_config.json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"the conversion failed: {done.stderr[-1500:]}")
    return out


# --- measurements ------------------------------------------------------------------------


def timed_runs(run: Callable[[], object], budget: float, monitor: CpuMonitor) -> tuple[int, float, dict]:
    """``run()`` repeatedly until ``budget`` seconds have passed (at least once):
    (runs, seconds, CPU use meanwhile)."""
    before = monitor.snapshot()
    started = time.perf_counter()
    runs = 0
    while runs == 0 or time.perf_counter() - started < budget:
        run()
        runs += 1
    seconds = time.perf_counter() - started
    return runs, seconds, monitor.usage(before, monitor.snapshot())


def measure_path(path: Transcriber, long: Clip, short: list[Clip], args, monitor: CpuMonitor, quiet: Quiet) -> dict:
    say(f"{path.name}: warming up (and scoring)…")
    long_text = path.one(long)
    short_texts = path.together(short)
    record: dict = {
        "path": path.name,
        "settings": path.settings,
        "wer_short": corpus_wer([c.reference for c in short], short_texts),
        "wer_long": corpus_wer([long.reference], [long_text]),
        "texts_short": dict(zip((c.name for c in short), short_texts)),
        "text_long": long_text,
    }
    cpus = []
    for load, run, audio in (
        ("long", lambda: path.one(long), long.seconds),
        ("short8", lambda: path.together(short), sum(c.seconds for c in short)),
    ):
        def measure(run=run):
            runs, seconds, cpu = timed_runs(run, args.budget, monitor)
            return (runs, seconds), cpu

        (runs, seconds), cpu = least_disturbed(measure, quiet, args.retries)
        record[f"{load}_rtf"] = round(runs * audio / seconds, 2)
        record[f"{load}_runs" if load == "long" else "short8_rounds"] = runs
        record[f"{load}_seconds_per_run"] = round(seconds / runs, 2)
        record[f"{load}_foreign_cpu_cores"] = cpu.get("foreign_cpu_cores")
        cpus.append(cpu.get("foreign_cpu_cores") or 0.0)
        say(f"  {load:<7} {record[f'{load}_rtf']:7.2f}× real time  ({runs} run(s), {seconds:.1f} s)" + busy_note(cpus[-1]))
    if isinstance(path, Ours):
        sizes = path.batch_sizes()
        record["mean_batch"] = rounded(sum(sizes) / len(sizes)) if sizes else None
    record["foreign_cpu_cores"] = round(max(cpus), 3)
    record["machine_busy"] = max(cpus) > BUSY_FOREIGN_CORES
    say(f"  WER short {record['wer_short']:.3f}, long {record['wer_long']:.3f} (approximate reference)")
    return record


def build_path(name: str, args, converted: Callable[[], Path], warnings: list[str]) -> Transcriber | None:
    options = json.loads(args.serving_options) if args.serving_options else {}
    max_new = options.get("max_new_tokens")
    if name == "inprocess_batched":
        return Ours(name, args.model, args.threads, options)
    if name == "inprocess_unbatched":
        return Ours(name, args.model, args.threads, {**options, "batch_size": 1})
    if name == "inprocess_batched_int8":
        return Ours(name, args.model, args.threads, {**options, "quantize": "int8"})
    if name == "hf_pipeline":
        return HfPipeline(args.model, args.hf_batch_size, max_new)
    try:
        import faster_whisper  # noqa: F401
    except ImportError as exc:
        warn(f"{name} skipped: faster-whisper is not installed ({exc}); pip install the `bench` extra", warnings)
        return None
    return FasterWhisper(name, converted(), args.threads, name == "faster_whisper_batched", args.fw_batch_size, max_new)


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    warnings: list[str] = []
    load_before = warn_if_busy(warnings)
    import mlservices

    mlservices.discover()
    long, short = load_clips(args.speech, args.long, args.jfk)
    say(f"long: {long.name}, {long.seconds:.1f} s; short: {len(short)} clips, {sum(c.seconds for c in short):.1f} s")
    monitor = CpuMonitor(lambda: {"bench": os.getpid()})
    quiet = Quiet(monitor, args.wait_quiet, args.wait_quiet_total)
    versions = machine_info("torch", "transformers", "numpy", "av")
    results: dict = {
        "benchmark": SERVING,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**versions, "load_before": load_before},
        "settings": {
            "model": str(args.model), "threads": args.threads, "budget_s": args.budget, "paths": args.paths,
            "decoding": "greedy everywhere", "hf_batch_size": args.hf_batch_size, "fw_batch_size": args.fw_batch_size,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },  # fmt: skip
        "inputs": {
            "long": {"file": long.name, "seconds": round(long.seconds, 3)},
            "short": [{"file": c.name, "seconds": round(c.seconds, 3)} for c in short],
        },
        "records": [],
        "skipped": [],
        "warnings": warnings,
    }
    with tempfile.TemporaryDirectory(prefix="bench-transcription-") as tmp:
        conversions: dict[str, Path] = {}

        def converted() -> Path:  # once, for both faster-whisper paths
            if "int8" not in conversions:
                conversions["int8"] = converted_model(args.model, Path(tmp))
            return conversions["int8"]

        for name in args.paths:
            try:
                path = build_path(name, args, converted, warnings)
            except BenchError as exc:
                warn(f"{name} skipped: {exc}", warnings)
                path = None
            if path is None:
                results["skipped"].append(name)
                continue
            try:
                results["records"].append(measure_path(path, long, short, args, monitor, quiet))
            finally:
                path.close()
    with_fw = [r for r in results["records"] if r["path"].startswith("faster_whisper")]
    if with_fw:
        import ctranslate2
        import faster_whisper

        results["machine"].update(faster_whisper=faster_whisper.__version__, ctranslate2=ctranslate2.__version__)
    results["ratios"] = ratios(results["records"])
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results


def ratios(records: Sequence[dict]) -> dict:
    by_path = {r["path"]: r for r in records}
    out = {}
    for name, (a, b, load) in RATIOS.items():
        ra, rb = by_path.get(a, {}), by_path.get(b, {})
        out[name] = ratio(ra.get(f"{load}_rtf"), rb.get(f"{load}_rtf"))
    fw = by_path.get("faster_whisper_batched")
    for key, path in (("ours", "inprocess_batched"), ("ours_int8", "inprocess_batched_int8")):
        ours = by_path.get(path)
        out[f"wer_short_{key}_minus_faster_whisper_batched"] = (
            round(ours["wer_short"] - fw["wer_short"], 4) if ours and fw else None
        )
    return out


def verdict(results: dict) -> list[str]:
    r = results["ratios"]
    lines = [f"{name}: {value:.2f}" for name, value in r.items() if value is not None and not name.startswith("wer")]
    for key, name in (("ours", TARGET["ratio"]), ("ours_int8", TARGET["ratio"].replace("ours", "ours_int8"))):
        value, wer_gap = r.get(name), r.get(f"wer_short_{key}_minus_faster_whisper_batched")
        if value is None:
            continue
        ok = value >= TARGET["at_least"] and (wer_gap is None or wer_gap <= 0)
        lines.append(
            f"target ({key}): >= {TARGET['at_least']} x faster-whisper batched on the long recording at equal or "
            f"better WER: {value:.2f}, WER short {wer_gap:+.4f}: " + ("MET" if ok else "NOT MET")
            if wer_gap is not None
            else f"target ({key}): {value:.2f}: " + ("MET" if ok else "NOT MET")
        )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.transcription", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(os.environ.get("TRANSCRIPTION_MODEL") or DEFAULT_MODEL))
    p.add_argument("--speech", type=Path, default=DEFAULT_SPEECH, help="a folder of clips with manifest.tsv")
    p.add_argument("--long", type=Path, default=DEFAULT_LONG, help="the long recording (a file of --speech)")
    p.add_argument("--jfk", type=lambda s: Path(s) if s else None, default=DEFAULT_JFK, help="jfk.flac ('' to leave it out)")
    p.add_argument("--paths", type=lambda s: s.split(","), default=list(PATHS), help=f"some of {','.join(PATHS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads, everywhere")
    p.add_argument("--budget", type=float, default=20.0, help="seconds measured per path and load (at least one run)")
    p.add_argument("--hf-batch-size", type=int, default=8, help="the pipeline's batch_size")
    p.add_argument("--fw-batch-size", type=int, default=8, help="BatchedInferencePipeline's batch_size")
    p.add_argument("--wait-quiet", type=float, default=10.0, help="seconds to wait, before a measurement, for other processes to calm down")
    p.add_argument("--wait-quiet-total", type=float, default=120.0, help="seconds of such waiting in the whole run, at most")
    p.add_argument("--retries", type=int, default=1, help="times a measurement disturbed by other processes is redone")
    p.add_argument("--serving-options", default="", help='JSON merged into the serving\'s options, e.g. \'{"batch_size": 4}\'')
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/transcription-<time>.json)")
    p.add_argument("--check", action="store_true", help="exit 1 when the target is not met")
    args = p.parse_args(argv)
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        p.error(f"unknown path(s) {', '.join(unknown)}; use some of {', '.join(PATHS)}")
    if not args.model.is_dir():
        p.error(f"no Whisper folder at {args.model}; pass --model or set TRANSCRIPTION_MODEL")
    if not args.long.is_file():
        p.error(f"no long recording at {args.long}; pass --long")
    if args.jfk is not None and not args.jfk.is_file():
        p.error(f"no jfk.flac at {args.jfk}; pass --jfk, or --jfk '' to leave it out")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread pools are sized when torch / CTranslate2 start: say it before importing them.
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLSERVICES_OFFLINE", "1")
    return run_and_report(run, args, SERVING, COLUMNS, LEGEND, verdict)

if __name__ == "__main__":
    sys.exit(main())
