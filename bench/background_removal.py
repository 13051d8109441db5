"""Background removal benchmark: raw ONNX Runtime vs in-process serving vs Celery worker, and rembg.

One run measures, side by side, on the photos of ``--images`` (the 12 of
``../shared/data/images``), with the same model file and the same ONNX
Runtime intra-op thread count everywhere (``--threads``):

(a) ``raw``: ``InferenceSession.run`` on ready-made tensors (the serving's own
    preprocessing, done before timing), on the serving's own session;
(b) ``inprocess``: ``Runtime.batched_run("background_removal", {"file": bytes})``:
    decode, the model through the batcher, the mask and the cutout as PNGs;
(c) ``worker``: a real ``celery -A webapp worker -P threads -Q background_removal``
    subprocess; the photos are stored as uploads of its database first, and
    clients send ``jobs.predict`` with ``{"file": <upload id>}`` and wait for the
    answer on a reply channel of the Redis channel layer, as the site's
    websocket does (the worker reads the upload from storage, runs (b), and
    publishes; a saved job would also write the two PNGs to storage);
(d) ``rembg`` (``pip install rembg``, the ``bench`` extra): ``rembg.remove(bytes,
    session)`` with its ``u2netp`` session on the same model file (a copy in a
    temporary ``U2NET_HOME`` with a Transpose appended to output 0, since rembg
    reads it as NCHW ``[1,1,320,320]``): decode, model, cutout PNG;

each from N closed-loop clients for N in ``--concurrency`` (1, 8). Before
timing, the mean IoU (alpha ≥ 0.5) between the serving's masks and rembg's on
the same photos is computed. It prints the ratios and writes
bench/results/background_removal-<time>.json: one record per concurrency (see
RECORD_KEYS and bench/README.md).

Run it from the project root::

    .venv/bin/python -m bench.background_removal
    .venv/bin/python -m bench.background_removal --help

It needs Redis (``--redis-url``, default db 12, which it flushes) unless
``--no-worker``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/background_removal.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402 - after the sys.path fix above
    BUSY_FOREIGN_CORES,
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
    ratio,
    redis_db,
    rounded,
    run_and_report,
    say,
    warn,
    warn_if_busy,
)

DEFAULT_MODEL = SHARED / "models" / "u2netp" / "model.onnx"
DEFAULT_IMAGES = SHARED / "data" / "images"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
SERVING = "background_removal"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PATHS = ("raw", "inprocess", "worker", "rembg")
RECORD_KEYS = (
    "serving",
    "concurrency",
    *(f"{path}_{what}" for path in PATHS for what in ("items_per_s", "p50_ms", "p99_ms")),
    "inprocess_over_raw",
    "worker_over_raw",
    "inprocess_over_rembg",
)
TARGETS = {"inprocess_over_rembg": 1.2, "mask_iou": 0.99, "served_over_raw": 0.9}
IOU_LEVEL = 128  # alpha ≥ 0.5

# Run in the worker's environment (its database and storage): store each photo as an
# upload of the serving, print {path: upload id}. The bench itself never starts Django.
STORE_UPLOADS = """
import json, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
import django
django.setup()
from django.core.files.base import ContentFile
from mlservices.formats import CONTENT_TYPES, sniff
from webapp.jobs.models import Upload

serving, paths = sys.argv[1], sys.argv[2:]
ids = {}
for path in paths:
    data = open(path, "rb").read()
    format = sniff(data[:64])
    upload = Upload(serving=serving, name=os.path.basename(path), format=format,
                    content_type=CONTENT_TYPES[format], size=len(data))
    upload.file.save("upload", ContentFile(data), save=False)
    upload.save()
    ids[path] = str(upload.id)
