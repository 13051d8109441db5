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
    Redis channel layer, as the site's websocket consumer does.

for N in ``--concurrency`` (1, 8, 32). It prints a table with the ratios
served/raw and batched/unbatched and writes bench/results/<name>.json: one
record per input kind and concurrency (see RECORD_KEYS and bench/README.md).

Run it from the project root::

    .venv/bin/python -m bench.sentiment            # or: make bench
    .venv/bin/python -m bench.sentiment --help

It needs Redis (``--redis-url``, default db 14, which it flushes) unless
``--no-worker``. Every measurement has a time budget (``--budget`` seconds
after ``--warmup`` seconds), so a run takes a few minutes whatever the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/sentiment.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "sentiment-minilm-sst2"
DEFAULT_DATA = SHARED / "data" / "text" / "sst2_dev.tsv"
RESULTS = ROOT / "bench" / "results"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
SERVING = "sentiment"
QUEUE = "sentiment"
TASK = "jobs.predict"
ANSWER_TIMEOUT = 120  # seconds a client waits for one answer of the running worker

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
TARGET = {"input": "long", "concurrency": 32, "worker_over_raw": 0.85}
BUSY_FOREIGN_CORES = 0.15  # other processes using more than this (in cores) during a measurement
BUSY_LOAD_PER_CORE = 0.5  # load average per core, before the run, above which we warn


class BenchError(RuntimeError):
    pass


def warn(message: str, warnings: list[str] | None = None) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
    if warnings is not None:
        warnings.append(message)


def say(message: str) -> None:
    print(message, flush=True)


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


# --- CPU accounting: is someone else using the machine? ------------------------


def _proc_cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def _system_ticks() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


class CpuMonitor:
    """CPU used during a window by our processes (``processes()``: name -> pid
    of the bench, the worker, Redis) and by everything else, in cores. Others
    using more than a little means the numbers are suspect."""

    def __init__(self, processes: Callable[[], dict[str, int]]):
        self.processes = processes
        self.available = Path("/proc/stat").exists()
        self.hz = os.sysconf("SC_CLK_TCK") if self.available else 100

    def snapshot(self):
        if not self.available:
            return None
        busy, steal = _system_ticks()
        return time.monotonic(), busy, steal, {name: _proc_cpu_ticks(pid) for name, pid in self.processes().items()}

    def usage(self, before, after) -> dict:
        if before is None or after is None:
            return {"foreign_cpu_cores": None, "steal_cpu_cores": None, "own_cpu_cores": None, "by_process": {}}
        seconds = max(after[0] - before[0], 1e-9)
        to_cores = lambda ticks: round(ticks / self.hz / seconds, 3)  # noqa: E731
        by_process = {name: after[3][name] - before[3].get(name, after[3][name]) for name in after[3]}
        own = sum(by_process.values())
        return {
            "foreign_cpu_cores": max(0.0, to_cores(after[1] - before[1] - own)),
            "steal_cpu_cores": to_cores(after[2] - before[2]),
            "own_cpu_cores": to_cores(own),
            "by_process": {name: to_cores(ticks) for name, ticks in by_process.items()},
        }


# --- measurements ------------------------------------------------------------


class Quiet:
    """Before a measurement, waits for other processes to calm down: at most
    ``per_wait`` seconds each time and ``total`` seconds in the whole run, so
    a busy machine makes the run noisier (and says so), not endless."""

    def __init__(self, monitor: CpuMonitor, per_wait: float, total: float, threshold: float = BUSY_FOREIGN_CORES):
        self.monitor = monitor
        self.per_wait = per_wait
        self.left = total
        self.threshold = threshold

    def wait(self) -> None:
        started = time.monotonic()
        deadline = started + min(self.per_wait, self.left)
        while self.monitor.available and time.monotonic() < deadline:
            before = self.monitor.snapshot()
            time.sleep(0.5)  # a sampling window, not a readiness wait
            if self.monitor.usage(before, self.monitor.snapshot())["foreign_cpu_cores"] <= self.threshold:
                break
        self.left = max(0.0, self.left - (time.monotonic() - started))


