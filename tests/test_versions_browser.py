"""The admin in a real Chromium: upload a second sentiment version, validate, canary, activate
and roll back while jobs keep flowing, with zero failures.

The site is daphne in in-process mode on a private migrated database; the web
process serves the versions itself and swaps them when the admin acts. A
thread keeps posting jobs through the REST API (at most ``IN_FLIGHT``
unfinished) the whole time. Every wait is Playwright's own or a poll with a
deadline.
"""

from __future__ import annotations

import http.cookiejar
import json
import threading
import urllib.request
import zipfile

import pytest

from tests.live_server import asgi_server, base_env, wait_until
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: F401
from tests.test_versions import labelled_tsv, tiny_versions  # noqa: F401 (fixtures)
from tests.test_versions_swap import TEXT, expected, repository  # noqa: F401 (fixtures)
from tests.test_worker import jobs_by_id, live_db  # noqa: F401 (fixtures)
from tests.conftest import require

pytestmark = pytest.mark.browser
TIMEOUT = 60
IN_FLIGHT = 4
PASSWORD = "correct horse battery staple"


class JobFlow(threading.Thread):
    """Posts sentiment jobs through the API until stopped; ``ids`` in creation order."""

    def __init__(self, site: str):
        super().__init__(name="job-flow", daemon=True)
        self.site, self.ids, self.error = site, [], None
        self.stopped = threading.Event()
        jar = http.cookiejar.CookieJar()
        self.browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        self.browser.open(site + "/", timeout=30).read()
        self.csrf = next(c.value for c in jar if c.name == "csrftoken")

    def post(self) -> str:
        request = urllib.request.Request(
            self.site + "/api/jobs", data=json.dumps({"serving": "sentiment", "input": {"text": TEXT}}).encode(),
            headers={"Content-Type": "application/json", "X-CSRFToken": self.csrf}, method="POST",
        )
        with self.browser.open(request, timeout=30) as response:
            return json.loads(response.read())["id"]

    def unfinished(self) -> int:
        return sum(j.status not in ("done", "failed") for j in jobs_by_id(self.ids[-IN_FLIGHT * 2:]).values())

    def run(self):
        try:
            while not self.stopped.is_set():
                if self.unfinished() < IN_FLIGHT:
                    self.ids.append(self.post())
                else:
                    self.stopped.wait(0.02)
        except Exception as exc:  # the test fails on it
            self.error = exc

    def versions_done(self, since: int = 0) -> list[str]:
        jobs = jobs_by_id(self.ids[since:])
        return [jobs[i].model_version.split("@")[0] for i in self.ids[since:] if i in jobs and jobs[i].status == "done"]

    def wait_for(self, version: str, since: int = 0, count: int = 3) -> None:
        def seen():
            assert self.error is None, self.error
            return self.versions_done(since).count(version) >= count

        wait_until(seen, timeout=TIMEOUT, what=f"{count} jobs on {version}")


