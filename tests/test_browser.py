"""The servings' pages in a real Chromium, against a real daphne server.

Playwright drives Debian's /usr/bin/chromium (``playwright install`` is never
run); without it these tests skip, and under CI=true they fail. Every wait is
Playwright's own ``expect``/``wait_for`` with a deadline: no sleeps.

The sentiment page (``/``) runs on a tiny random model; the generic pages run
on the toy servings of ``tests/worker_servings`` (``windows`` streams its
items, held by a file gate the test opens one batch at a time; ``files``
takes an image and returns a file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import struct
import zlib
from pathlib import Path

import pytest

from tests.conftest import require
from tests.live_server import asgi_server, base_env, live_database

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RESULT_TIMEOUT_MS = 60_000  # the first prediction loads the model in the server
MAX_TEXT_CHARS = 500  # set on the server, so the page's limit is seen to come from settings
LABEL = re.compile(r"^(NEGATIVE|POSITIVE)$")


@dataclasses.dataclass
class Site:
    url: str
    log: Path
    gate: Path | None = None  # the windows toy's file gate (tests/worker_servings/toy.py)


@pytest.fixture(scope="module")
def playwright_browser():
    require(CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def _site(tmp_path: Path, sentiment_model: Path, **extra_env: str) -> Site:
    log = tmp_path / "daphne.log"
    with live_database(tmp_path) as database_url:
        env = base_env(
            DATABASE_URL=database_url,
            SENTIMENT_MODEL=str(sentiment_model),
            MLSERVICES_MAX_TEXT_CHARS=str(MAX_TEXT_CHARS),
            DJANGO_MEDIA_ROOT=str(tmp_path / "media"),
            **extra_env,
        )
        with asgi_server(env, log) as url:
            yield Site(url, log)


@pytest.fixture(scope="module")
def site(playwright_browser, tmp_path_factory, tiny_sentiment_model) -> Site:
    with _site(tmp_path_factory.mktemp("browser-site"), tiny_sentiment_model) as s:
        yield s


@pytest.fixture(scope="module")
def site_without_model(playwright_browser, tmp_path_factory) -> Site:
    tmp_path = tmp_path_factory.mktemp("browser-site-no-model")
    with _site(tmp_path, tmp_path / "no-such-model") as s:
        yield s


@pytest.fixture(scope="module")
def toy_site(playwright_browser, tmp_path_factory, tiny_sentiment_model) -> Site:
    """The site with the toy servings; ``windows`` passes one item per batch, through its gate."""
    tmp_path = tmp_path_factory.mktemp("browser-toy-site")
    gate = tmp_path / "windows-gate"
    config = {"windows": {"gate": str(gate), "batch_size": 1, "batch_timeout_ms": 0}}
    with _site(
        tmp_path, tiny_sentiment_model,
        MLSERVICES_EXTRA_SERVINGS="tests.worker_servings", MLSERVICES_CONFIG=json.dumps(config),
    ) as s:
        yield dataclasses.replace(s, gate=gate)


@dataclasses.dataclass
class Console:
    """What the page logged as errors; a test names the ones it provokes on purpose."""

    errors: list[str] = dataclasses.field(default_factory=list)
    expected: list[re.Pattern] = dataclasses.field(default_factory=list)

    def expect_error(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.expected)]


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(playwright_browser, console):
    """A fresh browser context (so a fresh session) whose script errors fail the test."""
    context = playwright_browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and console.errors.append(f"console.{msg.type}: {msg.text}"))
    yield page
    context.close()
    unexpected = console.unexpected()
    assert not unexpected, "the page reported errors:\n" + "\n".join(unexpected)


@contextlib.contextmanager
def server_log_on_failure(site: Site):
    """Add the server's log to a failed assertion: it says why, the browser cannot."""
    try:
        yield
    except AssertionError as exc:
        tail = site.log.read_text(errors="replace")[-4000:] if site.log.exists() else "(no log)"
        raise AssertionError(f"{exc}\n--- daphne log (tail) ---\n{tail}") from exc


