"""Sentiment serving benchmark: raw model vs in-process serving vs Celery worker.

One run measures, side by side and with the same thread settings, for each
input kind (``short``: SST-2 phrases; ``long``: the phrases joined into texts
of about 128 tokens):

(a) ``raw``: tokenizer + model in a tight loop on ready-made batches (sorted
    by length, the kindest order), at every batch size of ``--raw-batch-sizes``;
    the best one is the ceiling the served paths are compared with;
(b) ``inprocess_batched``: ``Runtime.batched_run`` from N closed-loop client
    threads (the serving's batcher shares batches between them);
(c) ``inprocess_unbatched``: the same with ``batch_size=1``, which is how
    batching is switched off in production (MLSERVICES_CONFIG);
(d) ``worker``: a real ``celery -A webapp worker -P threads`` subprocess,
    driven by N closed-loop clients sending the task ``jobs.predict`` to the
    ``sentiment`` queue and waiting for its answer on a reply channel of the
    Redis channel layer, as the site's websocket consumer does;
(e) ``ws_inprocess``: the site itself, a real daphne in in-process mode (the
    serving runs in daphne), driven by N real websocket clients sending
    ``predict`` messages as the site's page does, each on its own socket;
(f) ``ws_worker``: the same against a daphne in celery mode, with the worker
    of (d) running the predictions;

for N in ``--concurrency`` (1, 8, 32; (e) and (f) at ``--ws-concurrency``,
default 1 and 32), and one request alone on every path in turn
(``--alone-rounds``: the overheads over a raw batch of one, interleaved). It prints a table with the ratios served/raw and
batched/unbatched, one with the websocket latencies and their overhead over
a raw batch of one (and where it goes), the targets as met or missed, and
writes bench/results/<name>.json: one record per input kind and concurrency
(see RECORD_KEYS and bench/README.md).

Run it from the project root::

    .venv/bin/python -m bench.sentiment            # or: make bench
    .venv/bin/python -m bench.sentiment --help

It needs Redis (``--redis-url``, default db 14, which it flushes) unless
``--no-worker``. Every measurement has a time budget (``--budget`` seconds
after ``--warmup`` seconds), so a run takes a few minutes whatever the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/sentiment.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402 - after the sys.path fix above
    BUSY_FOREIGN_CORES,
    RESULTS,
    SHARED,
    BenchError,
    CpuMonitor,
    Quiet,
    Worker,
    busy_note,
    closed_loop,
    cpu_ms_per_item,
    cpu_ms_per_item_by_process,
    fmt_ms,
    foreign,
    least_disturbed,
    machine_info,
    mean_batch,
    ms_per_item,
    percentile,  # noqa: F401 - part of this module's interface (tests)
    ratio,
    redis_db,
    rounded,
    run_and_report,
    say,
    table,
    warn,
    warn_if_busy,
)
from bench.site import Site, Sockets  # noqa: E402

DEFAULT_MODEL = SHARED / "models" / "sentiment-minilm-sst2"
DEFAULT_DATA = SHARED / "data" / "text" / "sst2_dev.tsv"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
SERVING = "sentiment"
WARMUP_TEXT = "The worker is warming up."

RECORD_KEYS = (
    "input",
    "concurrency",
    "raw_items_per_s",
    "inprocess_batched_items_per_s",
    "inprocess_unbatched_items_per_s",
    "worker_items_per_s",
    "worker_p50_ms",
    "worker_p99_ms",
)
# Issue 11's targets, with the default configuration: throughput at long@32, the latency of
# one request alone through the worker (no worse than the baseline run's), and the
# websocket's overhead over a raw batch of one at 1 client.
TARGET = {"input": "long", "concurrency": 32, "worker_over_raw": 0.90, "inprocess_over_raw": 0.95}
WS_PATHS = ("ws_inprocess", "ws_worker")
WS_OVERHEAD_TARGET_MS = {"ws_inprocess": 3.0, "ws_worker": 6.0}
BASELINE = RESULTS / "reference-2core.json"
PROBES = 50  # round trips per probe of the latency breakdown


# --- inputs ------------------------------------------------------------------


def read_phrases(path: Path) -> list[str]:
    """The sentences of a ``sentence<TAB>label`` file (the header line is skipped)."""
    phrases = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        sentence, _, label = line.rpartition("\t")
        if label.strip() in ("0", "1") and sentence.strip():
            phrases.append(sentence.strip())
    if not phrases:
        raise BenchError(f"no `sentence<TAB>label` lines in {path}")
    return phrases


def make_long(phrases: Sequence[str], tokenizer, tokens: int = 128) -> list[str]:
    """The phrases joined, in order, and cut at word boundaries into texts of
    at most ``tokens`` tokens (special tokens included), most of them within a
    few tokens of it."""
    tokens = min(tokens, tokenizer.model_max_length)
    room = tokens - tokenizer.num_special_tokens_to_add(pair=False)
    stream = " ".join(phrases)
    encoding = tokenizer(stream, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = encoding["offset_mapping"]
    words = encoding.word_ids()
    texts, start = [], 0
    while len(offsets) - start >= room:
        end = start + room
        while end < len(words) and end > start + 1 and words[end] == words[end - 1]:  # never cut inside a word
            end -= 1
        texts.append(stream[offsets[start][0] : offsets[end - 1][1]])
        start = end
    if not texts:  # fewer tokens than one text: one text of everything
        texts.append(stream)
    for text in texts:
        n = len(tokenizer(text)["input_ids"])
        if n > tokens:
            raise BenchError(f"a long text has {n} tokens, more than {tokens}")
    return texts


def load_inputs(data: Path, tokenizer, kinds: Sequence[str], long_tokens: int) -> dict[str, list[str]]:
    phrases = read_phrases(data)
    makers = {"short": lambda: phrases, "long": lambda: make_long(phrases, tokenizer, long_tokens)}
    unknown = sorted(set(kinds) - set(makers))
    if unknown:
        raise BenchError(f"unknown input kind(s) {', '.join(unknown)}; use short, long")
    return {kind: makers[kind]() for kind in kinds}


def raw_batches(tokenizer, texts: Sequence[str], batch_size: int) -> list[list[str]]:
    """Full batches of ``batch_size`` texts, the texts sorted by token count
    (each batch is padded as little as possible: the kindest order)."""
    lengths = {t: len(ids) for t, ids in zip(texts, tokenizer(list(texts))["input_ids"])}
    pool = list(texts) * math.ceil(batch_size / len(texts))
    pool.sort(key=lengths.__getitem__)
    return [pool[i : i + batch_size] for i in range(0, len(pool) - batch_size + 1, batch_size)]


def raw_throughput(
    tokenizer, network, texts: Sequence[str], batch_size: int, *, budget: float, max_length: int,
    monitor: CpuMonitor | None = None,
) -> tuple[float, dict]:  # fmt: skip
    """Items per second of tokenizer + model + softmax on ready-made batches,
    and the CPU used meanwhile."""
    import torch

    batches = raw_batches(tokenizer, texts, batch_size)

    def step(batch):
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            network(**encoded).logits.float().softmax(dim=-1).tolist()

    for batch in batches[:2]:  # warm-up
        step(batch)
    done, i = 0, 0
    cpu0 = monitor.snapshot() if monitor else None
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget or done == 0:
        step(batches[i % len(batches)])
        done += batch_size
        i += 1
    return done / elapsed, (monitor.usage(cpu0, monitor.snapshot()) if monitor else {})


def raw_one(tokenizer, network, max_length: int) -> Callable[[str], object]:
    """A raw batch of one: tokenizer + model + softmax on one text, in the calling thread."""
    import torch

    def step(text: str):
        encoded = tokenizer([text], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            return network(**encoded).logits.float().softmax(dim=-1).tolist()

    return step


def interleaved(calls: dict[str, Callable[[str], object]], texts: Sequence[str], rounds: int) -> dict:
    """One request alone on each path in turn, ``rounds`` times (the same text per round):
    each path's median and, per path, the median of its time minus the raw batch of one's
    in the same round. Interleaving puts every path under the same load from others, so
    the differences hold on a busy machine where separate windows would not."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(rounds):
        text = texts[i % len(texts)]
        for name, call in calls.items():
            started = time.perf_counter()
            call(text)
            times[name].append((time.perf_counter() - started) * 1000.0)
    over_raw = {
        name: percentile(sorted(t - r for t, r in zip(values, times["raw"])), 50)
        for name, values in times.items()
        if name != "raw"
    }
    return {
        "rounds": rounds,
        "p50_ms": {name: rounded(percentile(sorted(values), 50)) for name, values in times.items()},
        "over_raw_ms": {name: rounded(value) for name, value in over_raw.items()},
    }


