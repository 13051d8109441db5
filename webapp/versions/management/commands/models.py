"""``python manage.py models ...``: the model versions of each serving, for scripts and people.

    models list [--json]
    models import SERVING PATH --version NAME
    models pull SERVING [--revision REV] [--ref HUB_ID] [--version NAME]
    models validate SERVING VERSION [--timeout S]
    models activate SERVING VERSION [--canary PERCENT]
    models rollback SERVING
    models retire SERVING VERSION

Every action is recorded in the audit log under ``--user`` (default: the OS
user). Errors are one line on stderr and a non-zero exit. docs/models.md has it all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import mlservices
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from mlservices import model_store

from webapp.versions import actions
from webapp.versions.models import ModelVersion

POLL_S = 0.2


def pull_defaults(serving: str) -> tuple[str, str]:
    """The Hub id and revision ``pull`` uses by default: the settings' (MLSERVICES) when they
    name a Hub id (a local folder or a URL cannot be pulled), else the serving's own default
    model at its module's ``DEFAULT_REVISION``."""
    configured = settings.MLSERVICES.get(serving, {})
    default_model = mlservices.registry.options(serving).get("model")
    model = configured.get("model") or ""
    hub_id = model and not (model_store.is_local(str(model)) or model_store.is_url(str(model)))
    ref = (model if hub_id else default_model) or ""
    revision = (configured.get("revision") if hub_id else "") or ""
    if not revision and ref == default_model:
        revision = getattr(sys.modules[mlservices.registry.factory(serving).__module__], "DEFAULT_REVISION", "")
    return str(ref), str(revision)


class Command(BaseCommand):
    help = "List, import, pull, validate, activate, canary, roll back and retire model versions (docs/models.md)."

    def add_arguments(self, parser):
        who = argparse.ArgumentParser(add_help=False)
        who.add_argument("--user", default="", help="who is acting, for the audit log (default: the OS user)")
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        def command(name: str, **kwargs):
            return sub.add_parser(name, parents=[who], **kwargs)

        listing = command("list", help="every serving's versions")
        listing.add_argument("--json", action="store_true", dest="as_json", help="as JSON: {serving: [{version, status, sha256, source, canary_percent}]}")
        imported = command("import", help="store a local ONNX file, Hugging Face folder or .zip/.tar as a version")
        imported.add_argument("serving")
        imported.add_argument("path")
        imported.add_argument("--version", required=True, help="the version's name (letters, digits, . _ -)")
        pulled = command("pull", help="download a Hub repository at a pinned revision as a version")
        pulled.add_argument("serving")
        pulled.add_argument("--ref", default="", help="Hub id (default: the serving's configured model)")
        pulled.add_argument("--revision", default="", help="40-hex commit (default: the configured one)")
        pulled.add_argument("--version", default="", help="the version's name (default: the revision's first 12 hex)")
        validated = command("validate", help="have a worker load the version and run its smoke inputs; waits")
        validated.add_argument("serving")
        validated.add_argument("version")
        validated.add_argument("--timeout", type=float, default=None, help="seconds to wait (MODELS_VALIDATE_TIMEOUT)")
        activated = command("activate", help="serve a validated version (or a canary share of traffic)")
        activated.add_argument("serving")
        activated.add_argument("version")
        activated.add_argument("--canary", type=int, default=None, metavar="PERCENT", help="1-99: the canary's share")
        rolled = command("rollback", help="drop the canary, else re-activate the previously active version")
        rolled.add_argument("serving")
        retired = command("retire", help="never serve this version again (files stay)")
        retired.add_argument("serving")
        retired.add_argument("version")

    def handle(self, *args, action, user, **options):
        who = self.who(user)
        try:
            getattr(self, f"do_{action}")(who, **options)
        except actions.VersionError as exc:
            raise CommandError(str(exc)) from None

    def who(self, username: str) -> actions.Who:
        if not username:
            return actions.Who.of()
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        return actions.Who(user, username)

    def say(self, line: str) -> None:
        self.stdout.write(line)

    # --- actions ---------------------------------------------------------------

    def do_list(self, who, as_json=False, **_):
        servings = {name: [] for name in mlservices.names()}
        for row in ModelVersion.objects.order_by("serving", "created_at", "id"):
            servings.setdefault(row.serving, []).append(row)
        if as_json:
            self.say(json.dumps({name: [r.as_json() for r in rows] for name, rows in servings.items()}, indent=2))
            return
        for name, rows in servings.items():
            self.say(f"{name}: " + ("no versions (serves the settings' model)" if not rows else f"{len(rows)} version(s)"))
            for r in rows:
                canary = f" {r.canary_percent} %" if r.status == ModelVersion.Status.CANARY else ""
                self.say(
                    f"  {r.version:<20} {r.status + canary:<12} sha256 {r.sha256_short():<12} {r.size:>12,} B  "
                    f"{r.figures()}".rstrip()
                )

    def do_import(self, who, serving, path, version, **_):
        row = actions.import_path(serving, version, path, who)
        self.say(f"{serving} {row.version}: stored ({row.size:,} bytes, staged); next: `python manage.py models validate {serving} {row.version}`")

    def do_pull(self, who, serving, ref, revision, version, **_):
        actions.known_serving(serving)
        default_ref, default_revision = pull_defaults(serving)
        ref, revision = ref or default_ref, revision or default_revision
        if not ref or not revision:
            raise CommandError(f"{serving}: give --ref HUB_ID and --revision (the 40-hex commit) to pull")
        row = actions.pull(serving, ref, revision, version or None, who)
        self.say(f"{serving} {row.version}: pulled {ref}@{revision[:7]} ({row.size:,} bytes, staged)")

    def do_validate(self, who, serving, version, timeout=None, **_):
        actions.request_validation(serving, version, who)
        timeout = settings.MODELS_VALIDATE_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            row = actions.get(serving, version)
            if not row.validation.get("pending"):
                break
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{serving} {version}: no outcome within {timeout:g} s; is a worker serving {serving} running "
                    f"(`celery -A webapp worker -Q {serving}`)? The validation is still queued"
                )
            time.sleep(POLL_S)
        if row.validation.get("error"):
            raise CommandError(f"{serving} {version} refused: {row.validation['error']}")
        self.say(f"{serving} {version}: validated ({row.figures()})")

    def do_activate(self, who, serving, version, canary=None, **_):
        row = actions.activate(serving, version, who, canary=canary)
        if canary is not None:
            self.say(f"{serving} {version}: canary, {row.canary_percent} % of requests")
        else:
            self.say(f"{serving} {version}: active")

    def do_rollback(self, who, serving, **_):
        row = actions.rollback(serving, who)
        self.say(f"{serving}: {row.version} is {row.status} again" if row.status == "active"
                 else f"{serving}: canary {row.version} dropped")

    def do_retire(self, who, serving, version, **_):
        actions.retire(serving, version, who)
        self.say(f"{serving} {version}: retired")