def open_page(page, site: Site, path: str = "/"):
    from playwright.sync_api import expect

    page.goto(site.url + path)
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")


def test_typing_shows_a_label_score_and_model_version(page, site, tiny_sentiment_model):
    from playwright.sync_api import expect

    with server_log_on_failure(site):
        open_page(page, site)
        text = page.locator("#text")
        expect(text).to_have_attribute("maxlength", str(MAX_TEXT_CHARS))
        expect(page.get_by_label("Text to analyse")).to_be_visible()
        expect(page.locator("#save-job")).to_be_disabled()

        text.fill("I loved this movie, the acting was great!")

        expect(page.locator("#char-count")).to_have_text("41 / 500")
        expect(page.locator("#result-label")).to_have_text(LABEL, timeout=RESULT_TIMEOUT_MS)
        expect(page.locator("#result-model")).to_have_text(
            re.compile(rf"^{re.escape(tiny_sentiment_model.name)}@sha256:[0-9a-f]{{12}}$")
        )
        expect(page.locator("#result-score")).to_have_text(re.compile(r"^\d{1,3}\.\d%$"))
        expect(page.locator("#result")).to_have_attribute("data-state", "done")
        expect(page.locator("#result")).to_have_attribute("aria-live", "polite")
        score = float(page.locator("#result-score").get_attribute("data-score"))
        width = page.locator("#result-bar").evaluate("el => el.style.width")
        assert width == f"{score * 100:.1f}%"
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#save-job")).to_be_enabled()

        # Typing more sends a newer request, and its answer replaces the old one.
        first_request = page.locator("#result").get_attribute("data-request-id")
        text.press_sequentially(" so good", delay=20)
        expect(page.locator("#result")).not_to_have_attribute("data-request-id", first_request)
        expect(page.locator("#result")).to_have_attribute("data-state", "done", timeout=RESULT_TIMEOUT_MS)
        expect(page.locator("#char-count")).to_have_text("49 / 500")

        # At the limit typing stops and the counter says so; text longer than the
        # model reads (the tiny model: 64 tokens) gets the "truncated" note.
        expect(page.locator("#result-truncated")).to_be_hidden()
        long_text = ("good movie " * 100)[:MAX_TEXT_CHARS]
        text.evaluate("(el, value) => { el.value = value; el.dispatchEvent(new Event('input')); }", long_text)
        text.press("End")
        text.press_sequentially("!!")
        expect(page.locator("#char-count")).to_have_text(f"{MAX_TEXT_CHARS} / {MAX_TEXT_CHARS}")
        expect(page.locator("#char-count")).to_have_class(re.compile(r"\bat-limit\b"))
        assert text.input_value() == long_text
        expect(page.locator("#result-truncated")).to_be_visible(timeout=RESULT_TIMEOUT_MS)

        # Clearing the text clears the result.
        text.fill("")
        expect(page.locator("#result")).to_have_attribute("data-state", "idle")
        expect(page.locator("#result-label")).to_have_text("")
        expect(page.locator("#save-job")).to_be_disabled()