print(json.dumps(ids))
"""


def read_photos(folder: Path) -> dict[str, bytes]:
    """The photos of ``folder`` by file name, sorted."""
    photos = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES}
    if not photos:
        raise BenchError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {folder}")
    return photos


def nchw_copy(model: Path, out: Path) -> Path:
    """A copy of a U2Net ONNX file whose first output, NHWC ``[N,H,W,1]``, is
    transposed to NCHW ``[N,1,H,W]`` (what rembg reads); an NCHW model is copied as is."""
    import onnx
    from onnx import helper

    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    first = graph.output[0]
    dims = first.type.tensor_type.shape.dim
    if len(dims) == 4 and dims[3].HasField("dim_value") and dims[3].dim_value == 1:
        inner = f"{first.name}_nhwc"
        for node in graph.node:
            node.output[:] = [inner if o == first.name else o for o in node.output]
        graph.node.append(helper.make_node("Transpose", [inner], [first.name], perm=[0, 3, 1, 2]))
        n, h, w, c = (d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)
        nchw = helper.make_tensor_type_proto(first.type.tensor_type.elem_type, [n, c, h, w])
        first.type.tensor_type.CopyFrom(nchw.tensor_type)
        onnx.checker.check_model(graph_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, str(out))
    return out


class Rembg:
    """rembg's ``u2netp`` session on our model file, ``threads`` intra-op threads; ONNX
    Runtime's other session options are its defaults (rembg's), unless ``no_spin``: then
    its threads sleep when idle, as the serving's do."""

    def __init__(self, model: Path, threads: int, home: Path, no_spin: bool = False):
        os.environ["U2NET_HOME"] = str(home)  # rembg reads <U2NET_HOME>/u2netp.onnx
        os.environ["MODEL_CHECKSUM_DISABLED"] = "1"  # it is our file, not its download
        nchw_copy(model, home / "u2netp.onnx")
        import onnxruntime
        import rembg

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if no_spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.version = rembg.__version__ if hasattr(rembg, "__version__") else _dist_version("rembg")
        self.session = rembg.new_session("u2netp", sess_opts=options, providers=["CPUExecutionProvider"])
        self.remove = rembg.remove

    def cutout(self, data: bytes) -> bytes:
        return self.remove(data, session=self.session)

    def mask(self, data: bytes) -> bytes:
        return self.remove(data, session=self.session, only_mask=True)


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def mask_iou(ours: bytes, theirs: bytes) -> float:
    """IoU of two grey PNG masks of one size at alpha ≥ 0.5 (1.0 when both are empty)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(ours)).convert("L")) >= IOU_LEVEL
    b = np.asarray(Image.open(io.BytesIO(theirs)).convert("L")) >= IOU_LEVEL
    if a.shape != b.shape:
        raise BenchError(f"the masks differ in size: {a.shape[::-1]} and {b.shape[::-1]}")
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def compare_masks(runtime, rembg: Rembg, photos: dict[str, bytes]) -> dict:
    """Per photo and on average: IoU between the serving's mask and rembg's."""
    per_photo = {}
    for name, data in photos.items():
        ours = runtime.batched_run(SERVING, {"file": data, "only_mask": True})["mask"].data
        per_photo[name] = round(mask_iou(ours, rembg.mask(data)), 4)
    values = list(per_photo.values())
    return {"mean": round(sum(values) / len(values), 4), "min": min(values), "level": IOU_LEVEL / 255, "per_photo": per_photo}


def measure(call: Callable, inputs: Sequence, concurrency: int, args, monitor, quiet, window=None):
    def once():
        load = closed_loop(call, inputs, concurrency, budget=args.budget, warmup=args.warmup, monitor=monitor, on_window=window)
        return load, load.cpu

    return least_disturbed(once, quiet, args.retries)


def run(args: argparse.Namespace) -> dict:
    import numpy as np

    import mlservices
    from mlservices.model_store import sha256_of

    warnings: list[str] = []
    load_before = warn_if_busy(warnings)
    mlservices.discover()
    serving_options = json.loads(args.serving_options) if args.serving_options else {}
    worker_options = json.loads(args.worker_serving_options) if args.worker_serving_options else {}
    photos = read_photos(args.images)
    say(
        f"background removal bench: {args.model}, {len(photos)} photos, {args.threads} ONNX Runtime thread(s), "
        f"budget {args.budget:g} s per measurement"
    )
    runtime = mlservices.Runtime({SERVING: {"model": str(args.model), "threads": args.threads, **serving_options}}, device="cpu")
    loaded = runtime.serving(SERVING)
    batcher = runtime.batcher(SERVING)
    model = loaded.model
    # (a)'s inputs: the serving's own tensors, made before timing.
    tensors = [np.stack([loaded.prepare({"file": data})[0][0].item]) for data in photos.values()]

    def raw(x: np.ndarray):
        return model.session.run([model.output_name], {model.input_name: x})

    worker: Worker | None = None
    processes = {"bench": os.getpid()}
    monitor = CpuMonitor(lambda: {**processes, **({"worker": worker.process.pid} if worker and worker.process else {})})
    quiet = Quiet(monitor, args.wait_quiet, args.wait_quiet_total)
    packages = ["onnxruntime", "numpy", "PIL", "celery"]
    results: dict = {
        "benchmark": SERVING,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_info(*packages), "loadavg_before": load_before},
        "settings": {
            "model": str(args.model),
            "model_sha256": sha256_of(Path(args.model)),
            "model_version": loaded.version,
            "images": str(args.images),
            "threads": args.threads,
            "providers": model.providers,
            "budget_s": args.budget,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "serving_batch_size": batcher.max_batch_size,
            "serving_batch_timeout_ms": batcher.max_wait * 1000.0,
            "serving_parallel_batches": loaded.serving.parallel_batches,
            "serving_options": serving_options,
            "worker_serving_options": worker_options,
            "worker": None,
            "rembg": None,
        },
        "inputs": {name: _photo_info(data) for name, data in photos.items()},
        "mask_iou": None,
        "records": [],
        "targets": TARGETS,
        "warnings": warnings,
    }

    with tempfile.TemporaryDirectory(prefix="bench-bg-") as tmp, contextlib.ExitStack() as stack:
        stack.callback(runtime.close)
        rembg = None
        if not args.no_rembg:
            try:
                rembg = Rembg(Path(args.model), args.threads, Path(tmp) / "u2net", no_spin=args.rembg_no_spin)
            except ImportError:
                warn("rembg is not installed (pip install -e '.[bench]'); its column stays empty", warnings)
        if rembg:
            results["settings"]["rembg"] = {
                "version": rembg.version,
                "model": "u2netp: our file + a Transpose of output 0 to NCHW",
                "allow_spinning": not args.rembg_no_spin,
            }
            say("comparing the masks with rembg's…")
            iou = results["mask_iou"] = compare_masks(runtime, rembg, photos)
            say(f"  mean IoU {iou['mean']:.4f} (min {iou['min']:.4f}) over {len(photos)} photos")
        if not args.no_worker:
            stack.enter_context(redis_db(args.redis_url, processes))
            worker = Worker(
                serving=SERVING,
                env={"BACKGROUND_REMOVAL_MODEL": str(args.model)},
                redis_url=args.redis_url,
                threads=args.threads,
                serving_options={**serving_options, **worker_options},
                concurrency=args.worker_concurrency,
                workdir=Path(tmp),
                root=args.worker_root,
            )
            stack.callback(worker.stop)
            worker.migrate()
            paths = [str(Path(args.images) / name) for name in photos]
            ids = json.loads(worker.run_python("-c", STORE_UPLOADS, SERVING, *paths))
            uploads = [{"file": ids[p]} for p in paths]
            say(f"starting the worker: {' '.join(worker.args[2:])}")
            seconds = worker.start(timeout=args.worker_timeout, warmup=uploads[0])
            say(f"  it answered its warm-up task after {seconds:.1f} s")
            results["settings"]["worker"] = worker.settings(seconds)

        files = [{"file": data} for data in photos.values()]
        paths: dict[str, tuple[Callable, Sequence]] = {
            "raw": (raw, tensors),
            "inprocess": (lambda input: runtime.batched_run(SERVING, input), files),
        }
        if worker:
            paths["worker"] = (worker.predict, uploads)
        if rembg:
            paths["rembg"] = (rembg.cutout, list(photos.values()))
        for c in args.concurrency:
            say(f"\n== {c} client(s) ==")
            record: dict = {"serving": SERVING, "concurrency": c}
            record.update({f"{p}_{what}": None for p in PATHS for what in ("items_per_s", "p50_ms", "p99_ms")})
            disturbed = []
            for name, (call, inputs) in paths.items():
                window = (lambda _: batcher.records()) if name == "inprocess" else None
                load, cpu = measure(call, inputs, c, args, monitor, quiet, window)
                record[f"{name}_items_per_s"] = round(load.items_per_s, 3)
                record[f"{name}_p50_ms"] = rounded(load.p50_ms, 1)
                record[f"{name}_p99_ms"] = rounded(load.p99_ms, 1)
                record[f"{name}_cpu_ms_per_item"] = cpu_ms_per_item(cpu, load.items_per_s)
                record[f"{name}_completed"] = load.completed
                if name == "worker":  # who spends it: the clients (bench), the worker, Redis
                    record["worker_cpu_ms_per_item_by_process"] = cpu_ms_per_item_by_process(cpu, load.items_per_s)
                if window:
                    record["inprocess_mean_batch"] = mean_batch(load)
                disturbed.append(foreign(cpu))
                say(
                    f"  {name:<10} c={c:<2} {load.items_per_s:7.2f} images/s   "
                    f"p50 {fmt_ms(load.p50_ms)} ms  p99 {fmt_ms(load.p99_ms)} ms" + busy_note(foreign(cpu))
                )
                if foreign(cpu) > BUSY_FOREIGN_CORES:
                    warn(
                        f"c={c} {name}: other processes used {foreign(cpu):.2f} CPU cores during the "
                        "measurement; the machine is busy and this number is low",
                        warnings,
                    )
            record.update(
                inprocess_over_raw=ratio(record["inprocess_items_per_s"], record["raw_items_per_s"]),
                worker_over_raw=ratio(record["worker_items_per_s"], record["raw_items_per_s"]),
                inprocess_over_rembg=ratio(record["inprocess_items_per_s"], record["rembg_items_per_s"]),
                worker_over_rembg=ratio(record["worker_items_per_s"], record["rembg_items_per_s"]),
                foreign_cpu_cores=round(max(disturbed), 3),
                machine_busy=max(disturbed) > BUSY_FOREIGN_CORES,
            )
            results["records"].append(record)
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return results


def _photo_info(data: bytes) -> dict:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return {"format": image.format, "size": list(image.size), "bytes": len(data)}


COLUMNS = [  # (title, key, width, format)
    ("conc", "concurrency", 4, "{}"),
    ("raw", "raw_items_per_s", 6, "{:.2f}"),
    ("inproc", "inprocess_items_per_s", 6, "{:.2f}"),
    ("worker", "worker_items_per_s", 6, "{:.2f}"),
    ("rembg", "rembg_items_per_s", 6, "{:.2f}"),
    ("raw p50", "raw_p50_ms", 7, "{:.0f}"),
    ("inp p50", "inprocess_p50_ms", 7, "{:.0f}"),
    ("inp p99", "inprocess_p99_ms", 7, "{:.0f}"),
    ("wrk p50", "worker_p50_ms", 7, "{:.0f}"),
    ("wrk p99", "worker_p99_ms", 7, "{:.0f}"),
    ("rembg p50", "rembg_p50_ms", 9, "{:.0f}"),
    ("inp/raw", "inprocess_over_raw", 7, "{:.2f}"),
    ("wrk/raw", "worker_over_raw", 7, "{:.2f}"),
    ("inp/rembg", "inprocess_over_rembg", 9, "{:.2f}"),
]
LEGEND = (
    "images/s; raw: ONNX Runtime on ready tensors; inproc: the serving in this process (decode, model, mask and\n"
    "cutout PNGs); worker: jobs.predict through a Celery worker; rembg: rembg.remove (decode, model, cutout PNG);\n"
    f"latencies in ms; busy!: other processes used more than {BUSY_FOREIGN_CORES} cores during a measurement of that row"
)


def verdict(results: dict) -> list[str]:
    lines = []
    iou = results.get("mask_iou")
    if iou:
        ok = iou["mean"] >= TARGETS["mask_iou"]
        lines.append(
            f"target mask IoU vs rembg >= {TARGETS['mask_iou']}: mean {iou['mean']:.4f} "
            f"(min {iou['min']:.4f}): {'MET' if ok else 'NOT MET'}"
        )
    for r in results["records"]:
        busy = " (the machine was busy)" if r.get("machine_busy") else ""
        c = r["concurrency"]
        if r["inprocess_over_rembg"]:
            ok = r["inprocess_over_rembg"] >= TARGETS["inprocess_over_rembg"]
            lines.append(
                f"target c={c} ours/rembg >= {TARGETS['inprocess_over_rembg']}: {r['inprocess_over_rembg']:.2f} "
                f"({r['inprocess_items_per_s']:.2f} vs {r['rembg_items_per_s']:.2f} images/s): "
                f"{'MET' if ok else 'NOT MET'}{busy}"
            )
        for key in ("inprocess_over_raw", "worker_over_raw"):
            if r[key]:
                ok = r[key] >= TARGETS["served_over_raw"]
                lines.append(
                    f"target c={c} {key.replace('_over_', '/')} >= {TARGETS['served_over_raw']}: {r[key]:.2f}: "
                    f"{'MET' if ok else 'NOT MET'}{busy}"
                )
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    default_model = os.environ.get("BACKGROUND_REMOVAL_MODEL") or DEFAULT_MODEL
    p = argparse.ArgumentParser(prog="python -m bench.background_removal", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(default_model), help="a U2Net ONNX file")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="a folder of photos")
    p.add_argument("--concurrency", type=ints, default=[1, 8], help="closed-loop clients, e.g. 1,8")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads, everywhere")
    p.add_argument("--budget", type=float, default=12.0, help="seconds measured per path and concurrency")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds run unmeasured before each measurement")
    p.add_argument("--wait-quiet", type=float, default=10.0, help="seconds to wait, before a measurement, for other processes to calm down")
    p.add_argument("--wait-quiet-total", type=float, default=120.0, help="seconds of such waiting in the whole run, at most")
    p.add_argument("--retries", type=int, default=1, help="times a measurement disturbed by other processes is redone")
    p.add_argument("--serving-options", default="", help='JSON merged into the serving\'s options, e.g. \'{"batch_size": 1}\'')
    p.add_argument(
        "--worker-serving-options", default="",
        help="JSON merged over the serving options of the worker only (to try a worker configuration)",
    )  # fmt: skip
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL), help="its db is flushed")
    p.add_argument("--no-worker", action="store_true", help="skip the Celery worker (no Redis needed)")
    p.add_argument("--no-rembg", action="store_true", help="skip rembg")
    p.add_argument(
        "--rembg-no-spin", action="store_true",
        help="rembg's session with the serving's session option allow_spinning=0 (default: rembg's defaults)",
    )  # fmt: skip
    p.add_argument("--worker-concurrency", type=int, default=8, help="the worker's -c")
    p.add_argument("--worker-root", type=Path, default=ROOT, help="the project the worker runs from (to try a patch)")
    p.add_argument("--worker-timeout", type=float, default=300, help="seconds for the worker to answer its first task")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/background_removal-<time>.json)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    args = p.parse_args(argv)
    if not args.model.is_file():
        p.error(f"no model at {args.model}; pass --model or set BACKGROUND_REMOVAL_MODEL")
    if not args.images.is_dir():
        p.error(f"no photos at {args.images}; pass --images")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MLSERVICES_OFFLINE", "1")
    return run_and_report(run, args, SERVING, COLUMNS, LEGEND, verdict)

if __name__ == "__main__":
    sys.exit(main())
