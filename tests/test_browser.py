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

from tests.conftest import SHARED, require
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


@contextlib.contextmanager
def checked_page(browser, console: Console):
    """A fresh browser context (so a fresh session) of ``browser`` whose script errors fail the test."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and console.errors.append(f"console.{msg.type}: {msg.text}"))
    yield page
    context.close()
    unexpected = console.unexpected()
    assert not unexpected, "the page reported errors:\n" + "\n".join(unexpected)


@pytest.fixture
def page(playwright_browser, console):
    with checked_page(playwright_browser, console) as p:
        yield p


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


# --- Transcription: the microphone, a live transcript, streamed jobs, clear failures ----------

WHISPER_BASE = SHARED / "models" / "whisper-base"
JFK = SHARED / "data" / "audio" / "jfk.flac"  # "And so my fellow Americans, ask not what your country ..."
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
TRANSCRIPTION_TIMEOUT_MS = 120_000  # the first request loads whisper-base; 2 cores transcribe slowly
MAX_SECONDS = 60  # the longest recording the transcription site takes


def flac_to_wav(source: Path, target: Path) -> Path:
    """``source`` as 16 kHz mono 16-bit PCM WAV (what Chromium's fake microphone plays), with PyAV."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=16_000, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
        for frame in [*inp.decode(audio=0), None]:
            for chunk in resampler.resample(frame):
                out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    return target


def words(text: str) -> str:
    from mlservices.transcripts import normalise_words

    return " ".join(normalise_words(text))


@pytest.fixture(scope="module")
def microphone_browser(playwright_browser, tmp_path_factory):
    """Chromium whose microphone (a fake one, allowed without asking) says jfk.flac, over and over."""
    require(JFK.is_file(), f"jfk.flac is not at {JFK}")
    wav = flac_to_wav(JFK, tmp_path_factory.mktemp("microphone") / "jfk.wav")
    browser = playwright_browser.browser_type.launch(
        executable_path=str(CHROMIUM),
        args=[
            *CHROMIUM_ARGS,
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
        ],
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def transcription_site(playwright_browser, tmp_path_factory, tiny_sentiment_model) -> Site:
    """The site with the real whisper-base (TRANSCRIPTION_MODEL), servings in-process."""
    require(WHISPER_BASE.is_dir(), f"the real Whisper model is not at {WHISPER_BASE}")
    tmp_path = tmp_path_factory.mktemp("browser-transcription-site")
    config = {"transcription": {"max_seconds": MAX_SECONDS}}
    with _site(
        tmp_path, tiny_sentiment_model, TRANSCRIPTION_MODEL=str(WHISPER_BASE), MLSERVICES_CONFIG=json.dumps(config)
    ) as s:
        yield s


def test_recording_shows_a_live_transcript_then_the_saved_jobs_streamed_result(
    microphone_browser, transcription_site, console
):
    from playwright.sync_api import expect

    site = transcription_site
    with checked_page(microphone_browser, console) as page, server_log_on_failure(site):
        received: list[dict] = []  # what the server pushed on the websocket
        page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(json.loads(frame))))
        open_page(page, site, "/s/transcription/")
        expect(page.locator("h1")).to_have_text("Transcribe")
        expect(page.locator("[data-testid=nav-serving][data-serving=transcription]")).to_have_text("Transcribe")
        recorder, record = page.locator("[data-testid=recorder]"), page.locator("[data-testid=record]")

        record.click()
        expect(recorder).to_have_attribute("data-state", "recording")
        expect(record).to_have_text("Stop")
        # Live: the audio so far is uploaded and transcribed while the recording goes on.
        live = page.locator("[data-testid=live-text]")
        expect(live).to_have_text(re.compile(r"\w\w"), timeout=TRANSCRIPTION_TIMEOUT_MS)
        expect(recorder).to_have_attribute("data-state", "recording")
        shown = live.inner_text()
        assert set(words(shown).split()) & set(words(JFK_TEXT).split()), shown
        assert shown in [m["result"]["text"] for m in received if m["type"] == "prediction"]  # a live prediction's

        # "... ask not what your country can do for you" is said by 8.5 s: stop after 10 s.
        expect(page.locator("[data-testid=record-time]")).to_have_text(re.compile(r"^0:1\d$"), timeout=30_000)
        record.click()
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", re.compile("running|done"), timeout=30_000)
        expect(page.locator("[data-testid=record-status]")).to_contain_text("Submitted")
        expect(job).to_have_attribute("data-status", "done", timeout=TRANSCRIPTION_TIMEOUT_MS)
        job_id = job.get_attribute("data-job-id")
        expect(job.locator("[data-testid=job-text]")).to_contain_text(re.compile(r"^Recording .*\.webm$"))

        # The job's windows were pushed as they were done, then the result.
        streamed = [m for m in received if m["type"] == "job.progress" and m["job_id"] == job_id]
        assert streamed and streamed[0]["partial"]["index"] == 0, [m["type"] for m in received]
        assert "ask not what your country can do for you" in words(streamed[0]["partial"]["text"])
        final = [m["job"] for m in received if m["type"] == "job" and m["job"]["id"] == job_id]
        assert final[-1]["status"] == "done" and final[-1]["result"]["language"] == "en"

        transcript = job.locator("[data-testid=transcript]")
        said = words(" ".join(transcript.locator(".segment-text").all_inner_texts()))
        assert "ask not what your country can do for you" in said, said
        expect(transcript.locator("[data-testid=transcript-language]")).to_have_text("English")
        for kind in ("txt", "srt", "vtt"):
            link = transcript.locator(f"[data-testid=download-{kind}]")
            expect(link).to_have_attribute("href", f"/api/jobs/{job_id}/files/transcript.{kind}")
            expect(link).to_have_attribute("download", re.compile(rf"^Recording .*\.{kind}$"))
        srt = page.request.get(site.url + f"/api/jobs/{job_id}/files/transcript.srt").text()
        assert srt.startswith("1\n00:00:00,000 --> ") and "ask not what your country" in srt.lower()

        # A segment plays the recording from its start.
        segment = transcript.locator("button.segment").last
        start = float(segment.get_attribute("data-start"))
        segment.click()
        page.wait_for_function(
            "([audio, start]) => !audio.paused && audio.currentTime >= start",
            arg=[transcript.locator("[data-testid=transcript-audio]").element_handle(), start],
        )
        expect(segment).to_have_class(re.compile(r"\bplaying\b"))