# --- the run -----------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    import torch

    warnings: list[str] = []
    load_before = warn_if_busy(warnings)
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
        torch.set_num_interop_threads(1)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import mlservices

    mlservices.discover()
    serving_options = json.loads(args.serving_options) if args.serving_options else {}
    worker_options = json.loads(args.worker_serving_options) if args.worker_serving_options else {}
    say(f"sentiment bench: model {args.model}, {args.threads} torch thread(s), budget {args.budget:g} s per measurement")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    network = AutoModelForSequenceClassification.from_pretrained(args.model, use_safetensors=True).eval()
    max_length = min(tokenizer.model_max_length, getattr(network.config, "max_position_embeddings", 512))
    inputs = load_inputs(args.data, tokenizer, args.inputs, args.long_tokens)
    for kind, texts in inputs.items():
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        say(f"  {kind}: {len(texts)} texts, {sum(lengths) / len(lengths):.0f} tokens on average (max {max(lengths)})")

    base = {"model": str(args.model), "threads": args.threads, **serving_options}
    runtimes = {
        "inprocess_batched": mlservices.Runtime({SERVING: base}, device="cpu"),
        "inprocess_unbatched": mlservices.Runtime({SERVING: {**base, "batch_size": 1}}, device="cpu"),
    }
    for rt in runtimes.values():
        rt.load([SERVING])
    torch.set_num_threads(args.threads)  # again: loading a serving may set it too
    batcher = runtimes["inprocess_batched"].batcher(SERVING)

    worker: Worker | None = None
    processes = {"bench": os.getpid()}
    monitor = CpuMonitor(lambda: {**processes, **({"worker": worker.process.pid} if worker and worker.process else {})})
    quiet = Quiet(monitor, args.wait_quiet, args.wait_quiet_total)
    results: dict = {
        "benchmark": "sentiment",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info("torch", "transformers", "tokenizers", "celery"), "loadavg_before": load_before},
        "settings": {
            "model": str(args.model),
            "data": str(args.data),
            "threads": args.threads,
            "torch_threads": torch.get_num_threads(),
            "budget_s": args.budget,
            "warmup_s": args.warmup,
            "raw_budget_s": args.raw_budget,
            "raw_batch_sizes": args.raw_batch_sizes,
            "concurrency": args.concurrency,
            "long_tokens": args.long_tokens,
            "serving_batch_size": batcher.max_batch_size,
            "serving_batch_timeout_ms": batcher.max_wait * 1000.0,
            "serving_options": serving_options,
            "worker_serving_options": worker_options,
            "worker": None,
            "ws_concurrency": [] if args.no_websocket else args.ws_concurrency,
        },
        "inputs": {k: len(v) for k, v in inputs.items()},
        "raw": {},
        "records": [],
        "websocket": {"sites": {}, "probes": {}},
        "alone": {},
        "baseline": baseline_latencies(args.baseline),
        "warnings": warnings,
    }

    with tempfile.TemporaryDirectory(prefix="bench-sentiment-") as tmp, contextlib.ExitStack() as stack:
        for rt in runtimes.values():
            stack.callback(rt.close)
        if not args.no_worker:
            stack.enter_context(redis_db(args.redis_url, processes))
            worker = Worker(
                serving=SERVING,
                env={"SENTIMENT_MODEL": str(args.model)},
                redis_url=args.redis_url,
                threads=args.threads,
                serving_options={**serving_options, **worker_options},
                concurrency=args.worker_concurrency,
                workdir=Path(tmp),
                root=args.worker_root,
            )
            stack.callback(worker.stop)
            say(f"starting the worker: {' '.join(worker.args[2:])}")
            seconds = worker.start(timeout=args.worker_timeout, warmup=WARMUP_TEXT)
            say(f"  it answered its warm-up task after {seconds:.1f} s")
            results["settings"]["worker"] = worker.settings(seconds)

        sockets: dict[str, Sockets] = {}
        if not args.no_websocket and args.ws_concurrency:
            site_options = {"threads": args.threads, **serving_options, **worker_options}
            sockets = open_sites(args, stack, Path(tmp), worker, site_options, processes, results)
            results["websocket"]["probes"] = probes(sockets, worker)
            say("  round trips: " + ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in results["websocket"]["probes"].items()))

        for kind, texts in inputs.items():
            say(f"\n== {kind} inputs ==")
            raw = results["raw"][kind] = measure_raw(args, tokenizer, network, texts, max_length, monitor, quiet)
            for bs, tput in raw["items_per_s_by_batch_size"].items():
                busy = raw["foreign_cpu_cores_by_batch_size"][bs]
                say(f"  raw batch {bs:>3}{'':<10} {tput:8.1f} items/s" + busy_note(busy))
                if busy > BUSY_FOREIGN_CORES:
                    warn(f"{kind} raw batch {bs}: other processes used {busy:.2f} CPU cores meanwhile", warnings)
            paths: dict[str, Callable[[str], object]] = {
                name: (lambda text, rt=rt: rt.batched_run(SERVING, text)) for name, rt in runtimes.items()
            }
            if worker:
                paths["worker"] = worker.predict
            for name, clients in sockets.items():
                paths[name] = lambda text, clients=clients: clients.predict(SERVING, {"text": text})
            kind_records: list[dict] = []
            for c in args.concurrency:
                record: dict = {
                    "input": kind,
                    "concurrency": c,
                    "raw_items_per_s": raw["items_per_s"],
                    "raw_batch_size": raw["best_batch_size"],
                    "raw_cpu_ms_per_item": raw["cpu_ms_per_item"],
                }
                if not worker:
                    record.update(worker_items_per_s=None, worker_p50_ms=None, worker_p99_ms=None)
                for name in WS_PATHS:
                    record.update({f"{name}_items_per_s": None, f"{name}_p50_ms": None, f"{name}_p99_ms": None})
                disturbed = []
                for name, call in paths.items():
                    if name in WS_PATHS and c not in args.ws_concurrency:
                        continue
                    rt = runtimes.get(name)
                    window = (lambda _, b=rt.batcher(SERVING): b.records()) if rt else None

                    def measure(call=call, window=window):
                        load = closed_loop(
                            call, texts, c, budget=args.budget, warmup=args.warmup, monitor=monitor, on_window=window
                        )
                        return load, load.cpu

                    load, cpu = least_disturbed(measure, quiet, args.retries)
                    record[f"{name}_items_per_s"] = round(load.items_per_s, 2)
                    record[f"{name}_p50_ms"] = rounded(load.p50_ms)
                    record[f"{name}_p99_ms"] = rounded(load.p99_ms)
                    record[f"{name}_cpu_ms_per_item"] = cpu_ms_per_item(cpu, load.items_per_s)
                    if name not in runtimes:  # who spends it: the clients (bench), the worker, daphne, Redis
                        record[f"{name}_cpu_ms_per_item_by_process"] = cpu_ms_per_item_by_process(cpu, load.items_per_s)
                    record[f"{name}_completed"] = load.completed
                    if window:
                        record[f"{name}_mean_batch"] = mean_batch(load)
                    disturbed.append(foreign(cpu))
                    say(
                        f"  {name:<20} c={c:<3} {load.items_per_s:8.1f} items/s   "
                        f"p50 {fmt_ms(load.p50_ms)} ms  p99 {fmt_ms(load.p99_ms)} ms" + busy_note(foreign(cpu))
                    )
                    if foreign(cpu) > BUSY_FOREIGN_CORES:
                        warn(
                            f"{kind} c={c} {name}: other processes used {foreign(cpu):.2f} CPU cores during "
                            "the measurement; the machine is busy and this number is low",
                            warnings,
                        )
                record.update(foreign_cpu_cores=round(max(disturbed), 3), machine_busy=max(disturbed) > BUSY_FOREIGN_CORES)
                kind_records.append(record)
            # Raw again, after the served paths: the machine's speed drifts (it is a VM,
            # others share its host), and the higher raw number is the honest ceiling.
            recheck_raw(args, raw, tokenizer, network, texts, max_length, monitor, quiet)
            say(
                f"  raw batch {raw['best_batch_size']:>3} again   {raw['recheck_items_per_s']:8.1f} items/s"
                f"{busy_note(raw['recheck_foreign_cpu_cores'])}; raw = {raw['items_per_s']:.1f}"
            )
            if args.alone_rounds:
                calls = {"raw": raw_one(tokenizer, network, max_length), **{
                    name: call for name, call in paths.items() if name not in ("inprocess_unbatched",)
                }}  # fmt: skip
                alone = results["alone"][kind] = interleaved(calls, texts, args.alone_rounds)
                say(
                    f"  alone, interleaved x{alone['rounds']}: p50 "
                    + ", ".join(f"{k} {v:.1f}" for k, v in alone["p50_ms"].items())
                    + " ms; over raw: " + ", ".join(f"{k} {v:+.2f}" for k, v in alone["over_raw_ms"].items()) + " ms"
                )
            for record in kind_records:
                record.update(
                    raw_items_per_s=raw["items_per_s"],
                    raw_cpu_ms_per_item=raw["cpu_ms_per_item"],
                    machine_busy=record["machine_busy"] or raw["recheck_foreign_cpu_cores"] > BUSY_FOREIGN_CORES,
                )
                record.update(derived(record, raw))
                if record["concurrency"] == 1 and kind in results["alone"]:
                    record["latency_breakdown_ms"] = latency_breakdown(results["alone"][kind], results["websocket"]["probes"])
                results["records"].append(record)
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results