def foreign(cpu: dict) -> float:
    return cpu.get("foreign_cpu_cores") or 0.0


def least_disturbed(measure: Callable[[], tuple], quiet: Quiet | None, retries: int) -> tuple:
    """``measure() -> (value, cpu)``, redone up to ``retries`` times while other
    processes were busy during it; the least disturbed attempt is kept."""
    best = None
    for attempt in range(1 + retries):
        if quiet:
            if attempt and quiet.left <= 0:
                break
            quiet.wait()
        value, cpu = measure()
        if best is None or foreign(cpu) < foreign(best[1]):
            best = (value, cpu)
        if foreign(best[1]) <= BUSY_FOREIGN_CORES:
            break
    return best


def cpu_ms_per_item(cpu: dict, items_per_s: float) -> float | None:
    """CPU time (bench + worker + Redis) spent per item: immune to other
    processes' load, unlike throughput."""
    own = cpu.get("own_cpu_cores")
    return round(own * 1000.0 / items_per_s, 2) if own and items_per_s else None


def cpu_ms_per_item_by_process(cpu: dict, items_per_s: float) -> dict:
    return {name: round(cores * 1000.0 / items_per_s, 2) for name, cores in cpu.get("by_process", {}).items()} if items_per_s else {}


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclasses.dataclass
class Load:
    items_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    completed: int
    seconds: float
    cpu: dict
    extra: dict = dataclasses.field(default_factory=dict)


def closed_loop(
    call: Callable[[str], object],
    inputs: Sequence[str],
    concurrency: int,
    *,
    budget: float,
    warmup: float,
    monitor: CpuMonitor | None = None,
    on_window: Callable[[str], object] | None = None,
) -> Load:
    """``concurrency`` client threads, each sending its next input as soon as
    the previous answer arrives. Runs ``warmup`` seconds unmeasured, then
    measures the requests that finish within the next ``budget`` seconds."""
    stop = threading.Event()
    samples: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        k = i * len(inputs) // concurrency  # clients start at different places
        while not stop.is_set():
            item = inputs[k % len(inputs)]
            k += 1
            started = time.perf_counter()
            try:
                call(item)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                stop.set()
                return
            samples[i].append((started, time.perf_counter()))

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop.wait(warmup)
    marks = {}
    if on_window:
        marks["before"] = on_window("start")
    cpu0 = monitor.snapshot() if monitor else None
    t0 = time.perf_counter()
    stop.wait(budget)  # the measurement window itself, not a readiness wait
    t1 = time.perf_counter()
    cpu1 = monitor.snapshot() if monitor else None
    if on_window:
        marks["after"] = on_window("end")
    stop.set()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise BenchError(f"a client failed: {type(errors[0]).__name__}: {errors[0]}") from errors[0]
    if any(t.is_alive() for t in threads):
        raise BenchError("a client did not finish its last request within 120 s")
    done = [(s, e) for per in samples for (s, e) in per if t0 <= e <= t1]
    inside = sorted((e - s) * 1000.0 for s, e in done if s >= t0)
    seconds = t1 - t0
    return Load(
        items_per_s=completion_rate([e for _, e in done], seconds),
        p50_ms=percentile(inside, 50),
        p99_ms=percentile(inside, 99),
        mean_ms=(sum(inside) / len(inside)) if inside else None,
        completed=len(done),
        seconds=seconds,
        cpu=monitor.usage(cpu0, cpu1) if monitor else {},
        extra=marks,
    )