def silent_wav(seconds: float) -> bytes:
    """Digital silence as 16 kHz mono 16-bit WAV."""
    data = bytes(int(seconds * 16_000) * 2)
    header = struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + header + b"data" + struct.pack("<I", len(data)) + data


def test_silence_a_video_without_sound_a_corrupt_and_a_long_file_each_get_a_clear_message(page, transcription_site):
    from playwright.sync_api import expect

    from tests.test_audio import encode

    site = transcription_site
    cases = {  # name: (bytes, the job's outcome)
        "silence.wav": (silent_wav(1.0), "done"),
        "no-sound.mp4": (encode("mp4", None, video="mpeg4"), "failed"),
        "broken.webm": (b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8, "failed"),  # a WebM signature, then junk
        "long.wav": (silent_wav(MAX_SECONDS + 1), "failed"),
    }
    with server_log_on_failure(site):
        open_page(page, site, "/s/transcription/")
        expect(page.locator("[data-testid=dropzone]")).to_contain_text(f"at most {MAX_SECONDS} s")
        for name, (data, status) in cases.items():
            count = page.locator("#jobs > li").count()
            page.locator("[data-testid=file-input]").set_input_files({"name": name, "mimeType": "audio/wav", "buffer": data})
            page.locator("[data-testid=submit-job]").click()
            expect(page.locator("#jobs > li")).to_have_count(count + 1)
            job = page.locator("#jobs > li").first
            expect(job.locator("[data-testid=job-text]")).to_have_text(name)
            expect(job).to_have_attribute("data-status", status, timeout=TRANSCRIPTION_TIMEOUT_MS)
        rows = {name: page.locator("#jobs > li").nth(len(cases) - 1 - i) for i, name in enumerate(cases)}
        expect(rows["silence.wav"].locator("[data-testid=no-speech]")).to_contain_text("No speech was heard")
        expect(rows["silence.wav"].locator("[data-testid=transcript-duration]")).to_have_text("0:01 of audio")
        expect(rows["no-sound.mp4"].locator("[data-testid=job-error]")).to_have_text(
            "the file holds video or pictures but no audio track; send a recording with sound"
        )
        expect(rows["broken.webm"].locator("[data-testid=job-error]")).to_contain_text(
            "the file is not audio this server can read, or it is corrupt"
        )
        expect(rows["long.wav"].locator("[data-testid=job-error]")).to_have_text(
            f"the audio is longer than the limit of {MAX_SECONDS} s; send a shorter recording or cut it into parts"
        )
        expect(page.locator("#error")).to_be_hidden()  # nothing went wrong on the page itself