def test_saved_job_finishes_live_and_survives_a_reload(page, site):
    from playwright.sync_api import expect

    sentence = "That film was a great story, not a bad plot."
    with server_log_on_failure(site):
        open_page(page, site)
        expect(page.locator("#jobs-empty")).to_be_visible()
        page.locator("#text").fill(sentence)
        page.locator("#save-job").click()

        job = page.locator("#jobs > li").first
        expect(job.locator("[data-testid=job-text]")).to_have_text(sentence)
        expect(job).to_have_attribute("data-status", "done", timeout=RESULT_TIMEOUT_MS)
        expect(job.locator("[data-testid=job-status]")).to_have_text("done")
        expect(job.locator("[data-testid=job-label]")).to_have_text(LABEL)
        expect(job.locator("[data-testid=job-score]")).to_have_text(re.compile(r"^\d{1,3}%$"))
        expect(job.locator("[data-testid=job-model]")).to_contain_text("@sha256:")
        label = job.locator("[data-testid=job-label]").inner_text()
        job_id = job.get_attribute("data-job-id")
        expect(page.locator("#jobs-empty")).to_be_hidden()

        page.reload()
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(page.locator("#jobs > li")).to_have_count(1)
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-job-id", job_id)
        expect(job).to_have_attribute("data-status", "done")
        expect(job.locator("[data-testid=job-text]")).to_have_text(sentence)
        expect(job.locator("[data-testid=job-label]")).to_have_text(label)
        expect(job.locator("[data-testid=job-model]")).to_contain_text("@sha256:")
        expect(job.locator("time")).to_have_count(2)
        expect(job).to_contain_text("took")

        # A second job goes on top, above the first.
        page.locator("#text").fill("I hate this awful movie.")
        page.locator("#save-job").click()
        expect(page.locator("#jobs > li")).to_have_count(2)
        expect(page.locator("#jobs > li").first.locator("[data-testid=job-text]")).to_have_text(
            "I hate this awful movie."
        )
        expect(page.locator("#jobs > li").first).to_have_attribute("data-status", "done", timeout=RESULT_TIMEOUT_MS)
        expect(page.locator("#jobs > li").nth(1)).to_have_attribute("data-job-id", job_id)


def test_missing_model_shows_the_install_hint_not_a_traceback(page, site_without_model):
    from playwright.sync_api import expect

    site = site_without_model
    with server_log_on_failure(site):
        open_page(page, site)
        page.locator("#text").fill("I love it")

        error = page.locator("#error")
        expect(error).to_be_visible(timeout=RESULT_TIMEOUT_MS)
        expect(error).to_have_attribute("role", "alert")
        expect(error).to_have_attribute("data-code", "model_not_installed")
        expect(error).to_contain_text("The model is not installed")
        expect(error).to_contain_text("does not exist")
        expect(error).to_contain_text("python -m mlservices download sentiment")
        expect(error).to_contain_text("SENTIMENT_MODEL")
        expect(error).not_to_contain_text("Traceback")
        expect(error).not_to_contain_text('File "')
        expect(page.locator("#result")).to_have_attribute("data-state", "error")
        expect(page.locator("#result-label")).to_have_text("")

        # Saved anyway, the job fails with the same readable message.
        page.locator("#save-job").click()
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", "failed", timeout=RESULT_TIMEOUT_MS)
        expect(job.locator("[data-testid=job-error]")).to_contain_text("python -m mlservices download sentiment")
        expect(job.locator("[data-testid=job-error]")).not_to_contain_text("Traceback")

        page.reload()
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", "failed")
        expect(job.locator("[data-testid=job-error]")).to_contain_text("does not exist")


def _job(job_id: str, status: str, queued_at: str, **fields) -> dict:
    return {
        "id": job_id, "serving": "sentiment", "status": status, "input_summary": f"text of {job_id}",
        "result": None, "error": "", "error_code": "", "model_version": "", "attempts": 1,
        "queued_at": queued_at, "started_at": None, "finished_at": None, **fields,
    }