def measure_raw(args, tokenizer, network, texts, max_length, monitor, quiet) -> dict:
    """Raw throughput at every batch size of ``--raw-batch-sizes``; the best is *the* raw number."""
    by_size, cpus = {}, {}
    for bs in args.raw_batch_sizes:
        by_size[bs], cpus[bs] = least_disturbed(
            lambda bs=bs: raw_throughput(
                tokenizer, network, texts, bs, budget=args.raw_budget, max_length=max_length, monitor=monitor
            ),
            quiet,
            args.retries,
        )
    best = max(by_size, key=by_size.__getitem__)
    return {
        "best_batch_size": best,
        "items_per_s": round(by_size[best], 2),
        "cpu_ms_per_item": cpu_ms_per_item(cpus[best], by_size[best]),
        "single_item_ms": rounded(ms_per_item(by_size.get(1))),
        "items_per_s_by_batch_size": {str(k): round(v, 2) for k, v in by_size.items()},
        "foreign_cpu_cores_by_batch_size": {str(k): foreign(v) for k, v in cpus.items()},
    }


def recheck_raw(args, raw: dict, tokenizer, network, texts, max_length, monitor, quiet) -> None:
    """Measure the best raw batch size once more; keep the higher of the two."""
    bs = raw["best_batch_size"]
    tput, cpu = least_disturbed(
        lambda: raw_throughput(
            tokenizer, network, texts, bs, budget=args.raw_budget, max_length=max_length, monitor=monitor
        ),
        quiet,
        args.retries,
    )
    raw["recheck_items_per_s"] = round(tput, 2)
    raw["recheck_foreign_cpu_cores"] = foreign(cpu)
    if tput > raw["items_per_s"]:
        raw["items_per_s"] = round(tput, 2)
        raw["cpu_ms_per_item"] = cpu_ms_per_item(cpu, tput)