def test_a_transcripts_windows_grow_under_a_progress_bar_then_the_result_offers_its_files(page, site):
    """The websocket is played by the test: three windows of one job, one at a time, then the result."""
    from playwright.sync_api import expect

    queued = "2026-01-01T10:00:00+00:00"
    job_id = "c0ffee00-0000-4000-8000-000000000001"
    files = {
        kind: {"name": f"transcript.{kind}", "url": f"/api/jobs/{job_id}/files/transcript.{kind}",
               "content_type": "text/plain", "size": 120}
        for kind in ("txt", "srt", "vtt")
    }  # fmt: skip
    windows = [
        {"index": 0, "start": 0.0, "end": 28.99, "language": "de", "task": "transcribe", "text": "", "segments": []},
        {"index": 1, "start": 28.99, "end": 57.78, "language": "de", "task": "transcribe", "text": "Guten Morgen. Heute ist Wahltag.",
         "segments": [{"start": 30.0, "end": 32.5, "text": "Guten Morgen."}, {"start": 32.5, "end": 57.78, "text": "Heute ist Wahltag."}]},
        {"index": 2, "start": 57.78, "end": 75.0, "language": "de", "task": "transcribe", "text": "Danke.",
         "segments": [{"start": 61.0, "end": 62.0, "text": "Danke."}]},
    ]  # fmt: skip
    job = {
        **_job(job_id, "running", queued, started_at=queued), "serving": "transcription", "items": 3,
        "input_summary": "wahl.m4a", "partials": [],
        "input_file": {"name": "wahl.m4a", "url": f"/api/jobs/{job_id}/files/input", "content_type": "audio/mp4", "size": 9},
    }  # fmt: skip
    sockets: list = []
    page.route_web_socket(re.compile(r"/ws/jobs$"), lambda ws: (sockets.append(ws), ws.send(json.dumps({"type": "jobs", "jobs": [job]}))))

    def push(done: int) -> None:
        sockets[0].send(json.dumps({
            "type": "job.progress", "job_id": job_id, "progress": done / 3, "done": done, "total": 3, "partial": windows[done - 1],
        }))  # fmt: skip

    with server_log_on_failure(site):
        open_page(page, site, "/s/transcription/")
        row = page.locator(f"[data-job-id='{job_id}']")
        expect(row).to_have_attribute("data-status", "running")
        push(1)  # a silent intro: the bar moves, there is no text yet
        expect(row.locator("[data-testid=job-progress-text]")).to_have_text("1 of 3 · 33%")
        expect(row.locator("[data-testid=transcript-waiting]")).to_contain_text("Transcribing")
        push(2)
        expect(row.locator("[data-testid=job-progress-text]")).to_have_text("2 of 3 · 67%")
        expect(row.locator("[data-testid=segment]")).to_have_text(["0:30Guten Morgen.", "0:32Heute ist Wahltag."])
        push(3)
        expect(row.locator("[data-testid=segment]")).to_have_text(["0:30Guten Morgen.", "0:32Heute ist Wahltag.", "1:01Danke."])
        expect(row.locator("button.segment")).to_have_count(0)  # nothing to play until it is done

        segments = [s for w in windows for s in w["segments"]]
        result = {"text": "Guten Morgen. Heute ist Wahltag. Danke.", "segments": segments, "language": "de",
                  "task": "transcribe", "duration": 75.0, "no_speech": False, "model": "whisper-base@x", "files": files}  # fmt: skip
        done = {**job, "status": "done", "progress": 1.0, "partials": windows, "result": result,
                "files": list(files.values()), "finished_at": "2026-01-01T10:00:09+00:00", "model_version": "whisper-base@x"}  # fmt: skip
        sockets[0].send(json.dumps({"type": "job", "job": done}))
        expect(row).to_have_attribute("data-status", "done")
        expect(row.locator("[data-testid=job-progress]")).to_have_count(0)
        expect(row.locator("[data-testid=transcript-language]")).to_have_text("German")
        expect(row.locator("[data-testid=transcript-duration]")).to_have_text("1:15 of audio")
        expect(row.locator("button.segment")).to_have_count(3)
        expect(row.locator("button.segment").nth(2)).to_have_attribute("title", "Play from 1:01")
        expect(row.locator("[data-testid=transcript-audio]")).to_have_attribute("data-src", f"/api/jobs/{job_id}/files/input")
        for kind in ("txt", "srt", "vtt"):
            link = row.locator(f"[data-testid=download-{kind}]")
            expect(link).to_have_attribute("href", files[kind]["url"])
            expect(link).to_have_attribute("download", f"wahl.{kind}")
        expect(row.locator("[data-testid=job-files]")).to_be_hidden()  # offered as the downloads instead