def test_stale_answers_late_job_states_and_reconnects_with_a_scripted_socket(page, site):
    """The websocket is played by the test (Playwright's route_web_socket), so
    out-of-order answers and a dropped connection happen exactly when wanted."""
    from playwright.sync_api import expect

    sockets: list = []  # one WebSocketRoute per connection the page made
    held: list[dict] = []

    def prediction(request_id, label, score, model, truncated=False) -> str:
        result = {"label": label, "score": score, "scores": {}, "model": model, "truncated": truncated}
        return json.dumps({"type": "prediction", "request_id": request_id, "result": result})

    def on_connect(ws):
        sockets.append(ws)
        connection = len(sockets)
        ws.send(json.dumps({"type": "jobs", "jobs": []}))

        def on_message(raw):
            message = json.loads(raw)
            assert message["type"] == "predict" and message["serving"] == "sentiment"
            text, request_id = message["input"]["text"], message["request_id"]
            if connection > 1:  # the page sent its text again after reconnecting
                ws.send(prediction(request_id, "NEGATIVE", 0.61, "mock@reconnected"))
            elif text == "first":
                held.append(message)  # answered only after the newer request
            else:
                ws.send(prediction(request_id, "POSITIVE", 0.9, "mock@newer", truncated=True))
                for old in held:
                    ws.send(prediction(old["request_id"], "NEGATIVE", 0.2, "mock@stale"))
                # A job finishes, then an older state of it arrives late; then a marker.
                done = {"label": "POSITIVE", "score": 0.75}
                ws.send(json.dumps({"type": "job", "job": _job(
                    "job-1", "done", "2026-01-01T10:00:00+00:00", result=done, model_version="mock@1",
                    started_at="2026-01-01T10:00:01+00:00", finished_at="2026-01-01T10:00:01.250000+00:00",
                )}))
                ws.send(json.dumps({"type": "job", "job": _job("job-1", "running", "2026-01-01T10:00:00+00:00")}))
                ws.send(json.dumps({"type": "jobs", "jobs": [
                    _job("job-2", "failed", "2026-01-01T11:00:00+00:00", error="sentiment: the text is empty"),
                    _job("job-0", "queued", "2026-01-01T09:00:00+00:00"),
                ]}))

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r"/ws/jobs$"), on_connect)
    with server_log_on_failure(site):
        open_page(page, site)
        result = page.locator("#result")
        page.locator("#text").fill("first")
        expect(result).to_have_attribute("data-state", "analysing")
        expect(page.locator("#result-status")).to_have_text("Analysing…")
        page.locator("#text").fill("first and second")

        jobs = page.locator("#jobs > li")
        expect(jobs).to_have_count(3)  # everything the socket sent has been handled
        expect(page.locator("#result-label")).to_have_text("POSITIVE")
        expect(page.locator("#result-label")).to_have_attribute("data-tone", "positive")
        expect(page.locator("#result-model")).to_have_text("mock@newer")
        expect(page.locator("#result-score")).to_have_text("90.0%")
        assert page.locator("#result-bar").evaluate("el => el.style.width") == "90%"
        expect(page.locator("#result-truncated")).to_be_visible()

        # Newest first; the late "running" did not undo "done"; failures show their message.
        assert [jobs.nth(i).get_attribute("data-job-id") for i in range(3)] == ["job-2", "job-1", "job-0"]
        expect(jobs.nth(0).locator("[data-testid=job-status]")).to_have_text("failed")
        expect(jobs.nth(0).locator("[data-testid=job-error]")).to_have_text("sentiment: the text is empty")
        expect(jobs.nth(1)).to_have_attribute("data-status", "done")
        expect(jobs.nth(1).locator("[data-testid=job-label]")).to_have_text("POSITIVE")
        expect(jobs.nth(1).locator("[data-testid=job-score]")).to_have_text("75%")
        expect(jobs.nth(1)).to_contain_text("took 250 ms")
        expect(jobs.nth(2).locator("[data-testid=job-status]")).to_have_text("queued")

        # The connection drops: the indicator says so, the page reconnects and resends its text.
        page.evaluate("""() => {
            window.connectionStates = [];
            new MutationObserver(() => window.connectionStates.push(
                document.getElementById("connection").dataset.state
            )).observe(document.getElementById("connection"), {attributes: true});
        }""")
        sockets[0].close(code=1011, reason="test")
        expect(page.locator("#result-model")).to_have_text("mock@reconnected", timeout=20_000)
        expect(page.locator("#result-label")).to_have_text("NEGATIVE")
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        states = page.evaluate("window.connectionStates")
        assert "closed" in states and states[-1] == "open", states
        assert len(sockets) == 2


