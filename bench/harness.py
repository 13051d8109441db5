"""What every serving benchmark shares: closed-loop clients, percentiles, CPU
accounting, the Celery worker subprocess, its reply channel, the table, the JSON.

``bench/sentiment.py`` and ``bench/background_removal.py`` are built on it::

    monitor = CpuMonitor(lambda: {"bench": os.getpid()})
    load = closed_loop(lambda x: runtime.batched_run("sentiment", x), texts, 8,
                       budget=8, warmup=1.5, monitor=monitor)
    load.items_per_s, load.p50_ms, load.p99_ms, load.cpu["foreign_cpu_cores"]

    worker = Worker(serving="sentiment", env={"SENTIMENT_MODEL": "..."}, redis_url=..., threads=2,
                    serving_options={}, concurrency=32, workdir=tmp)
    worker.start(timeout=300, warmup="The worker is warming up.")
    worker.predict("I loved it")        # jobs.predict on the serving's queue, answered on a reply channel
    worker.stop()

Every measurement has a time budget, so a run takes as long whatever the
machine; other processes' CPU use during a measurement is counted from
``/proc`` and reported (``foreign_cpu_cores``), and a disturbed measurement is
redone (``least_disturbed``).
"""

from __future__ import annotations

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
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench" / "results"
TASK = "jobs.predict"
ANSWER_TIMEOUT = 120  # seconds a client waits for one answer of the running worker
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


def warn_if_busy(warnings: list[str]) -> tuple[float, float, float] | None:
    """The load average before the run, with a warning when the machine is busy already."""
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpus = os.cpu_count() or 1
    if load_before and load_before[0] > BUSY_LOAD_PER_CORE * cpus:
        warn(
            f"the machine is busy before the run: load average {load_before[0]:.2f} on {cpus} CPUs; "
            "the numbers may be low and noisy (see `top`)",
            warnings,
        )
    return load_before


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


def busy_note(cores: float) -> str:
    return f"   (others used {cores:.2f} cores)" if cores > 0.05 else ""


# --- closed-loop clients -------------------------------------------------------


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
    call: Callable[[object], object],
    inputs: Sequence,
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


def mean_batch(load: Load) -> float | None:
    """The mean size of the batches a batcher ran during ``load``'s window
    (``on_window`` returned its ``records()`` before and after)."""
    seen = {id(r) for r in load.extra["before"]}
    sizes = [r.size for r in load.extra["after"] if id(r) not in seen]
    return round(sum(sizes) / len(sizes), 2) if sizes else None