def test_an_admin_uploads_validates_canaries_activates_and_rolls_back_v2_while_jobs_flow(
    tmp_path, repository, labelled_tsv, tiny_versions, expected, live_db, tiny_sentiment_model, monkeypatch
):
    require(CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from django.contrib.auth import get_user_model
    from playwright.sync_api import expect, sync_playwright

    from webapp.versions import actions
    from webapp.versions.models import ModelAction, ModelVersion

    get_user_model().objects.create_superuser("admin", "admin@example.org", PASSWORD)
    who = actions.Who(None, "setup")
    actions.import_path("sentiment", "v1", tiny_versions.v1, who)
    ModelVersion.objects.filter(version="v1").update(status="validated")
    actions.activate("sentiment", "v1", who)
    archive = tmp_path / "sentiment-v2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tiny_versions.v2.iterdir()):
            zf.write(path, f"sentiment-v2/{path.name}")

    env = base_env(
        DATABASE_URL=live_db, MLSERVICES_MODEL_REPOSITORY=str(repository), SENTIMENT_MODEL=str(tiny_sentiment_model),
        SENTIMENT_VALIDATION_SET=str(labelled_tsv), MODELS_SYNC_INTERVAL="0.5", MLSERVICES_DEVICE="cpu",
        DJANGO_MEDIA_ROOT=str(tmp_path / "media"),
    )
    env.pop("REDIS_URL", None)
    # Playwright's sync API runs an event loop in this thread; the ORM calls here are plain blocking ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with asgi_server(env, tmp_path / "daphne.log") as site, sync_playwright() as p:
        flow = JobFlow(site)
        flow.start()  # from its first job on, the web process serves v1, the database's active version
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        def served(routes: str) -> None:
            line = f"now serves {routes}"
            wait_until(lambda: line in (tmp_path / "daphne.log").read_text(), timeout=TIMEOUT,
                       what=f"the web process to log '{line}'")

        try:
            page.goto(site + "/admin/login/?next=/admin/versions/modelversion/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            expect(page.locator("[data-testid=servings-summary]")).to_contain_text("v1 (active)")

            page.goto(site + "/admin/versions/modelversion/add/")
            page.select_option("#id_serving", "sentiment")
            page.fill("#id_version", "v2")
            page.set_input_files("#id_upload", str(archive))
            page.click("input[name=_save]")
            expect(page.locator(".messagelist")).to_contain_text("was added successfully")
            row = page.locator("#result_list tbody tr", has_text="v2")
            expect(row).to_contain_text("Staged")
            expect(row).to_contain_text("4 files")
            expect(row).to_contain_text("upload: sentiment-v2.zip")
            expect(row).to_contain_text("admin")

            row.locator("a", has_text="v2").first.click()
            change_page = page.url

            def act(button: str, percent: str | None = None) -> None:
                page.goto(change_page)
                if percent is not None:
                    page.fill("[data-testid=version-actions] input[name=percent]", percent)
                page.click(f"[data-testid=version-actions] button[value={button}]")
                expect(page.locator(".messagelist .success")).to_be_visible()

            act("validate")
            wait_until(lambda: ModelVersion.objects.get(version="v2").status == "validated", timeout=TIMEOUT,
                       what="v2 to be validated")
            page.goto(site + "/admin/versions/modelversion/")
            expect(page.locator("#result_list tbody tr", has_text="v2")).to_contain_text("accuracy")

            act("canary", "50")
            mark = len(flow.ids)
            flow.wait_for("v2", since=mark)
            flow.wait_for("v1", since=mark)  # both versions serve while v2 is the canary

            act("activate")
            served("v2 (100 %)")  # the web process has switched
            switched = len(flow.ids)
            flow.wait_for("v2", since=switched, count=5)

            rolled_back = len(flow.ids)
            act("rollback")
            expect(page.locator(".messagelist")).to_contain_text("v1 is active again")
            served("v1 (100 %)")
            back = len(flow.ids)
            flow.wait_for("v1", since=back, count=5)

            page.goto(site + "/admin/versions/modelaction/")
            log = page.locator("#result_list tbody")
            for action in ("add", "validate", "validated", "canary", "activate", "rollback"):
                expect(log).to_contain_text(action)
            expect(log).to_contain_text("admin")

            page.goto(site + "/")  # the job page names the version that served each job
            page.locator("#text").fill("a great film")
            page.locator("#save-job").click()
            job = page.locator("#jobs > li").first
            expect(job).to_have_attribute("data-status", "done")
            expect(job.locator("[data-testid=job-model]")).to_contain_text("served by v1@sha256:")
        finally:
            flow.stopped.set()
            flow.join(TIMEOUT)
            browser.close()
        assert flow.error is None, flow.error
        wait_until(lambda: all(j.status in ("done", "failed") for j in jobs_by_id(flow.ids).values()), timeout=TIMEOUT,
                   what="every job to finish")

    jobs = jobs_by_id(flow.ids)
    failed = [(j.pk, j.error) for j in jobs.values() if j.status != "done"]
    assert not failed
    for job in jobs.values():
        assert job.model_version in expected and job.result["scores"] == expected[job.model_version]
    names = [jobs[i].model_version.split("@")[0] for i in flow.ids]
    assert set(names[switched:rolled_back]) == {"v2"}
    assert set(names[back:]) == {"v1"}
    assert names[0] == "v1"  # the very first job: the database's version, never the settings' model
    assert {"v1", "v2"} <= set(names[:switched])  # the canary served both
    actions_logged = list(ModelAction.objects.filter(username="admin").order_by("id").values_list("action", "version"))
    assert actions_logged == [
        ("add", "v2"), ("validate", "v2"), ("validated", "v2"), ("canary", "v2"), ("activate", "v2"), ("rollback", "v1"),
    ]