def completion_rate(ends: Sequence[float], seconds: float) -> float:
    """Items per second: the least-squares slope of the number of finished
    requests over time. With batching, requests finish in bursts (16 at a
    time every ~0.3 s for long texts), so a plain count over a fixed window is
    off by up to a burst depending on where the window falls; the slope is not."""
    xs = sorted(ends)
    n = len(xs)
    mean_x = sum(xs) / n if n else 0.0
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if n < 10 or sxx <= 0:
        return n / seconds
    mean_y = (n + 1) / 2.0
    return sum((x - mean_x) * (y - mean_y) for y, x in enumerate(xs, start=1)) / sxx


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


# --- the Celery worker -------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS"))}
    env.update({"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "MLSERVICES_OFFLINE": "1"})
    env.update(extra)
    return env


class Worker:
    """A ``celery -A webapp worker`` subprocess on its own Redis db and SQLite file."""

    def __init__(
        self,
        *,
        model: Path,
        redis_url: str,
        threads: int,
        serving_options: dict,
        concurrency: int,
        workdir: Path,
        root: Path = ROOT,
    ):
        self.redis_url = redis_url
        self.root = root
        self.log_path = workdir / "worker.log"
        config = {SERVING: {"threads": threads, **serving_options}}
        self.env = child_env(
            REDIS_URL=redis_url,
            SENTIMENT_MODEL=str(model),
            DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
            MLSERVICES_CONFIG=json.dumps(config),
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
        )
        self.args = [
            sys.executable, "-m", "celery", "-A", "webapp", "worker",
            "-P", "threads", "-c", str(concurrency), "-Q", QUEUE,
            "--without-gossip", "--without-mingle",
            "-n", f"bench-{os.getpid()}@%h", "-l", "warning",
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.app = None
        self.replies: Replies | None = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float) -> float:
        """Migrate, start the worker, and wait until it answers a task. Returns the seconds it took."""
        from celery import Celery

        started = time.monotonic()
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=self.root, env=self.env, capture_output=True, text=True,
        )  # fmt: skip
        if migrate.returncode:
            raise BenchError(f"manage.py migrate failed:\n{migrate.stdout[-2000:]}{migrate.stderr[-2000:]}")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        # A client app of its own: the bench needs no Django settings to send a task by name.
        # No result backend: jobs.predict stores no result; its answer comes on the reply channel.
        self.app = Celery("bench-client", broker=self.redis_url)
        self.app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
        self.replies = Replies(self.redis_url)
        self.wait_ready(started + timeout)
        return time.monotonic() - started

    def wait_ready(self, deadline: float) -> None:
        """Send one warm-up task and wait for its answer until ``deadline``."""
        request_id, answer = self.send("The worker is warming up.")
        try:
            while True:
                if self.process.poll() is not None:
                    raise BenchError(f"the worker exited with {self.process.returncode}:\n{self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"the worker did not answer its warm-up task in time:\n{self.log_tail()}")
                try:
                    message = answer.result(timeout=min(1.0, left))
                except concurrent.futures.TimeoutError:
                    continue
                check_answer(message)
                return
        finally:
            self.replies.forget(request_id)

    def send(self, text: str) -> tuple[int, concurrent.futures.Future]:
        """Send ``jobs.predict`` for ``text``, as the site does; (its request id, the future of its answer)."""
        request_id, answer = self.replies.expect()
        try:
            self.app.send_task(TASK, args=(SERVING, text, self.replies.channel, request_id), queue=QUEUE)
        except BaseException:
            self.replies.forget(request_id)
            raise
        return request_id, answer

    def predict(self, text: str) -> dict:
        request_id, answer = self.send(text)
        try:
            return check_answer(answer.result(timeout=ANSWER_TIMEOUT))
        except concurrent.futures.TimeoutError:
            message = f"no answer to request {request_id} within {ANSWER_TIMEOUT} s"
            raise BenchError(f"{message}:\n{self.log_tail()}") from None
        finally:
            self.replies.forget(request_id)

    def stop(self) -> None:
        if self.replies is not None:
            self.replies.close()
        if self.app is not None:
            self.app.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Replies:
    """One reply channel on the worker's channel layer (``RedisChannelLayer`` on
    the same Redis, default prefix), like a websocket of the site: an asyncio
    loop in a thread of its own receives every answer and resolves the future
    of its request id, so the client threads simply block on their future."""

    def __init__(self, redis_url: str):
        from channels_redis.core import RedisChannelLayer

        # The worker's layer (webapp/settings.py: same Redis, default prefix), but with a socket
        # timeout longer than the layer's blocking pop: redis-py 8 defaults to 5 s, as long as
        # that pop, so an idle receive() fails with TimeoutError (django/channels_redis#422).
        host = {"address": redis_url, "socket_timeout": RedisChannelLayer.brpop_timeout + 10}
        self.layer = RedisChannelLayer(hosts=[host])
        self.lock = threading.Lock()
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.ids = itertools.count()
        self.error: BaseException | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="replies", daemon=True)
        self.thread.start()
        self.channel, self.receiving = asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    async def _open(self) -> tuple[str, asyncio.Task]:
        channel = await self.layer.new_channel()
        return channel, asyncio.create_task(self._receive(channel))

    async def _receive(self, channel: str) -> None:
        try:
            while True:
                message = await self.layer.receive(channel)
                with self.lock:
                    answer = self.pending.pop(message.get("request_id"), None)
                if answer is not None:  # else its client has given up on it
                    answer.set_result(message)
        except Exception as exc:  # Redis is away: fail every waiting client now, not after a timeout
            with self.lock:
                self.error = exc
                waiting, self.pending = list(self.pending.values()), {}
            for answer in waiting:
                answer.set_exception(BenchError(f"receiving answers on {channel} failed: {exc!r}"))

    def expect(self) -> tuple[int, concurrent.futures.Future]:
        """A new request id and the future its answer will resolve."""
        answer: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            if self.error is not None:
                raise BenchError(f"receiving answers on {self.channel} failed: {self.error!r}")
            request_id = next(self.ids)
            self.pending[request_id] = answer
        return request_id, answer

    def forget(self, request_id: int) -> None:
        with self.lock:
            self.pending.pop(request_id, None)

    def close(self) -> None:
        async def closing() -> None:
            self.receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.receiving
            await self.layer.close_pools()

        try:
            asyncio.run_coroutine_threadsafe(closing(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            if not self.thread.is_alive():
                self.loop.close()


def check_answer(message: dict) -> dict:
    """The result of a ``prediction`` event; anything else (``prediction.error``) fails the bench."""
    if message.get("type") != "prediction" or "result" not in message:
        raise BenchError(f"the worker answered {message!r}")
    return message["result"]


def redis_pid(client) -> int | None:
    try:
        return int(client.info("server")["process_id"])
    except Exception:  # noqa: BLE001 - only used to account for CPU
        return None


# --- the run -----------------------------------------------------------------


def machine_info() -> dict:
    model_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    import celery
    import tokenizers
    import torch
    import transformers

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model_name,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "celery": celery.__version__,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ms_per_item(items_per_s: float | None) -> float | None:
    return 1000.0 / items_per_s if items_per_s else None


def run(args: argparse.Namespace) -> dict:
    import torch

    warnings: list[str] = []
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpus = os.cpu_count() or 1
    if load_before and load_before[0] > BUSY_LOAD_PER_CORE * cpus:
        warn(
            f"the machine is busy before the run: load average {load_before[0]:.2f} on {cpus} CPUs; "
            "the numbers may be low and noisy (see `top`)",
            warnings,
        )
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
        torch.set_num_interop_threads(1)

    import mlservices
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

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
        "machine": {**machine_info(), "loadavg_before": load_before},
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
        },
        "inputs": {k: len(v) for k, v in inputs.items()},
        "raw": {},
        "records": [],
        "warnings": warnings,
    }

    with tempfile.TemporaryDirectory(prefix="bench-sentiment-") as tmp, contextlib.ExitStack() as stack:
        for rt in runtimes.values():
            stack.callback(rt.close)
        if not args.no_worker:
            import redis

            redis_client = redis.Redis.from_url(args.redis_url)
            try:
                redis_client.ping()
            except redis.RedisError as exc:
                raise BenchError(f"no Redis at {args.redis_url} ({exc}); start it, or pass --no-worker") from exc
            redis_client.flushdb()  # our db only
            stack.callback(redis_client.flushdb)
            if pid := redis_pid(redis_client):
                processes["redis"] = pid
            worker = Worker(
                model=args.model,
                redis_url=args.redis_url,
                threads=args.threads,
                serving_options={**serving_options, **worker_options},
                concurrency=args.worker_concurrency,
                workdir=Path(tmp),
                root=args.worker_root,
            )
            stack.callback(worker.stop)
            say(f"starting the worker: {' '.join(worker.args[2:])}")
            seconds = worker.start(timeout=args.worker_timeout)
            say(f"  it answered its warm-up task after {seconds:.1f} s")
            results["settings"]["worker"] = {
                "command": " ".join(worker.args[2:]),
                "root": str(args.worker_root),
                "MLSERVICES_CONFIG": worker.env["MLSERVICES_CONFIG"],
                "OMP_NUM_THREADS": worker.env["OMP_NUM_THREADS"],
                "startup_s": round(seconds, 2),
            }

        for kind, texts in inputs.items():
            say(f"\n== {kind} inputs ==")
            raw = results["raw"][kind] = measure_raw(args, tokenizer, network, texts, max_length, monitor, quiet)
            for bs, tput in raw["items_per_s_by_batch_size"].items():
                busy = raw["foreign_cpu_cores_by_batch_size"][bs]
                say(f"  raw batch {bs:>3}{'':<10} {tput:8.1f} items/s" + _busy_note(busy))
                if busy > BUSY_FOREIGN_CORES:
                    warn(f"{kind} raw batch {bs}: other processes used {busy:.2f} CPU cores meanwhile", warnings)
            paths: dict[str, Callable[[str], object]] = {
                name: (lambda text, rt=rt: rt.batched_run(SERVING, text)) for name, rt in runtimes.items()
            }
            if worker:
                paths["worker"] = worker.predict
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
                disturbed = []
                for name, call in paths.items():
                    rt = runtimes.get(name)
                    window = (lambda _, b=rt.batcher(SERVING): b.records()) if rt else None

                    def measure(call=call, window=window):
                        load = closed_loop(
                            call, texts, c, budget=args.budget, warmup=args.warmup, monitor=monitor, on_window=window
                        )
                        return load, load.cpu

                    load, cpu = least_disturbed(measure, quiet, args.retries)
                    record[f"{name}_items_per_s"] = round(load.items_per_s, 2)
                    record[f"{name}_p50_ms"] = _round(load.p50_ms)
                    record[f"{name}_p99_ms"] = _round(load.p99_ms)
                    record[f"{name}_cpu_ms_per_item"] = cpu_ms_per_item(cpu, load.items_per_s)
                    if name == "worker":  # who spends it: the clients (bench), the worker, Redis
                        record["worker_cpu_ms_per_item_by_process"] = cpu_ms_per_item_by_process(cpu, load.items_per_s)
                    record[f"{name}_completed"] = load.completed
                    if window:
                        seen = {id(r) for r in load.extra["before"]}
                        sizes = [r.size for r in load.extra["after"] if id(r) not in seen]
                        record[f"{name}_mean_batch"] = _round(sum(sizes) / len(sizes) if sizes else None)
                    disturbed.append(foreign(cpu))
                    say(
                        f"  {name:<20} c={c:<3} {load.items_per_s:8.1f} items/s   "
                        f"p50 {_fmt(load.p50_ms)} ms  p99 {_fmt(load.p99_ms)} ms" + _busy_note(foreign(cpu))
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
                f"{_busy_note(raw['recheck_foreign_cpu_cores'])}; raw = {raw['items_per_s']:.1f}"
            )
            for record in kind_records:
                record.update(
                    raw_items_per_s=raw["items_per_s"],
                    raw_cpu_ms_per_item=raw["cpu_ms_per_item"],
                    machine_busy=record["machine_busy"] or raw["recheck_foreign_cpu_cores"] > BUSY_FOREIGN_CORES,
                )
                record.update(derived(record, raw))
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
        "single_item_ms": _round(ms_per_item(by_size.get(1))),
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
        "worker_overhead_ms_per_item": _round(ms_per_item(worker) - raw_ms if worker else None),
        "inprocess_overhead_ms_per_item": _round(ms_per_item(batched) - raw_ms if batched else None),
        # The same in CPU time (bench + worker + Redis), which others' load barely moves.
        "worker_overhead_cpu_ms_per_item": _round(worker_cpu - raw_cpu if worker_cpu and raw_cpu else None),
        # A request alone (concurrency 1): its median latency above a raw batch of one.
        "worker_latency_overhead_ms": _round(
            record["worker_p50_ms"] - raw["single_item_ms"]
            if record["concurrency"] == 1 and record["worker_p50_ms"] and raw["single_item_ms"]
            else None
        ),
    }