def open_sites(args, stack, tmp: Path, worker: Worker | None, options: dict, processes: dict, results: dict) -> dict:
    """Start daphne in in-process mode (and, with the worker, in celery mode, on the worker's
    Redis and database), warm each up with one prediction over a websocket, and return their
    websocket clients by path name. Everything is closed by ``stack``."""
    clients = max(args.ws_concurrency)
    common = {
        "SENTIMENT_MODEL": str(args.model),
        "MLSERVICES_CONFIG": json.dumps({SERVING: options}),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "DJANGO_MEDIA_ROOT": str(tmp / "site-media"),
    }
    sites = {"ws_inprocess": Site(
        mode="inprocess", env={**common, "DATABASE_URL": f"sqlite:///{tmp / 'site.sqlite3'}"},
        workdir=tmp, clients=clients, root=args.worker_root,
    )}  # fmt: skip
    if worker:
        sites["ws_worker"] = Site(
            mode="celery", env={**common, "DATABASE_URL": worker.env["DATABASE_URL"], "REDIS_URL": args.redis_url},
            workdir=tmp, clients=clients, root=args.worker_root,
        )  # fmt: skip
    sockets = {}
    for name, site in sites.items():
        if name == "ws_inprocess":
            site.migrate()
        started = time.monotonic()
        stack.enter_context(site)
        processes[f"daphne_{site.mode}"] = site.process.pid
        clients_of_site = sockets[name] = Sockets(site.ws_url, site.origin)
        stack.callback(clients_of_site.close)
        clients_of_site.predict(SERVING, {"text": WARMUP_TEXT}, timeout=args.worker_timeout)
        seconds = time.monotonic() - started
        say(f"daphne ({site.mode} mode) answered its first prediction over a websocket after {seconds:.1f} s")
        results["websocket"]["sites"][name] = {
            "command": " ".join(site.args[2:]),
            "mode": site.mode,
            "MLSERVICES_CONFIG": site.env["MLSERVICES_CONFIG"],
            "PREDICTIONS_PER_OWNER": site.env["PREDICTIONS_PER_OWNER"],
            "startup_s": round(seconds, 2),
        }
    return sockets