# --- the Celery worker -------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS"))}
    env.update({"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "MLSERVICES_OFFLINE": "1"})
    env.update(extra)
    return env


class Worker:
    """A ``celery -A webapp worker`` subprocess for one serving (its queue has
    the serving's name), on its own Redis db, SQLite file and media folder.
    ``env`` adds the serving's settings (e.g. ``SENTIMENT_MODEL``); the serving
    gets ``{"threads": threads, **serving_options}`` through ``MLSERVICES_CONFIG``."""

    def __init__(
        self,
        *,
        serving: str,
        env: dict[str, str],
        redis_url: str,
        threads: int,
        serving_options: dict,
        concurrency: int,
        workdir: Path,
        root: Path = ROOT,
    ):
        self.serving = serving
        self.redis_url = redis_url
        self.root = root
        self.log_path = workdir / "worker.log"
        config = {serving: {"threads": threads, **serving_options}}
        self.env = child_env(
            REDIS_URL=redis_url,
            DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
            DJANGO_MEDIA_ROOT=str(workdir / "media"),
            MLSERVICES_CONFIG=json.dumps(config),
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            **env,
        )
        self.args = [
            sys.executable, "-m", "celery", "-A", "webapp", "worker",
            "-P", "threads", "-c", str(concurrency), "-Q", serving,
            "--without-gossip", "--without-mingle",
            "-n", f"bench-{os.getpid()}@%h", "-l", "warning",
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.app = None
        self.replies: Replies | None = None
        self.migrated = False

    def settings(self, startup_s: float) -> dict:
        """How the worker ran, for the JSON."""
        return {
            "command": " ".join(self.args[2:]),
            "root": str(self.root),
            "MLSERVICES_CONFIG": self.env["MLSERVICES_CONFIG"],
            "OMP_NUM_THREADS": self.env["OMP_NUM_THREADS"],
            "startup_s": round(startup_s, 2),
        }

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def run_python(self, *args: str) -> str:
        """Run Python (e.g. ``manage.py migrate``) in the worker's
        environment (its database and storage); its stdout."""
        done = subprocess.run(
            [sys.executable, *args], cwd=self.root, env=self.env, capture_output=True, text=True
        )
        if done.returncode:
            raise BenchError(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def migrate(self) -> None:
        if not self.migrated:
            self.run_python("manage.py", "migrate", "--noinput", "-v", "0")
            self.migrated = True

    def start(self, timeout: float, warmup) -> float:
        """Migrate, start the worker, and wait until it answers ``warmup`` (an input).
        Returns the seconds it took."""
        from celery import Celery

        started = time.monotonic()
        self.migrate()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        # A client app of its own: the bench needs no Django settings to send a task by name.
        # No result backend: jobs.predict stores no result; its answer comes on the reply channel.
        self.app = Celery("bench-client", broker=self.redis_url)
        self.app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
        self.replies = Replies(self.redis_url)
        self.wait_ready(warmup, started + timeout)
        return time.monotonic() - started

    def wait_ready(self, warmup, deadline: float) -> None:
        """Send one warm-up task and wait for its answer until ``deadline``."""
        request_id, answer = self.send(warmup)
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

    def send(self, input) -> tuple[int, concurrent.futures.Future]:
        """Send ``jobs.predict`` for ``input``, as the site does; (its request id, the future of its answer)."""
        request_id, answer = self.replies.expect()
        try:
            self.app.send_task(TASK, args=(self.serving, input, self.replies.channel, request_id), queue=self.serving)
        except BaseException:
            self.replies.forget(request_id)
            raise
        return request_id, answer

    def predict(self, input) -> dict:
        request_id, answer = self.send(input)
        try:
            return check_answer(answer.result(timeout=ANSWER_TIMEOUT))
        except concurrent.futures.TimeoutError:
            message = f"no answer to request {request_id} within {ANSWER_TIMEOUT} s"
            raise BenchError(f"{message}:\n{self.log_tail()}") from None
        finally:
            self.replies.forget(request_id)

    def stop(self) -> None:
        """Close the client side, then end the worker process (whatever the closing raised)."""
        try:
            if self.replies is not None:
                self.replies.close()
            if self.app is not None:
                self.app.close()
        finally:
            if self.process is not None and self.process.poll() is None:
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

    def hop_ms(self) -> float:
        """Milliseconds for one message sent on the channel layer to this reply channel to reach
        its reader: the hop every answer of the worker takes (Redis, both ways, and two thread hand-offs)."""
        request_id, answer = self.expect()
        started = time.perf_counter()
        try:
            message = {"type": "bench.hop", "request_id": request_id}
            asyncio.run_coroutine_threadsafe(self.layer.send(self.channel, message), self.loop).result(ANSWER_TIMEOUT)
            answer.result(timeout=ANSWER_TIMEOUT)
        finally:
            self.forget(request_id)
        return (time.perf_counter() - started) * 1000.0

    def close(self) -> None:
        async def closing() -> None:
            self.receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.receiving
            await self.layer.close_pools()

        try:
            asyncio.run_coroutine_threadsafe(closing(), self.loop).result(timeout=30)
        except TimeoutError:  # a receive stuck in Redis must not cost the run its results
            print("warning: the reply channel did not close within 30 s; leaving it", file=sys.stderr)
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


@contextlib.contextmanager
def redis_db(url: str, processes: dict[str, int]):
    """A Redis db the bench may flush (before and after); Redis's pid goes into ``processes``."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"no Redis at {url} ({exc}); start it, or pass --no-worker") from exc
    client.flushdb()  # our db only
    with contextlib.suppress(Exception):  # only used to account for CPU
        processes["redis"] = int(client.info("server")["process_id"])
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


# --- reporting ---------------------------------------------------------------


def machine_info(*packages: str) -> dict:
    """The CPU, the platform, and the versions of ``packages`` (import names)."""
    from importlib import import_module

    model_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    info = {
        "cpus": os.cpu_count(),
        "cpu_model": model_name,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for name in packages:
        info[name] = getattr(import_module(name), "__version__", None)
    return info


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def ms_per_item(items_per_s: float | None) -> float | None:
    return 1000.0 / items_per_s if items_per_s else None


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def fmt_ms(value: float | None) -> str:
    return f"{value:7.1f}" if value is not None else "      -"


def table(records: Sequence[dict], columns: Sequence[tuple[str, str, int, str]], legend: str) -> str:
    """A fixed-width table: ``columns`` are (title, record key, width, format); the
    first column is left-aligned, a record with ``machine_busy`` is marked ``busy!``."""
    lines = [" ".join(f"{title:>{w}}" if i > 0 else f"{title:<{w}}" for i, (title, _, w, _) in enumerate(columns))]
    lines.append("-" * len(lines[0]))
    for r in records:
        cells = []
        for i, (_, key, w, fmt) in enumerate(columns):
            v = r.get(key)
            text = fmt.format(v) if v is not None else "-"
            cells.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
        lines.append(" ".join(cells) + ("  busy!" if r.get("machine_busy") else ""))
    lines.append(legend)
    return "\n".join(lines)


def write_json(results: dict, out: Path | None, benchmark: str) -> Path:
    """``results`` as ``out`` (default ``bench/results/<benchmark>-<time>.json``)."""
    out = out or RESULTS / f"{benchmark}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out


def run_and_report(run, args, benchmark: str, columns, legend: str, verdict, more=None) -> int:
    """``main``'s common part: run the bench, write its JSON, print the table (and
    ``more(results)``: further text, e.g. another table), the verdict lines, what was
    skipped and the warnings. Exit 2 when it failed, 1 when ``--check`` finds a target
    NOT MET, else 0."""
    try:
        results = run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    out = write_json(results, args.out, benchmark)
    say("\n" + table(results["records"], columns, legend))
    if more is not None:
        for text in more(results):
            say("\n" + text)
    lines = verdict(results)
    for line in lines:
        say(line)
    for name in results.get("skipped", ()):
        say(f"skipped: {name}")
    for w in results["warnings"]:
        say(f"warning: {w}")
    say(f"results: {out}")
    return 1 if args.check and any("NOT MET" in line for line in lines) else 0
