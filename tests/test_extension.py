"""Adding a serving: the checks at start-up, the site offering every serving, and ``startserving``.

``startserving`` scaffolds a serving into a temporary package; the tests then
drive that serving, unchanged, through the REST API, the CLI and the generic
page in a real browser, and run the test file it generated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client

import mlservices
from tests.conftest import ROOT
from tests.live_server import asgi_server, base_env, live_database, start_process, wait_until
from tests.test_browser import (  # noqa: F401  (fixtures)
    RESULT_TIMEOUT_MS,
    Site,
    console,
    open_page,
    page,
    playwright_browser,
    server_log_on_failure,
)
from tests.test_registry import ECHO_MODULE, write_distribution, write_module
from tests.test_worker import celery_client, live_db, redis_db  # noqa: F401  (fixtures)
from webapp.jobs.startup import env_options, prepare_servings

BUILT_IN = {"sentiment", "background_removal", "transcription", "embeddings"}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python manage.py ARGS`` in a fresh process: Django's real start-up."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=base_env(DATABASE_URL="sqlite:///:memory:", **env),
    )


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


# --- failing at start-up ----------------------------------------------------------------


@pytest.fixture
def registered():
    """Names a test registers, unregistered afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        mlservices.registry.unregister(name)


def test_every_discovered_serving_gets_a_configuration_and_env_model_options(monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_MODEL", "/models/minilm")
    monkeypatch.setenv("EMBEDDINGS_SHA256", "ab" * 32)
    config = prepare_servings({"sentiment": {"model": "/models/sst2"}, "embeddings": {"sha256": "cd" * 32}}, [])
    assert BUILT_IN <= set(config)
    assert config["sentiment"] == {"model": "/models/sst2"}
    assert config["embeddings"] == {"model": "/models/minilm", "sha256": "cd" * 32}  # settings win over the env
    assert env_options("embeddings", {"EMBEDDINGS_REVISION": "f" * 40, "EMBEDDINGS_NOPE": "x"}) == {"revision": "f" * 40}


def test_an_unknown_option_stops_the_start_up_with_the_known_ones():
    with pytest.raises(ImproperlyConfigured, match=r"serving 'embeddings' \(mlservices\.servings\.embeddings\.embeddings\) "
                       r"cannot be built with its settings \{'modle': 'x'\}: .*unknown option\(s\) modle; known options: model,"):
        prepare_servings({"embeddings": {"modle": "x"}}, [])


def test_a_setting_for_a_serving_nobody_registers_stops_the_start_up():
    with pytest.raises(ImproperlyConfigured, match=r"MLSERVICES configures 'embedings', which no serving registers; "
                       r"known servings: .*embeddings.*Fix the name in MLSERVICES_CONFIG"):
        prepare_servings({"embedings": {}}, [])


def test_a_malformed_spec_stops_the_start_up(registered):
    registered.append("badspec")

    @mlservices.register("badspec")
    def badspec(limit: int = 3) -> mlservices.Serving:
        return mlservices.Serving(
            name="badspec", load=lambda device: None, preprocess=lambda m, x: mlservices.Prepared(x),
            inference=lambda m, items: items, postprocess=lambda m, o, c: o,
            spec=mlservices.InputSpec(options=(mlservices.Option("n", int, 10, maximum=limit),)),
        )

    with pytest.raises(ImproperlyConfigured, match=r"serving 'badspec' .*the default of option 'n' is invalid "
                       r"\(badspec: option n=10: use 3 or less\)"):
        prepare_servings({}, [])
    assert prepare_servings({"badspec": {"limit": 20}}, [])["badspec"] == {"limit": 20}  # fixed by its settings


def test_a_factory_that_crashes_names_the_serving_and_its_module(registered):
    registered.append("crashes")
    mlservices.register("crashes")(lambda: 1 / 0)
    with pytest.raises(ImproperlyConfigured, match=r"serving 'crashes' \(tests\.test_extension\..*<lambda>\) "
                       r"cannot be built .*ZeroDivisionError"):
        prepare_servings({}, [])


def test_a_name_clash_stops_the_real_start_up(tmp_path):
    write_module(tmp_path, "clash_site.servings", ECHO_MODULE.format(
        name="sentiment", decorate='make = register("sentiment")(make)'))
    done = manage("check", PYTHONPATH=str(tmp_path), MLSERVICES_EXTRA_SERVINGS="clash_site.servings")
    assert done.returncode != 0
    assert last_line(done) == (
        "django.core.exceptions.ImproperlyConfigured: serving name 'sentiment' is registered twice: by "
        "mlservices.servings.sentiment.sentiment and by clash_site.servings.make; rename one of them "
        "(the name given to @register)"
    )


def test_a_broken_entry_point_stops_the_real_start_up(tmp_path):
    write_distribution(tmp_path, "shaky-servings", {"shaky": "shaky_servings_gone"}, version="0.1")
    done = manage("check", PYTHONPATH=str(tmp_path))
    assert done.returncode != 0
    assert "entry point shaky = 'shaky_servings_gone' (group mlservices.servings) of shaky-servings 0.1 " \
           "failed to load: ModuleNotFoundError" in last_line(done)


def test_an_unknown_option_stops_the_real_start_up_and_a_good_one_starts():
    done = manage("check", MLSERVICES_CONFIG=json.dumps({"sentiment": {"max_lenght": 64}}))
    assert done.returncode != 0
    assert "serving 'sentiment'" in last_line(done) and "unknown option(s) max_lenght" in last_line(done)
    done = manage("check", MLSERVICES_CONFIG=json.dumps({"sentiment": {"max_length": 64}}))
    assert done.returncode == 0, done.stderr


# --- the site offers every discovered serving ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_site_offers_every_discovered_serving(settings):
    from webapp.worker import servings_to_serve

    assert BUILT_IN <= set(settings.MLSERVICES)  # filled in when Django started
    client = Client()
    listed = [s["name"] for s in client.get("/api/servings").json()["servings"]]
    assert BUILT_IN <= set(listed)
    html = client.get("/s/embeddings/").content.decode()
    assert 'data-serving="embeddings"' in html
    for name in BUILT_IN - {settings.MLSERVICES_HOME_SERVING}:
        assert f'href="/s/{name}/" data-testid="nav-serving" data-serving="{name}"' in html
    settings.MLSERVICES_WORKER_SERVINGS = []
    settings.MLSERVICES_EXTRA_SERVINGS = []
    assert BUILT_IN <= set(servings_to_serve(["celery"]))  # a worker without -Q serves them all


def test_an_installed_distributions_serving_runs_in_the_cli(tmp_path):
    """`pip install` leaves a module and a dist-info folder; that is all the CLI needs."""
    write_module(tmp_path, "acme_cli_servings.echo", ECHO_MODULE.format(name="acme_cli_echo", decorate="").replace(
        "from mlservices import Prepared, Serving, register",
        "from mlservices import InputSpec, Prepared, Serving, register",
    ).replace('name="acme_cli_echo",', 'name="acme_cli_echo", spec=InputSpec(kind="text"),'))
    write_distribution(tmp_path, "acme-cli-servings", {"acme_cli_echo": "acme_cli_servings.echo:make"})
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(tmp_path), "MLSERVICES_OFFLINE": "1"}
    listed = subprocess.run([sys.executable, "-m", "mlservices", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "acme_cli_echo" in listed.stdout.split()
    done = subprocess.run([sys.executable, "-m", "mlservices", "run", "acme_cli_echo", "--text", "hi"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"echo": {"text": "hi"}}


# --- startserving ---------------------------------------------------------------------------


@dataclasses.dataclass
class Scaffolded:
    root: Path  # on PYTHONPATH; holds the package
    package: str
    module: Path
    test: Path
    doc: Path
    output: str


@pytest.fixture(scope="module")
def greeter(tmp_path_factory) -> Scaffolded:
    """``startserving greeter`` into a fresh package ``ext_servings`` (nothing else is edited)."""
    root = tmp_path_factory.mktemp("ext-root")
    (root / "ext_servings").mkdir()
    (root / "ext_servings" / "__init__.py").write_text('"""A site\'s own servings."""\n')
    import io

    out = io.StringIO()
    call_command("startserving", "greeter", directory=str(root / "ext_servings"),
                 tests_directory=str(root / "tests"), docs_directory=str(root / "docs"), stdout=out)
    sys.path.insert(0, str(root))
    try:
        mlservices.discover("ext_servings")
        yield Scaffolded(root, "ext_servings", root / "ext_servings" / "greeter.py", root / "tests" / "test_greeter.py",
                         root / "docs" / "greeter.md", out.getvalue())
    finally:
        sys.path.remove(str(root))
        mlservices.registry.unregister("greeter")
        for module in [m for m in sys.modules if m == "ext_servings" or m.startswith("ext_servings.")]:
            del sys.modules[module]


def test_startserving_writes_the_module_its_test_and_a_docs_page(greeter):
    assert greeter.module.is_file() and greeter.test.is_file() and greeter.doc.is_file()
    assert "greeter" in mlservices.names()
    source = greeter.module.read_text()
    assert '@register(NAME)\ndef greeter(model: str = "", max_chars: int = 10_000) -> Serving:' in source
    assert "TODO" in source and "trust_remote_code" in source
    assert "import ext_servings.greeter as serving" in greeter.test.read_text()
    assert greeter.doc.read_text().startswith("# Greeter (`greeter`)")
    assert "MLSERVICES_EXTRA_SERVINGS=ext_servings" in greeter.output
    compile(source, str(greeter.module), "exec")


def test_the_generated_test_file_passes(greeter):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(greeter.test)],
        cwd=greeter.root, capture_output=True, text=True, timeout=300,
        env={**base_env(), "PYTHONPATH": os.pathsep.join([str(greeter.root), str(ROOT)])},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 passed" in done.stdout


@pytest.mark.django_db(transaction=True)
def test_the_new_serving_runs_through_the_rest_api(greeter, settings):
    settings.MLSERVICES_MODE = "inprocess"
    mlservices.configure({"greeter": {}}, device="cpu")
    try:
        client = Client()
        assert "greeter" in [s["name"] for s in client.get("/api/servings").json()["servings"]]
        response = client.post("/api/jobs", content_type="application/json",
                               data=json.dumps({"serving": "greeter", "input": {"text": "hello brave world", "shout": True}}))
        assert response.status_code == 201, response.content
        job_id = response.json()["id"]

        def finished():
            job = client.get(f"/api/jobs/{job_id}").json()
            return job if job["status"] in ("done", "failed") else None

        job = wait_until(finished, timeout=60, what=f"job {job_id}")
        assert job["status"] == "done", job
        assert job["result"] == {"text": "HELLO BRAVE WORLD", "words": 3, "characters": 17, "model": "greeter@builtin"}
        assert job["model_version"] == "greeter@builtin"
        refused = client.post("/api/jobs", content_type="application/json",
                              data=json.dumps({"serving": "greeter", "input": {"text": "hi", "shout": "loud"}}))
        assert refused.status_code == 400 and "option shout='loud': send a boolean" in refused.json()["error"]["message"]
    finally:
        mlservices.configure({})


def test_the_new_serving_runs_in_the_cli(greeter):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(greeter.root), "PYTHONPATH": str(greeter.root),
           "MLSERVICES_EXTRA_SERVINGS": greeter.package, "MLSERVICES_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mlservices", "run", "greeter", "--text", "hi there", "-o", "shout=true"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "HI THERE", "words": 2, "characters": 8, "model": "greeter@builtin"}
    refused = subprocess.run([sys.executable, "-m", "mlservices", "run", "greeter", "--text", " "],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip() == "error: greeter: the text is empty; send some text"


@pytest.mark.redis
@pytest.mark.worker
def test_a_worker_started_without_queues_serves_the_new_serving_on_its_own_queue(
    greeter, tmp_path, tiny_sentiment_model, redis_db, redis_url, live_db, celery_client
):
    """No -Q and no MLSERVICES_WORKER_SERVINGS (as in docker-compose.yml): the worker loads every
    discovered serving and consumes each one's queue, the new one's included."""
    from tests.test_worker import HOST, enqueue, log_tail, ping, report, worker_env
    from webapp.jobs.models import Job

    env = worker_env(live_db, redis_url, PYTHONPATH=str(greeter.root), MLSERVICES_EXTRA_SERVINGS=greeter.package,
                     SENTIMENT_MODEL=str(tiny_sentiment_model))
    env.pop("MLSERVICES_WORKER_SERVINGS", None)
    node, log = f"extension@{HOST}", tmp_path / "worker.log"
    args = [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-P", "threads", "-c", "2", "-n", node,
            "-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    with start_process(args, env, log) as process:

        def ready():
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode}:\n{log_tail(log)}")
            return ping(celery_client, node)

        wait_until(ready, timeout=120, what=f"worker {node} to answer pings")
        answer = report(celery_client, node)
        assert {"greeter", "sentiment"} <= set(answer["servings"]), log_tail(log)
        assert "embeddings" in set(answer["servings"]) | set(answer["load_errors"])  # offline here: a load error
        job = Job.objects.create(serving="greeter", input={"text": "hello brave world", "shout": False},
                                 input_summary="hello brave world", session_key="extension-test")
        enqueue(celery_client, [str(job.pk)], "greeter")  # what dispatch sends: queue=job.serving

        def finished():
            job.refresh_from_db()
            return job.status in ("done", "failed")

        wait_until(finished, timeout=60, what="the greeter job to finish")
        assert job.status == "done", (job.error, log_tail(log))
        assert job.result == {"text": "hello brave world", "words": 3, "characters": 17, "model": "greeter@builtin"}
        assert job.model_version == "greeter@builtin"


@pytest.fixture(scope="module")
def greeter_site(greeter, playwright_browser, tmp_path_factory, tiny_sentiment_model) -> Site:  # noqa: F811
    tmp_path = tmp_path_factory.mktemp("greeter-site")
    log = tmp_path / "daphne.log"
    with live_database(tmp_path) as database_url:
        env = base_env(DATABASE_URL=database_url, PYTHONPATH=str(greeter.root), MLSERVICES_EXTRA_SERVINGS=greeter.package,
                       SENTIMENT_MODEL=str(tiny_sentiment_model), MLSERVICES_MODE="inprocess",
                       DJANGO_MEDIA_ROOT=str(tmp_path / "media"))
        env.pop("REDIS_URL", None)
        with asgi_server(env, log) as url:
            yield Site(url, log)


@pytest.mark.browser
def test_the_new_serving_works_on_its_generic_page(page, greeter_site):  # noqa: F811
    from playwright.sync_api import expect

    site = greeter_site
    with server_log_on_failure(site):
        open_page(page, site)
        page.locator("[data-testid=nav-serving][data-serving=greeter]").click()
        expect(page).to_have_url(site.url + "/s/greeter/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(page.locator("h1")).to_have_text("Greeter")
        shout = page.locator("[data-testid=options]").get_by_label("Shout")
        expect(shout).to_have_attribute("type", "checkbox")
        expect(shout).not_to_be_checked()
        page.locator("#text").fill("hello brave world")
        shout.check()
        page.locator("[data-testid=submit-job]").click()

        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", "done", timeout=RESULT_TIMEOUT_MS)
        result = job.locator("[data-testid=job-result]")
        expect(result.locator("[data-field=text]")).to_have_text("HELLO BRAVE WORLD")
        expect(result.locator("[data-field=words]")).to_have_text("3")
        expect(result.locator("[data-field=model]")).to_have_text("greeter@builtin")


def test_startserving_refuses_bad_names_taken_names_and_existing_files(greeter, tmp_path):
    def start(name: str, **options):
        call_command("startserving", name, directory=str(tmp_path / "mods"), tests_directory=str(tmp_path / "tests"),
                     docs_directory=str(tmp_path / "docs"), stdout=open(os.devnull, "w"), **options)

    for bad in ("9lives", "Greeter", "has-dash", "class", ""):
        with pytest.raises(CommandError, match=rf"'{bad}' is not a valid serving name: use a lowercase Python identifier"):
            start(bad)
    with pytest.raises(CommandError, match=r"a serving named 'embeddings' already exists "
                       r"\(mlservices\.servings\.embeddings\.embeddings\); choose another name"):
        start("embeddings")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_fresh.py").write_text("# mine\n")
    with pytest.raises(CommandError, match=r"test_fresh\.py already exists; choose another name, or move that file away"):
        start("fresh")
    assert (tmp_path / "tests" / "test_fresh.py").read_text() == "# mine\n"
    assert not (tmp_path / "mods").exists()  # nothing written
    with pytest.raises(CommandError, match=r"a module named json already exists"):
        start("json")


def test_the_templates_ship_as_package_data():
    """``pip install`` must carry the templates: pyproject's package-data globs cover each of them."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mlservices.scaffold"]
    folder = ROOT / "mlservices" / "scaffold"
    templates = [p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".py"]
    assert sorted(templates) == ["doc.md.txt", "serving.py.txt", "test.py.txt"]
    assert all(any(fnmatch.fnmatch(name, g) for g in globs) for name in templates)