def probes(sockets: dict[str, Sockets], worker: Worker | None) -> dict:
    """Round trips that run no model, for the latency breakdown: a websocket message the
    consumer answers at once (per site), and one hop over the Redis channel layer."""
    calls = {f"{name}_ping": clients.ping_ms for name, clients in sockets.items()}
    if worker:
        calls["redis_channel_hop"] = worker.replies.hop_ms
    found = {}
    for name, call in calls.items():
        times = sorted(call() for _ in range(PROBES))
        found[name] = {"p50_ms": rounded(percentile(times, 50), 3), "p99_ms": rounded(percentile(times, 99), 3)}
    return found


def latency_breakdown(alone: dict, found: dict) -> dict:
    """Where one request alone spends its time (ms), from the interleaved rounds (``alone``:
    each path's median time above the raw batch of one of its round) and the probes."""
    over = alone["over_raw_ms"]

    def minus(a: str, b: str):
        return rounded(over[a] - over[b]) if over.get(a) is not None and over.get(b) is not None else None

    return {
        "raw_batch_of_one": alone["p50_ms"]["raw"],
        "serving_over_raw": over.get("inprocess_batched"),  # preprocess, the batcher's hand-offs, postprocess
        "websocket_and_site_over_serving": minus("ws_inprocess", "inprocess_batched"),
        "websocket_round_trip_alone": (found.get("ws_inprocess_ping") or {}).get("p50_ms"),
        "celery_and_reply_over_serving": minus("worker", "inprocess_batched"),
        "redis_channel_hop_alone": (found.get("redis_channel_hop") or {}).get("p50_ms"),
        "websocket_and_site_over_worker": minus("ws_worker", "worker"),
    }


