"""Prometheus metrics (webapp.metrics): who may read them, and that they move when work runs.

In this process: the bearer-token check of ``/metrics``, the observer events
of a real runtime (batches, loads, a version swapped out), the broker queue
lengths in a real Redis, the GPU branch with a stub. Then for real: a Celery
worker's own metrics port while toy jobs and a live prediction run through
it, and the ``/metrics`` of a live daphne running servings in-process.
Nothing sleeps to wait for work: every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import sys
import types
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.live_server import ROOT, asgi_server, base_env, free_port, live_database, wait_until
from tests.test_worker import (  # noqa: F401  (fixtures)
    TIMEOUT,
    celery_client,
    celery_worker,
    create_jobs,
    enqueue,
    in_thread,
    let_through,
    live_db,
    new_session,
    redis_db,
    toy_env,
    toy_files,
    wait_for_jobs,
)

TOKEN = "test-metrics-token"
TOY = {"serving": "toy", "version": "toy@1"}
PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes")


def scrape(url: str, token: str | None = TOKEN) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a metrics endpoint, read with the bearer ``token``."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def refused_status(url: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    return refused.value.code, refused.value.headers.get("WWW-Authenticate", "")


# --- /metrics: the token -------------------------------------------------------------


def test_metrics_are_off_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


@pytest.mark.parametrize(
    "header, status", [(None, 401), ("Bearer", 401), ("Basic dXNlcjpwYXNz", 401), ("Bearer wrong", 403),
                       (f"Bearer {TOKEN}x", 403), (f"bearer {TOKEN}", 200), (f"Bearer {TOKEN}", 200)],
)
def test_metrics_need_the_bearer_token(client, settings, header, status):
    settings.METRICS_TOKEN = TOKEN
    response = client.get("/metrics", **({"HTTP_AUTHORIZATION": header} if header else {}))
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer <METRICS_TOKEN>" in response.content.decode()
    if status == 200:
        names = {f.name for f in text_string_to_metric_families(response.content.decode())}
        assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= names  # CPU and RSS of the process
        assert {"mlservices_requests", "mlservices_batch_size", "mlservices_batcher_pending_items"} <= names


def test_metrics_refuse_other_methods_and_need_no_csrf_token(client, settings):
    settings.METRICS_TOKEN = TOKEN
    client.handler.enforce_csrf_checks = True
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_a_workers_metrics_port_opens_only_with_a_token_and_a_free_port(settings, caplog):
    from webapp.metrics.server import start_from_settings

    settings.WORKER_METRICS_HOST, settings.WORKER_METRICS_PORT, settings.METRICS_TOKEN = "127.0.0.1", 0, TOKEN
    assert start_from_settings() is None  # port 0: off
    settings.WORKER_METRICS_PORT, settings.METRICS_TOKEN = free_port(), ""
    assert start_from_settings() is None
    assert "METRICS_TOKEN is not set" in caplog.text
    settings.METRICS_TOKEN = TOKEN
    server = start_from_settings()
    try:
        url = f"http://127.0.0.1:{settings.WORKER_METRICS_PORT}/metrics"
        assert all((name, ()) in scrape(url) for name in PROCESS_METRICS)
        assert refused_status(url, None) == (401, 'Bearer realm="metrics"')
        assert refused_status(url, "wrong")[0] == 403
        assert start_from_settings() is None  # the port is taken: logged, not raised
        assert f"cannot listen on 127.0.0.1:{settings.WORKER_METRICS_PORT}" in caplog.text
    finally:
        server.shutdown()
        server.server_close()


# --- Observer events of a real runtime --------------------------------------------------


@pytest.fixture
def toy_runtime():
    """A runtime with the toy serving ``toy-metrics`` (gate open), closed and unregistered after."""
    import mlservices
    from mlservices.testing import Toy

    mlservices.register("toy-metrics")(lambda **options: Toy().serving("toy-metrics", batch_size=4, batch_timeout_ms=1))
    runtime = mlservices.Runtime({"toy-metrics": {}}, device="cpu")
    yield runtime
    runtime.close()
    mlservices.registry.unregister("toy-metrics")


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_batches_loads_and_unloads_move_the_serving_metrics(toy_runtime):
    from mlservices.runtime import Route

    from webapp.metrics.collectors import Servings

    labels = {"serving": "toy-metrics", "version": "toy@1"}
    before = {name: sample(name, **labels) for name in
              ("mlservices_batch_size_count", "mlservices_batch_size_sum", "mlservices_inference_seconds_count",
               "mlservices_queue_wait_seconds_count", "mlservices_batch_failures_total")}
    assert toy_runtime.batched_run("toy-metrics", 21) == {"input": 21, "output": 42}
    with pytest.raises(mlservices_error()):
        toy_runtime.batched_run("toy-metrics", "boom-infer")
    assert sample("mlservices_batch_size_count", **labels) == before["mlservices_batch_size_count"] + 2
    assert sample("mlservices_batch_size_sum", **labels) == before["mlservices_batch_size_sum"] + 2
    assert sample("mlservices_inference_seconds_count", **labels) == before["mlservices_inference_seconds_count"] + 2
    assert sample("mlservices_queue_wait_seconds_count", **labels) == before["mlservices_queue_wait_seconds_count"] + 2
    assert sample("mlservices_batch_failures_total", **labels) == before["mlservices_batch_failures_total"] + 1
    assert sample("mlservices_model_loaded", device="cpu", **labels) == 1
    assert REGISTRY.get_sample_value("mlservices_model_load_seconds", {"device": "cpu", **labels}) >= 0

    # Read at scrape time from the runtime: items waiting and the batch size, per version.
    families = {f.name: f for f in Servings(lambda: toy_runtime).collect()}
    assert [(s.labels, s.value) for s in families["mlservices_batcher_pending_items"].samples] == [(labels, 0)]
    assert [(s.labels, s.value) for s in families["mlservices_batch_size_max"].samples] == [(labels, 4)]

    # A new version beside the old, then the old one drained and freed: its "loaded" series goes.
    toy_runtime.deploy("toy-metrics", [Route("v2", {}, 100)])
    assert toy_runtime.wait_drained(timeout=TIMEOUT)
    v2 = {"serving": "toy-metrics", "version": "v2@toy@1"}
    assert REGISTRY.get_sample_value("mlservices_model_loaded", {"device": "cpu", **labels}) is None
    assert sample("mlservices_model_loaded", device="cpu", **v2) == 1
    toy_runtime.batched_run("toy-metrics", 1)
    assert sample("mlservices_batch_size_count", **v2) == 1
    families = {f.name: f for f in Servings(lambda: toy_runtime).collect()}
    assert [s.labels for s in families["mlservices_batcher_pending_items"].samples] == [v2]


def mlservices_error():
    import mlservices

    return mlservices.ServingError


@pytest.mark.django_db
def test_recorded_job_outcomes_count_requests_failures_and_latency():
    from datetime import timedelta

    from django.utils import timezone

    from webapp.jobs.execution import fail_job
    from webapp.jobs.models import Job

    labels = {"serving": "toy-outcomes", "version": "", "kind": "job"}
    job = Job.objects.create(serving="toy-outcomes", input=1, input_summary="1", session_key="k")
    Job.objects.filter(pk=job.pk).update(queued_at=timezone.now() - timedelta(seconds=3))
    job.refresh_from_db()
    assert fail_job(job, "queue_unavailable", "the queue is away")
    assert not fail_job(job, "queue_unavailable", "again")  # recorded once, counted once
    assert sample("mlservices_requests_total", **labels) == 1
    assert sample("mlservices_request_failures_total", code="queue_unavailable", **labels) == 1
    latency = {"serving": "toy-outcomes", "version": "", "status": "failed"}
    assert sample("mlservices_job_latency_seconds_count", **latency) == 1
    assert sample("mlservices_job_latency_seconds_sum", **latency) >= 3
    assert sample("mlservices_job_latency_seconds_bucket", le="1.0", **latency) == 0


# --- Scrape-time collectors: the broker's queues, the GPUs ----------------------------------


def test_broker_queue_lengths_count_every_priority_list(redis_db, redis_url):
    from webapp.metrics.collectors import BrokerQueues, queue_keys

    low, high = queue_keys("toy")[0], queue_keys("toy")[-1]
    assert low == "toy" and high == "toy\x06\x169"
    redis_db.rpush(low, "a", "b")
    redis_db.rpush(high, "c")
    redis_db.rpush("files", "d")
    queues = BrokerQueues(redis_url, queues=lambda: ["files", "toy", "windows"])
    assert queues.lengths() == {"files": 1, "toy": 3, "windows": 0}
    (family,) = queues.collect()
    assert family.name == "mlservices_broker_queue_messages"
    assert {s.labels["serving"]: s.value for s in family.samples} == {"files": 1, "toy": 3, "windows": 0}


def test_broker_queue_lengths_are_left_out_while_redis_is_away(caplog):
    from webapp.metrics.collectors import BrokerQueues

    queues = BrokerQueues(f"redis://127.0.0.1:{free_port()}/0", queues=lambda: ["toy"])
    assert queues.lengths() is None and list(queues.collect()) == []
    assert sum("broker queue metrics" in r.getMessage() for r in caplog.records) == 1  # one line per outage


def test_without_torch_or_cuda_no_gpu_metrics_are_collected(monkeypatch):
    from webapp.metrics.collectors import Gpus

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert list(Gpus().collect()) == []
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert list(Gpus().collect()) == []


def test_gpu_memory_and_utilisation_with_cuda_present(monkeypatch):
    """This machine has no GPU: torch.cuda and pynvml are stubs with two GPUs, to check the
    CUDA branch reads memory per GPU from torch and utilisation/memory from NVML, and shuts NVML down."""
    from webapp.metrics.collectors import Gpus

    cuda = types.SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 2,
        memory_allocated=lambda i: 1000 * (i + 1), memory_reserved=lambda i: 4000 * (i + 1),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    calls = []

    class NVMLError(Exception):
        pass

    nvml = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=[37, 80][h]),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=[5, 6][h] * 2**30, total=80 * 2**30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    found = {(s.name, s.labels["gpu"]): s.value for f in Gpus().collect() for s in f.samples}
    assert found == {
        ("mlservices_gpu_memory_allocated_bytes", "0"): 1000, ("mlservices_gpu_memory_allocated_bytes", "1"): 2000,
        ("mlservices_gpu_memory_reserved_bytes", "0"): 4000, ("mlservices_gpu_memory_reserved_bytes", "1"): 8000,
        ("mlservices_gpu_utilization_ratio", "0"): 0.37, ("mlservices_gpu_utilization_ratio", "1"): 0.8,
        ("mlservices_gpu_memory_used_bytes", "0"): 5 * 2**30, ("mlservices_gpu_memory_used_bytes", "1"): 6 * 2**30,
        ("mlservices_gpu_memory_total_bytes", "0"): 80 * 2**30, ("mlservices_gpu_memory_total_bytes", "1"): 80 * 2**30,
    }
    assert calls == ["init", "shutdown"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: torch's figures only
    assert {f.name for f in Gpus().collect()} == {"mlservices_gpu_memory_allocated_bytes",
                                                  "mlservices_gpu_memory_reserved_bytes"}


# --- For real: a worker's metrics port -----------------------------------------------------


@pytest.mark.redis
@pytest.mark.worker
async def test_a_workers_metrics_port_shows_its_jobs_predictions_and_batches_move(
    tmp_path, toy_files, redis_db, redis_url, live_db, celery_client
):
    port = free_port()
    env = toy_env(live_db, redis_url, toy_files, batch_size=8, WORKER_METRICS_PORT=str(port), METRICS_TOKEN=TOKEN)
    url = f"http://127.0.0.1:{port}/metrics"
    async with in_thread(celery_worker(celery_client, env, tmp_path, name="metrics", queues="toy")):
        assert refused_status(url, None)[0] == 401 and refused_status(url, "wrong")[0] == 403
        assert refused_status(url.replace("/metrics", "/other"), TOKEN)[0] == 404
        before = await asyncio.to_thread(scrape, url)
        assert all((name, ()) in before for name in PROCESS_METRICS)  # the worker process's CPU and RSS
        assert value(before, "mlservices_model_loaded", device="cpu", **TOY) == 1
        assert value(before, "mlservices_model_load_seconds", device="cpu", **TOY) >= 0
        assert value(before, "mlservices_batcher_pending_items", **TOY) == 0
        assert value(before, "mlservices_batch_size_max", **TOY) == 8
        assert value(before, "mlservices_requests_total", kind="job", **TOY) is None  # nothing ran yet

        session = await new_session()
        ids = await create_jobs(session, "toy", [1, 2, 3, "boom-pre"])
        enqueue(celery_client, ids[:1], "toy")
        await asyncio.to_thread(wait_until, toy_files.announce.exists, timeout=TIMEOUT, what="the first batch")
        enqueue(celery_client, ids[1:], "toy")  # behind the first batch, held at the closed gate
        await asyncio.to_thread(
            wait_until, lambda: value(scrape(url), "mlservices_batcher_pending_items", **TOY) == 2,
            timeout=TIMEOUT, what="2 items waiting in the batcher",
        )
        let_through(toy_files.gate)
        jobs = await wait_for_jobs(ids)
        celery_client.send_task("jobs.predict", args=["toy", 5, "no-reader", 1], queue="toy")

        def prediction_counted():
            samples = scrape(url)
            return samples if value(samples, "mlservices_requests_total", kind="prediction", **TOY) else None

        after = await asyncio.to_thread(wait_until, prediction_counted, timeout=TIMEOUT, what="the prediction counted")

    assert [jobs[i].status for i in ids] == ["done", "done", "done", "failed"]
    assert value(after, "mlservices_requests_total", kind="job", **TOY) == 3
    failed = {"serving": "toy", "version": "", "kind": "job"}  # failed in preprocess: no version answered
    assert value(after, "mlservices_requests_total", **failed) == 1
    assert value(after, "mlservices_request_failures_total", code="invalid_input", **failed) == 1
    assert value(after, "mlservices_requests_total", kind="prediction", **TOY) == 1
    assert value(after, "mlservices_job_latency_seconds_count", status="done", **TOY) == 3
    assert value(after, "mlservices_job_latency_seconds_count", status="failed", serving="toy", version="") == 1
    assert value(after, "mlservices_batch_size_count", **TOY) == 3  # [1], [2, 3], then the prediction's [5]
    assert value(after, "mlservices_batch_size_sum", **TOY) == 4
    assert value(after, "mlservices_batch_size_bucket", le="2.0", **TOY) == 3
    assert value(after, "mlservices_batch_size_bucket", le="1.0", **TOY) == 2
    assert value(after, "mlservices_inference_seconds_count", **TOY) == 3
    assert value(after, "mlservices_queue_wait_seconds_count", **TOY) == 3
    assert value(after, "mlservices_batcher_pending_items", **TOY) == 0
    assert after[("process_cpu_seconds_total", ())] >= before[("process_cpu_seconds_total", ())]


# --- For real: /metrics of a live daphne running the servings in-process ----------------------


async def test_the_web_process_metrics_show_in_process_jobs(tmp_path):
    config = {"toy": {"gate": "", "announce": "", "batch_size": 4, "batch_timeout_ms": 1}}
    with live_database(tmp_path) as database:
        env = base_env(
            DATABASE_URL=database, MLSERVICES_MODE="inprocess", MLSERVICES_EXTRA_SERVINGS="tests.worker_servings",
            MLSERVICES_CONFIG=json.dumps(config), METRICS_TOKEN=TOKEN,
        )
        env.pop("REDIS_URL", None)
        async with in_thread(asgi_server(env, tmp_path / "daphne.log")) as site:
            assert refused_status(site + "/metrics", None)[0] == 401
            jar = http.cookiejar.CookieJar()
            browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            await asyncio.to_thread(lambda: browser.open(site + "/s/toy/", timeout=10).read())
            csrf = {c.name: c.value for c in jar}["csrftoken"]
            request = urllib.request.Request(
                site + "/api/jobs", data=json.dumps({"serving": "toy", "input": 21}).encode(), method="POST",
                headers={"Content-Type": "application/json", "X-CSRFToken": csrf},
            )
            with await asyncio.to_thread(browser.open, request, None, 10) as response:
                job_id = json.loads(response.read())["id"]

            def done():
                with browser.open(f"{site}/api/jobs/{job_id}", timeout=10) as response:
                    return json.loads(response.read())["status"] == "done"

            await asyncio.to_thread(wait_until, done, timeout=TIMEOUT, what="the in-process job to finish")
            samples = await asyncio.to_thread(scrape, site + "/metrics")

    assert value(samples, "mlservices_requests_total", kind="job", **TOY) == 1
    assert value(samples, "mlservices_job_latency_seconds_count", status="done", **TOY) == 1
    assert value(samples, "mlservices_batch_size_sum", **TOY) == 1
    assert value(samples, "mlservices_model_loaded", device="cpu", **TOY) == 1
    assert value(samples, "mlservices_batcher_pending_items", **TOY) == 0
    assert all((name, ()) in samples for name in PROCESS_METRICS)
    assert not any(name == "mlservices_broker_queue_messages" for name, _ in samples)  # no broker in-process


# --- The docs, the dashboard and the scrape config name only metrics that exist ------------------


def every_family(monkeypatch) -> dict[str, str]:
    """{documented name: type} of every metric this code can expose: the registry's, the broker's, the GPUs'
    (the GPU branch through the stubs of test_gpu_memory_and_utilisation_with_cuda_present)."""
    from webapp.metrics.collectors import BrokerQueues, Gpus

    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1,
                                 memory_allocated=lambda i: 0, memory_reserved=lambda i: 0)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    info = types.SimpleNamespace(gpu=0, used=0, total=1)
    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(
        NVMLError=Exception, nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: info, nvmlDeviceGetMemoryInfo=lambda h: info))
    broker = BrokerQueues("redis://unused", queues=lambda: ["toy"])
    monkeypatch.setattr(broker, "lengths", lambda: {"toy": 0})
    families = [*REGISTRY.collect(), *Gpus().collect(), *broker.collect()]
    return {f.name + ("_total" if f.type == "counter" else ""): f.type for f in families}


def sample_names(families: dict[str, str]) -> set[str]:
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
    return {name + suffix for name, kind in families.items() for suffix in suffixes.get(kind, ("",))}


def test_operations_docs_list_every_serving_metric_and_the_process_ones(monkeypatch):
    text = (ROOT / "docs" / "operations.md").read_text()
    ours = sorted(name for name in every_family(monkeypatch) if name.startswith("mlservices_"))
    assert len(ours) == 17  # the table of docs/operations.md
    assert [name for name in ours if f"`{name}`" not in text] == []
    for name in PROCESS_METRICS:
        assert f"`{name}`" in text


def test_the_grafana_dashboard_is_valid_and_queries_only_metrics_that_exist(monkeypatch):
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {name for expr in exprs for name in re.findall(r"\b((?:mlservices|process)_[a-z_]+)\b", expr)}
    exposed = sample_names(every_family(monkeypatch))
    assert sorted(queried - exposed) == []
    for needed in (
        "mlservices_requests_total", "mlservices_request_failures_total", "mlservices_queue_wait_seconds_bucket",
        "mlservices_batch_size_sum", "mlservices_inference_seconds_bucket", "mlservices_job_latency_seconds_bucket",
        "mlservices_batcher_pending_items", "mlservices_broker_queue_messages", "mlservices_model_load_seconds",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "mlservices_gpu_utilization_ratio",
        "mlservices_gpu_memory_allocated_bytes",
    ):
        assert needed in queried, needed
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["title"]
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {"${datasource}"}
    assert [v["name"] for v in dashboard["templating"]["list"]][0] == "datasource"


@pytest.mark.redis
async def test_the_web_process_counts_the_messages_waiting_in_each_servings_broker_queue(
    tmp_path, toy_files, redis_db, redis_url, live_db, celery_client
):
    """Distributed mode, no worker: a message sent to the ``windows`` queue waits there, and /metrics says so."""
    env = toy_env(live_db, redis_url, toy_files, batch_size=8, METRICS_TOKEN=TOKEN)
    async with in_thread(asgi_server(env, tmp_path / "daphne.log")) as site:
        before = await asyncio.to_thread(scrape, site + "/metrics")
        enqueue(celery_client, ["0b7e5b2e-0000-4000-8000-000000000000"] * 2, "windows")
        after = await asyncio.to_thread(scrape, site + "/metrics")
    assert value(before, "mlservices_broker_queue_messages", serving="windows") == 0
    assert value(before, "mlservices_broker_queue_messages", serving="toy") == 0
    assert value(after, "mlservices_broker_queue_messages", serving="windows") == 2
    assert value(after, "mlservices_batcher_pending_items", **TOY) is None  # the web process runs no serving
