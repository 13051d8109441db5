"""docker-compose.yml and the Dockerfile describe the distributed setup of `make stack`.

No Docker engine is needed (nor present in CI): the files are parsed and
checked for what deployment relies on — the four services, the worker's GPU
reservation and command, health checks, start-up order, volumes for media and
the model store, and an image built from the Dockerfile with the torch pin of
pyproject.toml.
"""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
import yaml

from tests.live_server import ROOT

LONG_RUNNING = ("web", "worker", "redis", "postgres")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def test_the_four_services_are_there(services):
    assert set(LONG_RUNNING) <= set(services)


def test_the_worker_reserves_an_nvidia_gpu(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_the_worker_runs_threads_on_its_servings_queues(services):
    worker = services["worker"]
    args = command(worker)
    assert args[:4] == ["celery", "-A", "webapp", "worker"]
    assert args[args.index("-P") + 1] == "threads"  # one process, one copy of each model, shared batches
    queues = args[args.index("-Q") + 1].split(",")
    assert queues == worker["environment"]["MLSERVICES_WORKER_SERVINGS"].split(",")


def test_the_web_process_serves_asgi_and_runs_no_model(services):
    web = services["web"]
    assert command(web)[:1] == ["daphne"] and "webapp.asgi:application" in command(web)
    assert "deploy" not in web  # no GPU: it only enqueues
    assert "models:/models" not in web.get("volumes", [])


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_every_long_running_service_has_a_health_check(services, name):
    check = services[name]["healthcheck"]
    assert check["test"] and check["test"][0] in ("CMD", "CMD-SHELL")
    assert "interval" in check and "retries" in check


@pytest.mark.parametrize("name", ["web", "worker"])
def test_web_and_worker_wait_for_healthy_redis_and_postgres_and_migrations(services, name):
    depends = services[name]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_the_worker_starts_after_the_weights_are_installed(services):
    assert services["worker"]["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert command(services["models"])[-2:] == ["download", "sentiment"]


def test_volumes_hold_media_the_model_store_and_the_database(compose, services):
    assert {"media", "models", "postgres"} <= set(compose["volumes"])
    assert "media:/media" in services["web"]["volumes"]
    assert {"media:/media", "models:/models"} <= set(services["worker"]["volumes"])
    assert "models:/models" in services["models"]["volumes"]
    assert any(v.startswith("postgres:") for v in services["postgres"]["volumes"])
    for name in ("web", "worker", "models"):
        env = services[name]["environment"]
        assert env["MLSERVICES_MODEL_DIR"] == "/models" and env["DJANGO_MEDIA_ROOT"] == "/media"


@pytest.mark.parametrize("name", ["web", "worker", "migrate", "models"])
def test_app_services_build_from_the_dockerfile_and_reach_redis_and_postgres(services, name):
    service = services[name]
    assert service["build"]["context"] == "." and service["build"]["dockerfile"] == "Dockerfile"
    assert (ROOT / service["build"]["dockerfile"]).is_file()
    env = service["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["DJANGO_DEBUG"] == "0" and ":?" in env["DJANGO_SECRET_KEY"]  # refuses to start without one


def test_the_gpu_worker_image_takes_a_cuda_torch_build(services):
    args = services["worker"]["build"]["args"]
    assert "/whl/cu" in args["TORCH_INDEX"]
    assert args["ONNXRUNTIME_PACKAGE"] == "onnxruntime-gpu"


def test_the_dockerfile_installs_the_torch_version_pyproject_pins(dockerfile):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("torch")]
    assert pin.startswith("torch==")
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pin.split('==')[1])}$", dockerfile, re.M)
    for arg in ("TORCH_INDEX", "ONNXRUNTIME_PACKAGE"):
        assert re.search(rf"^ARG {arg}=", dockerfile, re.M)


def test_the_image_runs_as_a_user_and_copies_what_the_site_needs(dockerfile):
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)
    for path in ("manage.py", "mlservices", "webapp", "templates", "static"):
        assert re.search(rf"^COPY {path} ", dockerfile, re.M), path
        assert (ROOT / path).exists()
    assert "ENV" in dockerfile and "MLSERVICES_MODEL_DIR=/models" in dockerfile


def test_every_variable_compose_reads_is_documented(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\$\{([A-Z_]+)", text))
    documented = (ROOT / "docs" / "deployment.md").read_text()
    assert variables and not sorted(v for v in variables if v not in documented)