def baseline_latencies(path: Path | None) -> dict:
    """``worker_p50_ms`` of one request alone, by input kind, in the baseline run (``--baseline``)."""
    if not path or not Path(path).exists():
        return {}
    baseline = json.loads(Path(path).read_text())
    found = {r["input"]: r.get("worker_p50_ms") for r in baseline.get("records", []) if r.get("concurrency") == 1}
    raw_one = {kind: raw.get("single_item_ms") for kind, raw in baseline.get("raw", {}).items()}
    return {"file": str(path), "worker_p50_ms_alone": found, "raw_single_item_ms": raw_one}


def derived(record: dict, raw: dict) -> dict:
    """The ratios and overheads of one record."""
    worker, batched = record["worker_items_per_s"], record["inprocess_batched_items_per_s"]
    raw_ms = ms_per_item(raw["items_per_s"])
    worker_cpu, raw_cpu = record.get("worker_cpu_ms_per_item"), raw["cpu_ms_per_item"]
    return {
        "worker_over_raw": ratio(worker, raw["items_per_s"]),
        "inprocess_over_raw": ratio(batched, raw["items_per_s"]),
        "batched_over_unbatched": ratio(batched, record["inprocess_unbatched_items_per_s"]),
        # Machine time per request above the raw loop's time per item (wall clock, all cores).
        "worker_overhead_ms_per_item": rounded(ms_per_item(worker) - raw_ms if worker else None),
        "inprocess_overhead_ms_per_item": rounded(ms_per_item(batched) - raw_ms if batched else None),
        # The same in CPU time (bench + worker + Redis), which others' load barely moves.
        "worker_overhead_cpu_ms_per_item": rounded(worker_cpu - raw_cpu if worker_cpu and raw_cpu else None),
        # A request alone (concurrency 1): its median latency above a raw batch of one.
        **{
            f"{path}_latency_overhead_ms": rounded(
                record[f"{path}_p50_ms"] - raw["single_item_ms"]
                if record["concurrency"] == 1 and record.get(f"{path}_p50_ms") and raw["single_item_ms"]
                else None
            )
            for path in ("worker", "inprocess_batched", *WS_PATHS)
        },
    }


COLUMNS = [  # (title, key, width, format)
    ("input", "input", 6, "{}"),
    ("conc", "concurrency", 4, "{}"),
    ("raw", "raw_items_per_s", 7, "{:.1f}"),
    ("batched", "inprocess_batched_items_per_s", 8, "{:.1f}"),
    ("unbatched", "inprocess_unbatched_items_per_s", 9, "{:.1f}"),
    ("worker", "worker_items_per_s", 7, "{:.1f}"),
    ("p50 ms", "worker_p50_ms", 7, "{:.1f}"),
    ("p99 ms", "worker_p99_ms", 7, "{:.1f}"),
    ("worker/raw", "worker_over_raw", 10, "{:.2f}"),
    ("inproc/raw", "inprocess_over_raw", 10, "{:.2f}"),
    ("batch/unb", "batched_over_unbatched", 9, "{:.2f}"),
    ("ovh ms", "worker_overhead_ms_per_item", 7, "{:.2f}"),
    ("ovh cpu ms", "worker_overhead_cpu_ms_per_item", 10, "{:.2f}"),
]
LEGEND = (
    "items/s; raw: tokenizer + model at its best batch size; worker p50/p99: latency through the worker;\n"
    "ovh ms = 1000/worker - 1000/raw (wall time per request above raw); ovh cpu ms: the same in CPU time;\n"
    f"busy!: other processes used more than {BUSY_FOREIGN_CORES} cores during a measurement of that row"
)


