"""docker-compose.yml and the Dockerfile describe the distributed setup of `make stack`.

No Docker engine is needed (nor present in CI): the files are parsed and
checked for what deployment relies on — the services, the worker's GPU
reservation and command, health checks, start-up order, volumes for media and
the model store, and an image built from the Dockerfile with the torch pin of
pyproject.toml. The HTTP front's nginx config (deploy/nginx.conf) is checked
for its limits, then run by a real nginx in front of a real daphne.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import require
from tests.live_server import ROOT, asgi_server, base_env, free_port, live_database, wait_until
from webapp.body_limits import FORM_FIELDS_ALLOWANCE

LONG_RUNNING = ("front", "web", "worker", "redis", "postgres")
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


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


def test_the_worker_runs_threads_on_every_servings_queue(services):
    worker = services["worker"]
    args = command(worker)
    assert args[:4] == ["celery", "-A", "webapp", "worker"]
    assert args[args.index("-P") + 1] == "threads"  # one process, one copy of each model, shared batches
    # No queue list and no serving list: it serves every discovered serving (webapp.worker.servings_to_serve),
    # so a new serving module or an installed entry point is served without editing this file.
    assert "-Q" not in args and "--queues" not in args
    assert "MLSERVICES_WORKER_SERVINGS" not in worker["environment"]


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
    script = command(services["models"])[-1]
    for serving in ("sentiment", "background_removal", "transcription", "embeddings"):
        assert f"python -m mlservices download {serving}" in script


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


# --- the monitoring profile: Prometheus and Grafana (docs/operations.md) ------------------


def test_prometheus_and_grafana_run_only_with_the_monitoring_profile(services):
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert not any(services[name].get("profiles") for name in LONG_RUNNING)  # the site itself: always on
    assert services["grafana"]["ports"] == ["127.0.0.1:${GRAFANA_PORT:-3000}:3000"]  # loopback only
    assert "ports" not in services["prometheus"]


def test_prometheus_scrapes_web_and_every_worker_with_the_metrics_token(compose, services):
    prometheus = services["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert prometheus["secrets"] == ["metrics_token"]
    assert compose["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"mlservices-web", "mlservices-worker"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    web = command(services["web"])
    assert jobs["mlservices-web"]["static_configs"] == [{"targets": [f"web:{web[web.index('-p') + 1]}"]}]
    assert "web" in services["web"]["environment"]["DJANGO_ALLOWED_HOSTS"].rsplit("}", 1)[1].split(",")
    worker = services["worker"]
    (dns,) = jobs["mlservices-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and str(dns["port"]) == worker["environment"]["WORKER_METRICS_PORT"]
    assert worker["expose"] == [worker["environment"]["WORKER_METRICS_PORT"]]
    for name in ("web", "worker"):
        assert services[name]["environment"]["METRICS_TOKEN"] == "${METRICS_TOKEN:-}"  # empty: metrics off


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(services):
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboard.json:/etc/grafana/dashboards/mlservices.json:ro" in grafana["volumes"]
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mlservices.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    assert json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())["panels"]


# --- the HTTP front: nginx in front of daphne ------------------------------------------


@pytest.fixture(scope="module")
def nginx_conf() -> str:
    return NGINX_CONF.read_text()


def directives(conf: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", conf, re.M)


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def test_the_front_is_the_only_published_service(services):
    front = services["front"]
    assert front["image"].startswith("nginx:")
    assert front["ports"] == ["${WEB_PORT:-8000}:80"]
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in front["volumes"] and NGINX_CONF.is_file()
    assert front["depends_on"]["web"]["condition"] == "service_healthy"
    published = [name for name, service in services.items() if service.get("ports") and not service.get("profiles")]
    assert published == ["front"]  # by default; the monitoring profile adds Grafana on the loopback
    assert services["web"]["expose"] == ["8000"]  # reachable from front only


def test_the_front_proxies_everything_to_daphne_and_upgrades_websockets(services, nginx_conf):
    web = command(services["web"])
    assert web[web.index("-p") + 1] == "8000" and "--proxy-headers" in web
    assert re.search(r"upstream web \{[^}]*server web:8000;", nginx_conf)
    for location in ("/", "/api/", "/ws/"):
        block = re.search(rf"location {re.escape(location)} \{{([^}}]*)\}}", nginx_conf).group(1)
        assert "proxy_pass http://web;" in block, location
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx_conf
    assert "proxy_set_header Connection $connection_upgrade;" in nginx_conf
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;", nginx_conf)
    # The origin check and ALLOWED_HOSTS see the host and port the browser used.
    assert "proxy_set_header Host $http_host;" in nginx_conf


def test_the_fronts_limits_match_the_sites(nginx_conf, settings):
    (size,) = directives(nginx_conf, "client_max_body_size")
    assert int(size) == settings.MLSERVICES_UPLOAD_MAX_BYTES + FORM_FIELDS_ALLOWANCE
    (body_timeout,) = directives(nginx_conf, "client_body_timeout")
    assert 0 < seconds(body_timeout) <= settings.HTTP_BODY_TIMEOUT
    (header_timeout,) = directives(nginx_conf, "client_header_timeout")
    assert 0 < seconds(header_timeout) <= 30
    read_timeouts = [seconds(v) for v in directives(nginx_conf, "proxy_read_timeout")]
    assert len(read_timeouts) == 2 and min(read_timeouts) >= 30  # the server's, and a longer one for /ws/
    assert "proxy_request_buffering on;" in nginx_conf  # daphne gets whole bodies, at once


def test_the_fronts_own_api_errors_are_json(nginx_conf):
    assert "error_page 413 = @api_too_large;" in nginx_conf
    assert "error_page 502 503 504 = @api_unavailable;" in nginx_conf
    bodies = dict(re.findall(r"return (\d{3}) '(\{.*\})';", nginx_conf))
    assert json.loads(bodies["413"])["error"]["code"] == "too_large"
    assert f"{int(directives(nginx_conf, 'client_max_body_size')[0]):,} bytes" in bodies["413"]
    assert json.loads(bodies["503"])["error"]["code"] == "unavailable"


def test_the_deployment_docs_describe_the_front():
    text = (ROOT / "docs" / "deployment.md").read_text()
    assert "deploy/nginx.conf" in text and "client_max_body_size" in text and "front" in text


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """deploy/nginx.conf run by nginx on a free port, in front of daphne (for `web:8000`)."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    require(nginx is not None, "nginx is not installed (apt-get install nginx-light)")
    folder = tmp_path_factory.mktemp("front")
    with contextlib.ExitStack() as stack:
        env = base_env(DATABASE_URL=stack.enter_context(live_database(folder)), MLSERVICES_MODE="inprocess")
        env.pop("REDIS_URL", None)
        web = urlsplit(stack.enter_context(asgi_server(env, folder / "daphne.log")))
        port = free_port()
        site = NGINX_CONF.read_text().replace("server web:8000;", f"server 127.0.0.1:{web.port};")
        (folder / "site.conf").write_text(site.replace("listen 80;", f"listen 127.0.0.1:{port};"))
        temp_paths = " ".join(f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                   "uwsgi", "scgi"))
        (folder / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")  # workers must reach the temp paths
            + f"daemon off;\npid {folder / 'nginx.pid'};\nevents {{}}\n"
            f"http {{ access_log {folder / 'access.log'}; {temp_paths} include {folder / 'site.conf'}; }}\n"
        )
        args = [nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf")]
        subprocess.run([*args, "-t"], check=True, capture_output=True)
        process = subprocess.Popen(args)
        stack.callback(process.wait, 15)
        stack.callback(process.terminate)
        wait_until(lambda: _answers(port), timeout=30, what=f"nginx on port {port}")
        yield port


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def through_front(port: int, head: str, *, extra: bytes = b"", until=lambda received: False) -> bytes:
    """Send a request head (and ``extra``) to the front; what comes back until it closes or ``until`` holds."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((head.replace("\n", "\r\n") + "\r\n").encode() + extra)
        received = b""
        while not until(received) and (chunk := sock.recv(65536)):
            received += chunk
    return received


def first_frame(received: bytes) -> bytes | None:
    """The payload of the first (unmasked, short) websocket frame after a 101, once it is all in."""
    frame = received.partition(b"\r\n\r\n")[2]
    return frame[2:2 + frame[1]] if len(frame) >= 2 and len(frame) >= 2 + frame[1] else None


def test_a_real_nginx_refuses_100_mb_with_the_api_json_before_the_body(front):
    head = (f"POST /api/jobs HTTP/1.1\nHost: 127.0.0.1:{front}\nContent-Type: application/json\n"
            "Content-Length: 100000000\nConnection: close\n")
    status, _, body = through_front(front, head).partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(body.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_large"


def test_a_real_nginx_passes_the_api_and_daphnes_own_limit(front):
    answer = through_front(front, f"GET /api/servings HTTP/1.1\nHost: 127.0.0.1:{front}\nConnection: close\n")
    assert answer.startswith(b"HTTP/1.1 200") and b'"servings"' in answer
    body = b'{"text": "' + b"x" * 2_000_000 + b'"}'  # under nginx's limit, over the JSON limit of the site
    head = (f"POST /api/jobs HTTP/1.1\nHost: 127.0.0.1:{front}\nContent-Type: application/json\n"
            f"Content-Length: {len(body)}\nConnection: close\n")
    answer = through_front(front, head, extra=body)
    assert answer.startswith(b"HTTP/1.1 413")
    assert "the limit here is 1,048,576 bytes" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["message"]


@pytest.mark.parametrize("origin, upgraded", [("http://127.0.0.1:{port}", True), ("http://localhost:{port}", False)])
def test_a_real_nginx_upgrades_the_websocket_for_the_pages_origin(front, origin, upgraded):
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET /ws/jobs HTTP/1.1\nHost: 127.0.0.1:{front}\nUpgrade: websocket\nConnection: Upgrade\n"
            f"Sec-WebSocket-Key: {key}\nSec-WebSocket-Version: 13\nOrigin: {origin.format(port=front)}\n")
    def answered(received: bytes) -> bool:  # a refusal's head, or the 101 and the first message
        refused = b"\r\n\r\n" in received and not received.startswith(b"HTTP/1.1 101")
        return refused or first_frame(received) is not None

    answer = through_front(front, head, until=answered)
    if not upgraded:
        assert answer.startswith(b"HTTP/1.1 403")
        return
    assert answer.startswith(b"HTTP/1.1 101")
    assert json.loads(first_frame(answer))["type"] == "jobs"  # the snapshot every socket gets first