def _busy_note(cores: float) -> str:
    return f"   (others used {cores:.2f} cores)" if cores > 0.05 else ""


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None) -> str:
    return f"{value:7.1f}" if value is not None else "      -"


def table(results: dict) -> str:
    columns = [  # (title, key, width, format)
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
    lines = [" ".join(f"{title:>{w}}" if i > 0 else f"{title:<{w}}" for i, (title, _, w, _) in enumerate(columns))]
    lines.append("-" * len(lines[0]))
    for r in results["records"]:
        cells = []
        for i, (_, key, w, fmt) in enumerate(columns):
            v = r.get(key)
            text = fmt.format(v) if v is not None else "-"
            cells.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
        lines.append(" ".join(cells) + ("  busy!" if r.get("machine_busy") else ""))
    lines.append(
        "items/s; raw: tokenizer + model at its best batch size; worker p50/p99: latency through the worker;\n"
        "ovh ms = 1000/worker - 1000/raw (wall time per request above raw); ovh cpu ms: the same in CPU time;\n"
        "busy!: other processes used more than "
        f"{BUSY_FOREIGN_CORES} cores during a measurement of that row"
    )
    return "\n".join(lines)


def verdict(results: dict) -> list[str]:
    lines = []
    for r in results["records"]:
        if not r["worker_over_raw"]:
            continue
        if r["input"] == TARGET["input"] and r["concurrency"] == TARGET["concurrency"]:
            ok = r["worker_over_raw"] >= TARGET["worker_over_raw"]
            lines.append(
                f"target {TARGET['input']}@{TARGET['concurrency']}: worker/raw = {r['worker_over_raw']:.2f} "
                f"(needs >= {TARGET['worker_over_raw']}): {'MET' if ok else 'NOT MET'}"
                + (" (the machine was busy)" if r.get("machine_busy") else "")
            )
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
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/sentiment-<time>.json)")
    p.add_argument("--check", action="store_true", help="exit 1 when the long@32 target is not met")
    args = p.parse_args(argv)
    if not args.model.exists():
        p.error(f"no model at {args.model}; pass --model or set SENTIMENT_MODEL")
    if not args.data.exists():
        p.error(f"no data at {args.data}; pass --data")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread pools are sized when torch / tokenizers start: say it before importing them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MLSERVICES_OFFLINE", "1")
    try:
        results = run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    out = args.out or RESULTS / f"sentiment-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    say("\n" + table(results))
    lines = verdict(results)
    for line in lines:
        say(line)
    for w in results["warnings"]:
        say(f"warning: {w}")
    say(f"results: {out}")
    if args.check and any("NOT MET" in line for line in lines):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
