"""Figures read when Prometheus scrapes, not counted as things happen.

- ``Servings``: per loaded version of each serving of this process's runtime,
  the items waiting in its batcher and its largest batch (batch fill is
  ``mlservices_batch_size`` over it).
- ``BrokerQueues``: messages waiting in each serving's Celery queue (Redis
  ``LLEN`` of the queue's list, every priority's); the web process reports
  them in distributed mode, so each queue is counted once however many
  workers there are.
- ``Gpus``: only when this process has imported torch and CUDA is there:
  memory torch holds in this process (allocated, reserved) per GPU, and,
  when ``pynvml`` (``nvidia-ml-py``) can be imported, each GPU's
  utilisation and memory used as NVML sees them. Without CUDA: nothing.

``install()`` registers them (and the observer of ``families``) once per
process; ``webapp.metrics.apps`` calls it when Django starts.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import mlservices
from mlservices import observers

from . import families

log = logging.getLogger(__name__)
BROKER_TIMEOUT_S = 2.0
_lock = threading.Lock()
_installed = False


class _Undescribed(Collector):
    """Registered without being collected (the registry's duplicate check would scrape it once)."""

    def describe(self):
        return []


class Servings(_Undescribed):
    """Items waiting in each loaded version's batcher, and its largest batch.

    ``runtime``: a function returning the runtime to read, called at each
    scrape (default: the process's default runtime, which ``configure`` can replace).
    """

    def __init__(self, runtime=None):
        self.runtime = runtime or mlservices.runtime.default

    def collect(self):
        pending = GaugeMetricFamily(
            "mlservices_batcher_pending_items", "Items waiting in the batcher for a batch", labels=families.LABELS
        )
        biggest = GaugeMetricFamily(
            "mlservices_batch_size_max", "The largest batch the version's batcher makes (its batch_size)",
            labels=families.LABELS,
        )
        runtime = self.runtime()
        for name in runtime.loaded():
            for deployed in runtime.deployed(name):
                loaded = deployed.loaded
                if loaded is None:  # freed since the table was read
                    continue
                pending.add_metric([name, loaded.version], deployed.batcher.pending())
                biggest.add_metric([name, loaded.version], deployed.batcher.max_batch_size)
        yield pending
        yield biggest


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps ``queue``'s messages in: one per priority step (kombu's naming)."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return [f"{queue}{Channel.sep}{pri}" if pri else queue for pri in PRIORITY_STEPS]


class BrokerQueues(_Undescribed):
    """Messages waiting in each serving's broker queue (``url``: the broker's Redis)."""

    def __init__(self, url: str, queues=mlservices.names):
        from webapp.outages import Outage

        self.url, self.queues = url, queues
        self.outage = Outage(log, "Redis (broker queue metrics)", "mlservices_broker_queue_messages is left out")
        self._client = None

    def client(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.url, socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S
            )
        return self._client

    def lengths(self) -> dict[str, int] | None:
        """{serving: messages waiting in its queue}; None (logged once) while Redis does not answer."""
        import redis

        names = list(self.queues())
        try:
            with self.client().pipeline(transaction=False) as pipe:
                for name in names:
                    for key in queue_keys(name):
                        pipe.llen(key)
                lengths = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self.outage.failed(exc)
            return None
        self.outage.ok()
        steps = len(lengths) // max(1, len(names))
        return {name: sum(lengths[i * steps:(i + 1) * steps]) for i, name in enumerate(names)}

    def collect(self):
        lengths = self.lengths()
        if lengths is None:
            return
        family = GaugeMetricFamily(
            "mlservices_broker_queue_messages", "Messages (jobs, live predictions) waiting in the serving's "
            "broker queue, not yet taken by a worker", labels=["serving"],
        )
        for name, length in lengths.items():
            family.add_metric([name], length)
        yield family


@functools.cache
def broker_queues(url: str) -> BrokerQueues:
    """The one ``BrokerQueues`` of this process for the broker at ``url``."""
    return BrokerQueues(url)


class Gpus(_Undescribed):
    """GPU memory (torch, this process) and utilisation (NVML), when CUDA is there."""

    def collect(self):
        torch = sys.modules.get("torch")  # a process that never imported torch holds no GPU memory
        if torch is None or not torch.cuda.is_available():
            return
        count = torch.cuda.device_count()
        allocated = GaugeMetricFamily(
            "mlservices_gpu_memory_allocated_bytes", "GPU memory held by tensors of this process (torch)",
            labels=["gpu"],
        )
        reserved = GaugeMetricFamily(
            "mlservices_gpu_memory_reserved_bytes", "GPU memory reserved by torch's caching allocator in this process",
            labels=["gpu"],
        )
        for index in range(count):
            allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
            reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
        yield allocated
        yield reserved
        yield from nvml_families(count)


def nvml_families(count: int):
    """Utilisation and memory of GPUs 0..count-1 as NVML sees them (the whole device); nothing without pynvml."""
    try:
        import pynvml
    except ImportError:
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML is not usable: %s", exc)
        return
    utilisation = GaugeMetricFamily(
        "mlservices_gpu_utilization_ratio", "Share of the last sample period the GPU was busy (NVML, 0..1)",
        labels=["gpu"],
    )
    used = GaugeMetricFamily(
        "mlservices_gpu_memory_used_bytes", "GPU memory in use, all processes (NVML)", labels=["gpu"]
    )
    total = GaugeMetricFamily("mlservices_gpu_memory_total_bytes", "GPU memory in all (NVML)", labels=["gpu"])
    try:
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            rates, memory = pynvml.nvmlDeviceGetUtilizationRates(handle), pynvml.nvmlDeviceGetMemoryInfo(handle)
            utilisation.add_metric([str(index)], rates.gpu / 100.0)
            used.add_metric([str(index)], memory.used)
            total.add_metric([str(index)], memory.total)
    except pynvml.NVMLError as exc:
        log.debug("NVML could not read the GPUs: %s", exc)
        return
    finally:
        pynvml.nvmlShutdown()
    yield utilisation
    yield used
    yield total


def install() -> None:
    """Record this process's serving events and register the scrape-time collectors (once)."""
    global _installed
    with _lock:
        if _installed:
            return
        observers.subscribe(families.on_event)
        REGISTRY.register(Servings())
        REGISTRY.register(Gpus())
        _installed = True