WS_COLUMNS = [  # (title, key, width, format)
    ("input", "input", 6, "{}"),
    ("conc", "concurrency", 4, "{}"),
    ("raw 1 ms", "raw_single_item_ms", 8, "{:.1f}"),
    ("inproc p50", "inprocess_batched_p50_ms", 10, "{:.1f}"),
    ("ws-inp/s", "ws_inprocess_items_per_s", 8, "{:.1f}"),
    ("p50 ms", "ws_inprocess_p50_ms", 7, "{:.1f}"),
    ("p99 ms", "ws_inprocess_p99_ms", 7, "{:.1f}"),
    ("ovh ms", "ws_inprocess_latency_overhead_ms", 7, "{:.2f}"),
    ("worker p50", "worker_p50_ms", 10, "{:.1f}"),
    ("ws-wrk/s", "ws_worker_items_per_s", 8, "{:.1f}"),
    ("p50 ms", "ws_worker_p50_ms", 7, "{:.1f}"),
    ("p99 ms", "ws_worker_p99_ms", 7, "{:.1f}"),
    ("ovh ms", "ws_worker_latency_overhead_ms", 7, "{:.2f}"),
]
WS_LEGEND = (
    "the site over real websockets: ws-inp: daphne in in-process mode; ws-wrk: daphne in celery mode + the worker;\n"
    "raw 1 ms: a raw batch of one; ovh ms (1 client): websocket p50 - raw batch of one"
)