# --- The profile photo page: the real U2NetP, in-process and through a worker ------------------------

U2NETP = SHARED / "models" / "u2netp" / "model.onnx"
PHOTOS = SHARED / "data" / "images"


@dataclasses.dataclass
class PhotoSite(Site):
    worker_log: Path | None = None  # the Celery worker's, when one runs the servings


@contextlib.contextmanager
def _worker(env: dict[str, str], log: Path, queue: str):
    """A Celery worker for ``queue`` (threads pool) on the site's database, storage and Redis; ready when it says so."""
    import sys

    from tests.live_server import start_process, wait_until

    args = [
        sys.executable, "-m", "celery", "-A", "webapp", "worker", "-P", "threads", "-c", "4", "-Q", queue,
        "-n", f"browser-{queue}@%h", "-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    with start_process(args, env, log) as process:

        def ready():
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            return log.exists() and " ready." in log.read_text(errors="replace")

        wait_until(ready, timeout=120, what="the worker to say it is ready")
        yield process


@pytest.fixture(
    scope="module",
    params=["inprocess", pytest.param("worker", marks=[pytest.mark.redis, pytest.mark.worker])],
)
def photo_site(request, playwright_browser, tmp_path_factory, tiny_sentiment_model) -> PhotoSite:
    """The site with the real U2NetP (BACKGROUND_REMOVAL_MODEL): run by daphne itself, or by a
    Celery worker (Redis: TEST_REDIS_URL's db, flushed before and after) that shares its database
    and storage."""
    require(U2NETP.is_file(), f"the real U2NetP is not at {U2NETP}")
    require(PHOTOS.is_dir(), f"the photos are not at {PHOTOS}")
    tmp_path = tmp_path_factory.mktemp(f"browser-photo-site-{request.param}")
    extra = {"BACKGROUND_REMOVAL_MODEL": str(U2NETP)}
    if request.param == "inprocess":
        with _site(tmp_path, tiny_sentiment_model, **extra) as s:
            yield PhotoSite(s.url, s.log)
        return
    import redis

    redis_url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # this db only
    media = tmp_path / "media"  # _site's DJANGO_MEDIA_ROOT: the worker reads the uploads from it
    try:
        with live_database(tmp_path) as database_url:
            # the worker and daphne share the database, the storage and Redis
            env = base_env(
                DATABASE_URL=database_url, REDIS_URL=redis_url, DJANGO_MEDIA_ROOT=str(media),
                SENTIMENT_MODEL=str(tiny_sentiment_model), MLSERVICES_DEVICE="cpu", **extra,
            )  # fmt: skip
            log = tmp_path / "worker.log"
            with _worker(env, log, "background_removal"), asgi_server(env, tmp_path / "daphne.log") as url:
                yield PhotoSite(url, tmp_path / "daphne.log", worker_log=log)
    finally:
        client.flushdb()
        client.close()


def photo_log_on_failure(site: PhotoSite):
    """The server's log, and the worker's when there is one, on a failed assertion."""
    stack = contextlib.ExitStack()
    stack.enter_context(server_log_on_failure(site))
    if site.worker_log is not None:
        stack.enter_context(server_log_on_failure(Site(site.url, site.worker_log)))
    return stack


def track_status(page) -> None:
    """Record every state the page's status takes (window.bgStates), to check what was pushed."""
    page.evaluate("""() => {
        const status = document.querySelector("[data-testid=bg-status]");
        window.bgStates = [];
        new MutationObserver(() => {
            const state = status.dataset.state;
            if (state !== "idle" && window.bgStates[window.bgStates.length - 1] !== state) window.bgStates.push(state);
        }).observe(status, {attributes: true, attributeFilter: ["data-state"]});
    }""")


def next_result(page, previous_job: str | None) -> str:
    """Wait for a job other than ``previous_job`` to be shown, done; its id."""
    from playwright.sync_api import expect

    stage = page.locator("[data-testid=bg-stage]")
    if previous_job:
        expect(stage).not_to_have_attribute("data-job-id", previous_job, timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("[data-testid=bg-status]")).to_have_attribute("data-state", "done", timeout=RESULT_TIMEOUT_MS)
    expect(stage).to_have_attribute("data-state", "done")
    return stage.get_attribute("data-job-id")


def download(page, testid: str):
    """Click the page's download link; the file it saves, as a Pillow image, and its suggested name."""
    from PIL import Image

    with page.expect_download() as info:
        page.locator(f"[data-testid={testid}]").click()
    path = info.value.path()
    image = Image.open(path)
    image.load()
    return image, info.value.suggested_filename


def test_a_photo_becomes_a_cutout_pushed_live_downloads_with_alpha_and_is_private(
    page, photo_site, playwright_browser, console
):
    import numpy as np
    from playwright.sync_api import expect

    site = photo_site
    photo = PHOTOS / "0003.jpg"
    frames: list = []  # what the server pushed on the page's websocket
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
    with photo_log_on_failure(site):
        open_page(page, site, "/s/background_removal/")
        nav = page.locator("[data-testid=nav-serving][data-serving=background_removal]")
        expect(nav).to_have_text("Profile photo")
        expect(nav).to_have_attribute("aria-current", "page")
        expect(page.locator("h1")).to_have_text("Profile photo")
        expect(page.locator("[data-testid=bg-stage]")).to_be_hidden()
        track_status(page)

        # Picked: the photo shows at once (from the file itself), then the job's states arrive.
        page.locator("[data-testid=file-input]").set_input_files(photo)
        original = page.locator("[data-testid=bg-original]")
        expect(original).to_have_attribute("src", re.compile(r"^blob:"))
        page.wait_for_function("el => el.complete && el.naturalWidth === 650", arg=original.element_handle())
        job_id = next_result(page, None)
        pushed = [json.loads(f) for f in frames]
        statuses = [m["job"]["status"] for m in pushed if m.get("type") == "job" and m["job"]["id"] == job_id]
        assert statuses[-1] == "done" and "running" in statuses, statuses
        # The page showed each state it learnt, in order (one pushed before the POST's answer may skip "queued").
        states = page.evaluate("window.bgStates")
        order = ["uploading", "queued", "running", "done"]
        assert states[0] == "uploading" and states[-1] == "done", states
        assert [order.index(s) for s in states] == sorted(order.index(s) for s in states), states
        expect(page.locator("[data-testid=bg-elapsed]")).to_have_text(re.compile(r"^done in \d"))

        # The cutout over the checkerboard, through its owner-checked URL.
        cutout_url = f"/api/jobs/{job_id}/files/cutout.png"
        cutout = page.locator("[data-testid=bg-cutout]")
        expect(cutout).to_have_attribute("src", cutout_url)
        page.wait_for_function("el => el.complete && el.naturalWidth === 650", arg=cutout.element_handle())
        assert "conic-gradient" in page.locator(".bg-canvas").evaluate("el => getComputedStyle(el).backgroundImage")
        expect(page.locator("[data-testid=bg-caption]")).to_contain_text("650×434")
        expect(page.locator("[data-testid=download-png]")).to_have_attribute("href", cutout_url)

        # Downloaded through the page's link with its cookies: transparent where the background was.
        png, name = download(page, "download-png")
        assert name.endswith("cutout.png")  # the server's Content-Disposition names it
        assert png.mode == "RGBA" and png.size == (650, 434)
        alpha = np.asarray(png.getchannel("A"))
        assert (alpha == 0).any() and (alpha == 255).any()
        mask, name = download(page, "download-mask")
        assert name.endswith("mask.png") and mask.mode == "L" and mask.size == (650, 434)

        # The job is in the list with its thumbnail, and still after a reload.
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-job-id", job_id)
        expect(job).to_have_attribute("data-status", "done")
        page.reload()
        expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        job = page.locator(f"#jobs > li[data-job-id='{job_id}']")
        thumb = job.locator("[data-testid=bg-job-thumb]")
        expect(thumb).to_have_attribute("src", cutout_url)
        page.wait_for_function("el => el.complete && el.naturalWidth === 650", arg=thumb.element_handle())
        page.wait_for_function("el => el.complete && el.naturalWidth > 0",
                               arg=job.locator("[data-testid=job-input-thumb]").element_handle())

        # Another session (another browser context) is told there is no such file or job.
        assert page.request.get(site.url + cutout_url).status == 200
        with checked_page(playwright_browser, console) as stranger:
            for url in (cutout_url, f"/api/jobs/{job_id}/files/mask.png", f"/api/jobs/{job_id}/files/input", f"/api/jobs/{job_id}"):
                response = stranger.request.get(site.url + url)
                assert response.status == 404, (url, response.status)
                assert response.json()["error"]["code"] == "not_found"

        # A click on the list's cutout brings it back up; other options run the photo again.
        job.locator("[data-testid=bg-job-open]").click()
        expect(page.locator("[data-testid=bg-stage]")).to_have_attribute("data-job-id", job_id)
        page.locator("[data-testid=file-input]").set_input_files(photo)
        first = next_result(page, job_id)
        page.locator("label[for=bg-background-color]").click()
        expect(page.locator("[data-testid=bg-colors]")).to_be_visible()
        coloured = next_result(page, first)
        png, _ = download(page, "download-png")
        assert png.mode == "RGB" and png.size == (650, 434)
        assert png.getpixel((2, 2)) == (255, 255, 255)  # a corner of the background, now white
        page.locator("[data-testid=bg-avatar]").check()
        next_result(page, coloured)
        expect(page.locator("[data-testid=bg-caption]")).to_contain_text("512×512 avatar")
        png, _ = download(page, "download-png")
        assert png.size == (512, 512)
        expect(page.locator("#jobs > li")).to_have_count(4)
        if site.worker_log is not None:  # the worker ran them, not daphne
            assert "serving background_removal ready" in site.worker_log.read_text(errors="replace")
            assert "serving background_removal ready" not in site.log.read_text(errors="replace")


def test_bad_files_get_a_clear_message_in_place(page, photo_site, console):
    from playwright.sync_api import expect

    site = photo_site
    with photo_log_on_failure(site):
        open_page(page, site, "/s/background_removal/")

        # A text file named .jpg: refused at the door (sniffed), said in place, no job.
        console.expect_error(r"Failed to load resource: the server responded with a status of 400")
        page.locator("[data-testid=file-input]").set_input_files(
            {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"just some text, not a photo\n"}
        )
        error = page.locator("[data-testid=upload-error]")
        expect(error).to_be_visible()
        expect(error).to_have_attribute("data-code", "invalid_input")
        expect(error).to_contain_text("not a file type it can read")
        expect(page.locator("[data-testid=bg-status]")).to_be_hidden()
        expect(page.locator("[data-testid=bg-stage]")).to_be_hidden()
        expect(page.locator("[data-testid=jobs-empty]")).to_be_visible()

        # A truncated JPEG passes the door (its header is fine); its job fails with the reason, not stuck.
        half = (PHOTOS / "0003.jpg").read_bytes()
        page.locator("[data-testid=file-input]").set_input_files(
            {"name": "half.jpg", "mimeType": "image/jpeg", "buffer": half[: len(half) // 2]}
        )
        expect(page.locator("[data-testid=upload-error]")).to_be_hidden()
        expect(page.locator("[data-testid=bg-status]")).to_have_attribute("data-state", "failed", timeout=RESULT_TIMEOUT_MS)
        expect(page.locator("[data-testid=bg-error]")).to_contain_text("truncated or corrupt")
        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", "failed")
        expect(job.locator("[data-testid=job-error]")).to_contain_text("truncated or corrupt")


def test_a_phone_photo_turned_by_exif_shows_and_comes_out_upright(page, photo_site, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    site = photo_site
    turned = tmp_path / "phone.jpg"
    with Image.open(PHOTOS / "0003.jpg") as image:  # 650×434, stored on its side: orientation 6 turns it upright
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(turned, "JPEG", quality=90, exif=exif)
    with photo_log_on_failure(site):
        open_page(page, site, "/s/background_removal/")
        page.locator("[data-testid=file-input]").set_input_files(turned)
        original = page.locator("[data-testid=bg-original]")
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=original.element_handle())
        assert page.evaluate("el => [el.naturalWidth, el.naturalHeight]", original.element_handle()) == [650, 434]
        next_result(page, None)
        expect(page.locator("[data-testid=bg-caption]")).to_contain_text("650×434")
        png, _ = download(page, "download-png")
        assert png.size == (650, 434)