# --- Every serving's page: navigation, forms from specs, files, streams ------------------


def png_bytes(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour, built here (no image library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def open_gate(site: Site, batches: int | None) -> None:
    """Let the windows toy's first ``batches`` batches through in all (None: all of them, for good).

    The file is replaced, never rewritten in place: the server must not read it
    half-written (an empty gate file means "open for good")."""
    staged = site.gate.with_name(site.gate.name + ".new")
    staged.write_text("" if batches is None else str(batches))
    staged.replace(site.gate)


def test_the_nav_lists_every_serving_and_a_generic_page_builds_its_form_from_the_spec(page, toy_site, console):
    from playwright.sync_api import expect

    site = toy_site
    with server_log_on_failure(site):
        open_page(page, site)
        servings = [s["name"] for s in page.request.get(site.url + "/api/servings").json()["servings"]]
        assert {"sentiment", "toy", "windows", "files"} <= set(servings)
        links = page.locator("[data-testid=nav] [data-testid=nav-serving]")
        expect(links).to_have_count(len(servings))
        assert [links.nth(i).get_attribute("data-serving") for i in range(len(servings))] == servings
        sentiment = page.locator("[data-testid=nav-serving][data-serving=sentiment]")
        expect(sentiment).to_have_attribute("href", "/")
        expect(sentiment).to_have_attribute("aria-current", "page")
        expect(page.locator("[data-testid=nav] [aria-current]")).to_have_count(1)

        # Another serving's page, reached through the nav: the same template, its own form.
        page.locator("[data-testid=nav-serving][data-serving=windows]").click()
        expect(page).to_have_url(site.url + "/s/windows/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(page.locator("h1")).to_have_text("Windows")
        def nav_link(serving: str):
            return page.locator(f"[data-testid=nav] [data-serving={serving}]")

        expect(nav_link("windows")).to_have_attribute("aria-current", "page")
        expect(nav_link("sentiment")).not_to_have_attribute("aria-current", "page")
        expect(page.locator("#text")).to_have_count(0)  # no sentiment box here

        # The options form comes from spec.options: integers with their ranges, defaults and help.
        options = page.locator("[data-testid=options]")
        windows = options.get_by_label("Windows")
        expect(windows).to_have_attribute("type", "number")
        expect(windows).to_have_attribute("min", "1")
        expect(windows).to_have_attribute("max", "1000")
        expect(windows).to_have_attribute("step", "1")
        expect(windows).to_have_value("3")
        expect(options.get_by_label("Fail at")).to_have_value("-1")
        expect(options).to_contain_text("how many batch items the input fans out into")
        expect(page.locator("[data-testid=json-input]")).to_be_visible()
        expect(page.locator("[data-testid=jobs-empty]")).to_be_visible()

        # Bad JSON is refused in place, before anything is sent.
        page.locator("[data-testid=json-input]").fill("{not json")
        page.locator("[data-testid=submit-job]").click()
        expect(page.locator("[data-testid=json-error]")).to_contain_text("not valid JSON")
        expect(page.locator("[data-testid=submit-status]")).to_have_text("Not submitted.")

        # A file serving's page: a drop zone accepting its content types, a checkbox option.
        page.goto(site.url + "/s/files/")
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(page.locator("[data-testid=file-input]")).to_have_attribute("accept", "image/gif,image/jpeg,image/png")
        expect(page.locator("[data-testid=dropzone]")).to_contain_text("PNG, JPEG or GIF · up to 1 MB")
        flip = page.locator("[data-testid=options]").get_by_label("Flip")
        expect(flip).to_have_attribute("type", "checkbox")
        expect(flip).not_to_be_checked()
        expect(page.locator("[data-testid=submit-job]")).to_be_disabled()  # no file yet

        # An unknown serving: a 404 page that still offers the nav.
        console.expect_error(r"the server responded with a status of 404")
        response = page.goto(site.url + "/s/no_such_serving/")
        assert response.status == 404
        expect(page.locator("[data-testid=not-found]")).to_contain_text("No serving named no_such_serving")
        expect(page.locator("[data-testid=nav-serving]")).to_have_count(len(servings))


def test_an_image_is_previewed_uploaded_and_its_job_finishes_live_with_its_files(page, toy_site, console):
    from playwright.sync_api import expect

    site = toy_site
    image = png_bytes(64, 48, (68, 83, 214))
    with server_log_on_failure(site):
        open_page(page, site, "/s/files/")
        submit = page.locator("[data-testid=submit-job]")

        # Too large for the spec's limit: refused at once, in place, nothing uploaded.
        page.locator("[data-testid=file-input]").set_input_files(
            {"name": "huge.png", "mimeType": "image/png", "buffer": image + b"\0" * 1_000_000}
        )
        expect(page.locator("[data-testid=upload-error]")).to_have_attribute("data-code", "too_large")
        expect(page.locator("[data-testid=upload-error]")).to_contain_text("the limit is 1 MB")
        expect(page.locator("[data-testid=preview]")).to_be_hidden()
        expect(submit).to_be_disabled()

        # A real PNG, dropped on the zone: an instant preview from the file itself, then upload and job.
        page.locator("[data-testid=dropzone]").evaluate(
            """(zone, bytes) => {
                const data = new DataTransfer();
                data.items.add(new File([new Uint8Array(bytes)], "dot.png", {type: "image/png"}));
                zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
            }""",
            list(image),
        )
        expect(page.locator("[data-testid=upload-error]")).to_be_hidden()
        preview = page.locator("[data-testid=preview-image]")
        expect(preview).to_be_visible()
        assert preview.get_attribute("src").startswith("blob:")
        page.wait_for_function("el => el.complete && el.naturalWidth === 64", arg=preview.element_handle())
        expect(page.locator("[data-testid=preview-name]")).to_have_text("dot.png")
        submit.click()

        expect(page.locator("[data-testid=upload-progress-text]")).to_have_text(f"Uploaded · {len(image)} B PNG")
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", "done", timeout=RESULT_TIMEOUT_MS)
        expect(job.locator("[data-testid=job-status]")).to_have_text("done")
        expect(job.locator("[data-testid=job-text]")).to_contain_text("dot.png")
        expect(job.locator("[data-testid=job-result] [data-field=bytes]")).to_have_text(str(len(image)))
        expect(job.locator("[data-testid=job-result] [data-field=doubled]")).to_have_text(str(2 * len(image)))
        job_id = job.get_attribute("data-job-id")

        # Its files, through the owner-checked URLs: the artifact, and the uploaded image as a thumbnail.
        link = job.locator("[data-testid=job-file]")
        expect(link).to_have_count(1)
        expect(link).to_contain_text("copy.bin")
        expect(link).to_have_attribute("href", f"/api/jobs/{job_id}/files/copy.bin")
        assert page.request.get(site.url + link.get_attribute("href")).body() == image
        thumb = job.locator("[data-testid=job-input-thumb]")
        expect(thumb).to_have_attribute("src", f"/api/jobs/{job_id}/files/input")
        page.wait_for_function("el => el.complete && el.naturalWidth === 64", arg=thumb.element_handle())

        # An option reaches the serving: flip reverses the copy.
        page.locator("[data-testid=options]").get_by_label("Flip").check()
        submit.click()
        expect(page.locator("#jobs > li")).to_have_count(2)
        flipped = page.locator("#jobs > li").first
        expect(flipped).to_have_attribute("data-status", "done", timeout=RESULT_TIMEOUT_MS)
        flipped_link = flipped.locator("[data-testid=job-file]")
        assert page.request.get(site.url + flipped_link.get_attribute("href")).body() == image[::-1]

        # A text file named .png: the server sniffs it and says why, in place.
        console.expect_error(r"Failed to load resource: the server responded with a status of 400")
        page.locator("[data-testid=file-input]").set_input_files(
            {"name": "notes.png", "mimeType": "image/png", "buffer": b"just some text, not an image\n"}
        )
        submit.click()
        error = page.locator("[data-testid=upload-error]")
        expect(error).to_be_visible()
        expect(error).to_have_attribute("data-code", "invalid_input")
        expect(error).to_contain_text("not a file type it can read")
        expect(error).to_contain_text("png, jpeg, gif")
        expect(page.locator("[data-testid=submit-status]")).to_have_text("Not submitted.")
        expect(page.locator("#jobs > li")).to_have_count(2)

        page.reload()
        expect(page.locator("#jobs > li")).to_have_count(2)
        expect(page.locator("#jobs > li").nth(1)).to_have_attribute("data-job-id", job_id)
        expect(page.locator("#jobs > li").nth(1).locator("[data-testid=job-file]")).to_contain_text("copy.bin")


def test_a_streaming_job_shows_its_progress_and_partials_live_and_after_a_reload(page, toy_site):
    from playwright.sync_api import expect

    site = toy_site
    with server_log_on_failure(site):
        open_gate(site, 0)  # the gate holds every item until the test lets it through
        open_page(page, site, "/s/windows/")
        options = page.locator("[data-testid=options]")
        options.get_by_label("Windows").fill("4")
        options.get_by_label("Value").fill("10")
        page.locator("[data-testid=submit-job]").click()

        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", "running", timeout=RESULT_TIMEOUT_MS)
        expect(job.locator("[data-testid=job-progress]")).to_have_count(0)  # nothing done yet
        expect(job.locator(".elapsed")).to_contain_text("running for")

        # One item at a time: the bar moves and each item's output appears.
        open_gate(site, 1)
        expect(job.locator("[data-testid=job-progress-text]")).to_have_text("1 of 4 · 25%")
        assert job.locator("[data-testid=job-progress-bar]").evaluate("el => el.style.width") == "25%"
        expect(job.locator("[data-testid=job-partial]")).to_have_text(['{"index":0,"output":20}'])
        open_gate(site, 2)
        expect(job.locator("[data-testid=job-progress-text]")).to_have_text("2 of 4 · 50%")
        assert job.locator("[data-testid=job-progress-bar]").evaluate("el => el.style.width") == "50%"
        expect(job.locator("[data-testid=job-partial]")).to_have_text(
            ['{"index":0,"output":20}', '{"index":1,"output":22}']
        )
        expect(job).to_have_attribute("data-status", "running")

        # A reload mid-way shows what was done so far, from the server.
        job_id = job.get_attribute("data-job-id")
        page.reload()
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-job-id", job_id)
        expect(job).to_have_attribute("data-status", "running")
        expect(job.locator("[data-testid=job-progress-text]")).to_have_text("2 of 4 · 50%")
        expect(job.locator("[data-testid=job-partial]")).to_have_text(
            ['{"index":0,"output":20}', '{"index":1,"output":22}']
        )

        # The rest arrives live; the final result replaces the partials.
        open_gate(site, 3)
        expect(job.locator("[data-testid=job-progress-text]")).to_have_text("3 of 4 · 75%")
        open_gate(site, None)
        expect(job).to_have_attribute("data-status", "done", timeout=RESULT_TIMEOUT_MS)
        expect(job.locator("[data-testid=job-progress]")).to_have_count(0)
        expect(job.locator("[data-testid=job-partials]")).to_have_count(0)
        expect(job.locator("[data-testid=job-result] [data-field=outputs]")).to_have_text("[20,22,24,26]")
        expect(job.locator("[data-testid=job-result] [data-field=total]")).to_have_text("92")
        expect(job).to_contain_text("took")