def websocket_report(results: dict) -> list[str]:
    """The websocket table and, for one client, where the time goes."""
    records = [
        {**r, "raw_single_item_ms": results["raw"][r["input"]]["single_item_ms"]}
        for r in results["records"]
        if any(r.get(f"{path}_p50_ms") is not None for path in WS_PATHS)
    ]
    if not records:
        return []
    texts = [table(records, WS_COLUMNS, WS_LEGEND)]
    for r in records:
        parts = r.get("latency_breakdown_ms")
        if parts:
            shown = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in parts.items() if v is not None)
            texts.append(f"{r['input']}@1, where the time goes (p50, ms): {shown}")
    return texts


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def verdict(results: dict) -> list[str]:
    lines = []
    for kind, alone in results.get("alone", {}).items():
        for path, limit in WS_OVERHEAD_TARGET_MS.items():
            overhead = alone["over_raw_ms"].get(path)
            if overhead is not None:
                lines.append(
                    f"target {kind} alone: {path} = raw batch of one + {overhead:.2f} ms (median of "
                    f"{alone['rounds']} interleaved rounds; needs <= {limit:g} ms, ratio {overhead / limit:.2f}): "
                    f"{met(overhead <= limit)}"
                )
    baseline = results.get("baseline", {}).get("worker_p50_ms_alone", {})
    for r in results["records"]:
        busy = " (the machine was busy)" if r.get("machine_busy") else ""
        if r["input"] == TARGET["input"] and r["concurrency"] == TARGET["concurrency"]:
            for ratio_key in ("worker_over_raw", "inprocess_over_raw"):
                if r.get(ratio_key):
                    lines.append(
                        f"target {r['input']}@{r['concurrency']}: {ratio_key.replace('_over_', '/')} = {r[ratio_key]:.2f} "
                        f"(needs >= {TARGET[ratio_key]}; {r[ratio_key] / TARGET[ratio_key]:.2f} of it): "
                        f"{met(r[ratio_key] >= TARGET[ratio_key])}{busy}"
                    )
        if r["concurrency"] == 1 and r.get("worker_p50_ms") and baseline.get(r["input"]):
            before = baseline[r["input"]]
            lines.append(
                f"target {r['input']}@1: worker p50 = {r['worker_p50_ms']:.1f} ms, baseline {before:.1f} ms "
                f"(ratio {r['worker_p50_ms'] / before:.2f}, needs <= 1): {met(r['worker_p50_ms'] <= before)}{busy}"
            )
            raw_before = results["baseline"].get("raw_single_item_ms", {}).get(r["input"])
            alone = results.get("alone", {}).get(r["input"])
            if raw_before and alone and alone["over_raw_ms"].get("worker") is not None:
                # Above a raw batch of one of the same run (interleaved): a slower machine cancels out.
                lines.append(
                    f"  (above a raw batch of one: {alone['over_raw_ms']['worker']:.1f} ms now, interleaved, "
                    f"{before - raw_before:.1f} ms in the baseline; raw batch of one "
                    f"{alone['p50_ms']['raw']:.1f} ms now, {raw_before:.1f} ms then)"
                )
        if not r["worker_over_raw"]:
            continue
        if r["input"] == "short":
            text = (
                f"short@{r['concurrency']}: worker/raw = {r['worker_over_raw']:.2f}; per-request overhead "
                f"{r['worker_overhead_ms_per_item']:.2f} ms wall"
            )
            if r.get("worker_overhead_cpu_ms_per_item") is not None:
                text += f", {r['worker_overhead_cpu_ms_per_item']:.2f} ms CPU"
            if r.get("worker_latency_overhead_ms") is not None:
                text += (
                    f"; alone: p50 {r['worker_p50_ms']:.1f} ms, "
                    f"{r['worker_latency_overhead_ms']:.1f} ms above a raw batch of one"
                )
            lines.append(text)
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(prog="python -m bench.sentiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(os.environ.get("SENTIMENT_MODEL") or DEFAULT_MODEL))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="sentence<TAB>label file")
    p.add_argument("--inputs", type=lambda s: s.split(","), default=["short", "long"])
    p.add_argument("--long-tokens", type=int, default=128, help="tokens per long text (default 128)")
    p.add_argument("--concurrency", type=ints, default=[1, 8, 32], help="closed-loop clients, e.g. 1,8,32")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads, everywhere")
    p.add_argument("--budget", type=float, default=8.0, help="seconds measured per path and concurrency")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds run unmeasured before each measurement")
    p.add_argument("--wait-quiet", type=float, default=10.0, help="seconds to wait, before a measurement, for other processes to calm down")
    p.add_argument("--wait-quiet-total", type=float, default=120.0, help="seconds of such waiting in the whole run, at most")
    p.add_argument("--retries", type=int, default=1, help="times a measurement disturbed by other processes is redone")
    p.add_argument("--raw-budget", type=float, default=3.0, help="seconds per raw batch size")
    p.add_argument("--raw-batch-sizes", type=ints, default=[1, 8, 16, 32, 64])
    p.add_argument("--serving-options", default="", help='JSON merged into the serving\'s options, e.g. \'{"batch_size": 32}\'')
    p.add_argument(
        "--worker-serving-options", default="",
        help="JSON merged over the serving options of the worker only (to try a worker configuration)",
    )  # fmt: skip
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL), help="its db is flushed")
    p.add_argument("--no-worker", action="store_true", help="skip the Celery worker (no Redis needed)")
    p.add_argument("--worker-concurrency", type=int, default=32, help="the worker's -c")
    p.add_argument("--worker-root", type=Path, default=ROOT, help="the project the worker runs from (to try a patch)")
    p.add_argument("--worker-timeout", type=float, default=300, help="seconds for the worker to answer its first task")
    p.add_argument(
        "--ws-concurrency", type=ints, default=None,
        help="websocket clients, among --concurrency (default: its smallest and largest)",
    )  # fmt: skip
    p.add_argument(
        "--alone-rounds", type=int, default=60,
        help="rounds of one request alone on every path in turn, for the overheads over a raw batch of one (0: skip)",
    )  # fmt: skip
    p.add_argument("--no-websocket", action="store_true", help="skip the site over websockets: (e) and (f)")
    p.add_argument(
        "--baseline", type=Path, default=BASELINE,
        help="a result JSON whose worker p50 at 1 client is the latency target (default: the committed reference)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/sentiment-<time>.json)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    args = p.parse_args(argv)
    if not args.model.exists():
        p.error(f"no model at {args.model}; pass --model or set SENTIMENT_MODEL")
    if not args.data.exists():
        p.error(f"no data at {args.data}; pass --data")
    if args.ws_concurrency is None:
        args.ws_concurrency = sorted({min(args.concurrency), max(args.concurrency)})
    outside = sorted(set(args.ws_concurrency) - set(args.concurrency))
    if outside:
        p.error(f"--ws-concurrency {outside} not in --concurrency {args.concurrency}; pick among those")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread pools are sized when torch / tokenizers start: say it before importing them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MLSERVICES_OFFLINE", "1")
    return run_and_report(run, args, "sentiment", COLUMNS, LEGEND, verdict, websocket_report)

if __name__ == "__main__":
    sys.exit(main())
