"""What admins do to model versions, with the rules, each recorded in the audit log.

Every function takes ``who`` (``Who(user, username)``), changes the records
in one transaction, writes a ``ModelAction`` row, and once committed tells
the processes holding the serving to sync (``sync.notify``). A refused
action raises ``VersionError`` with one line that names the value and the fix.

Rules: a version is activated (or made the canary) only once validated (a
version that was active before stays validated, so it may be again);
activating makes the old active version ``validated`` (kept for rollback);
``canary`` (1–99 %) serves that share beside the active one, at most one per
serving; ``rollback`` drops the canary when there is one, else re-activates
the version that was active before the current one (from the audit log);
the active version cannot be retired.
"""

from __future__ import annotations

import dataclasses
import getpass
import threading
from pathlib import Path

import mlservices
from django.db import transaction
from django.utils import timezone

from . import sync
from .models import ModelAction, ModelVersion

Status = ModelVersion.Status
SERVABLE = (Status.VALIDATED, Status.CANARY)


class VersionError(Exception):
    """An action refused, with the reason and the fix in one line."""


@dataclasses.dataclass(frozen=True)
class Who:
    user: object = None  # a User, or None (a script)
    username: str = ""

    @classmethod
    def of(cls, user=None, username: str = "") -> Who:
        if user is not None and getattr(user, "is_authenticated", False):
            return cls(user, username or user.get_username())
        return cls(None, username or _os_user())


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container)
        return "unknown"


def record(who: Who, action: str, serving: str, version: str = "", **detail) -> ModelAction:
    return ModelAction.objects.create(
        user=who.user, username=who.username, action=action, serving=serving, version=version, detail=detail
    )


def known_serving(serving: str) -> str:
    names = mlservices.names()
    if serving not in names:
        raise VersionError(f"no serving named {serving!r}; known servings: {', '.join(names) or 'none'}")
    return serving


def get(serving: str, version: str, lock: bool = False) -> ModelVersion:
    rows = ModelVersion.objects.select_for_update() if lock else ModelVersion.objects
    row = rows.filter(serving=known_serving(serving), version=version).first()
    if row is None:
        raise VersionError(
            f"{serving} has no version {version!r}; `python manage.py models list` lists them, "
            "`models import` adds one"
        )
    return row


def _notify_after_commit(serving: str) -> None:
    transaction.on_commit(lambda: sync.notify(serving))


# --- Adding --------------------------------------------------------------------


def _store(serving: str, version: str, who: Who, add) -> ModelVersion:
    known_serving(serving)
    if ModelVersion.objects.filter(serving=serving, version=version).exists():
        raise VersionError(f"{serving} already has a version {version!r}; choose another name with --version")
    try:
        stored = add(sync.repository())
    except mlservices.ServingError as exc:
        raise VersionError(str(exc)) from exc
    with transaction.atomic():
        row = ModelVersion.objects.create(
            serving=serving, version=stored.version, source=stored.source, sha256=stored.sha256,
            size=stored.size, added_by=who.user,
        )
        record(who, "add", serving, stored.version, source=stored.source, size=stored.size)
    return row


def import_path(serving: str, version: str, path, who: Who, source: dict | None = None) -> ModelVersion:
    """Store the file, folder or archive at ``path`` as ``version`` (staged)."""
    path = Path(path)
    if not path.exists():
        raise VersionError(f"{path} does not exist; give an ONNX file, a Hugging Face folder or a .zip/.tar of one")
    source = source or {"kind": "path", "path": str(path.resolve())}
    return _store(serving, version, who, lambda repo: repo.add(serving, version, path, source=source))


def pull(serving: str, ref: str, revision: str, version: str | None, who: Who) -> ModelVersion:
    """Download Hub repository ``ref`` at ``revision`` (40 hex) as ``version`` (staged)."""
    name = version or revision[:12]
    return _store(serving, name, who, lambda repo: repo.pull(serving, ref, revision, version=name))


# --- Validation --------------------------------------------------------------------


def request_validation(serving: str, version: str, who: Who) -> ModelVersion:
    """Mark ``version`` pending and have a process holding the serving validate it."""
    with transaction.atomic():
        row = get(serving, version, lock=True)
        if row.status in (Status.ACTIVE, Status.CANARY):
            raise VersionError(
                f"{serving} {version} is {row.status} (it passed validation before it served); "
                "validate a staged, validated or retired version"
            )
        row.validation = {"pending": True, "requested_at": timezone.now().isoformat(), "requested_by": who.username}
        row.save(update_fields=["validation"])
        record(who, "validate", serving, version)
        transaction.on_commit(lambda: start_validation(serving, version, who.username))
    return row


def start_validation(serving: str, version: str, username: str) -> None:
    """Celery mode: a task on the serving's queue (a worker serving it runs it); else a thread here."""
    from webapp.jobs.dispatch import distributed

    from .validation import validate_on_thread

    if distributed():  # the task webapp.versions.tasks.validate
        try:
            sync.celery_app().send_task("versions.validate", args=(serving, version, username), queue=serving)
        except Exception as exc:  # the broker is away: say so instead of looking pending for ever
            error = f"could not queue the validation ({type(exc).__name__}); the task queue is unreachable. Try again"
            record_validation(serving, version, {"error": error}, username)
    else:
        threading.Thread(
            target=validate_on_thread, args=(serving, version, username), name=f"validate:{serving}:{version}", daemon=True
        ).start()


def record_validation(serving: str, version: str, figures: dict, username: str) -> ModelVersion:
    """Store a validation run's outcome: ``validated`` when ``figures`` has no ``error``, else ``staged``."""
    who = Who(None, username or "worker")
    with transaction.atomic():
        row = get(serving, version, lock=True)
        row.validation = figures
        row.validated_at = timezone.now()
        if row.status not in (Status.ACTIVE, Status.CANARY):
            row.status = Status.STAGED if figures.get("error") else Status.VALIDATED
        row.save(update_fields=["validation", "validated_at", "status"])
        if figures.get("error"):
            record(who, "refused", serving, version, error=figures["error"])
        else:
            record(who, "validated", serving, version, **{k: figures[k] for k in ("load_time_s", "latency_ms") if k in figures})
    return row


# --- Serving ------------------------------------------------------------------------


def _not_servable(row: ModelVersion) -> VersionError:
    return VersionError(
        f"{row.serving} {row.version} is {row.status}; validate it first "
        f"(`python manage.py models validate {row.serving} {row.version}`)"
    )


def activate(serving: str, version: str, who: Who, canary: int | None = None) -> ModelVersion:
    """Make ``version`` the active one, or with ``canary`` (1–99) the canary at that percentage."""
    if canary is not None and (isinstance(canary, bool) or not isinstance(canary, int) or not 1 <= canary <= 99):
        raise VersionError(f"canary percent {canary!r}; use a whole number from 1 to 99")
    with transaction.atomic():
        list(ModelVersion.objects.select_for_update().filter(serving=known_serving(serving)))  # one action at a time
        row = get(serving, version)
        current = ModelVersion.objects.filter(serving=serving, status=Status.ACTIVE).first()
        if row.status == Status.ACTIVE:
            raise VersionError(
                f"{serving} {version} is already active; "
                + ("a canary must be another version" if canary is not None else "nothing to do")
            )
        if row.status not in SERVABLE:
            raise _not_servable(row)
        if canary is not None:
            ModelVersion.objects.filter(serving=serving, status=Status.CANARY).exclude(pk=row.pk).update(
                status=Status.VALIDATED, canary_percent=0
            )
            row.status, row.canary_percent = Status.CANARY, canary
            row.save(update_fields=["status", "canary_percent"])
            record(who, "canary", serving, version, percent=canary, active=current.version if current else None)
        else:
            if current is not None:
                current.status = Status.VALIDATED
                current.save(update_fields=["status"])
            row.status, row.canary_percent = Status.ACTIVE, 0
            row.save(update_fields=["status", "canary_percent"])
            record(who, "activate", serving, version, previous=current.version if current else None)
        _notify_after_commit(serving)
    return row


def previous_active(serving: str, current: str | None) -> ModelVersion | None:
    """The version that was active before ``current``, still validated (from the audit log)."""
    made_active = ModelAction.objects.filter(serving=serving, action__in=("activate", "rollback")).exclude(
        detail__has_key="dropped_canary"
    )
    for action in made_active.order_by("-at", "-id"):
        if action.version and action.version != current:
            row = ModelVersion.objects.filter(serving=serving, version=action.version, status=Status.VALIDATED).first()
            if row is not None:
                return row
    return None


def rollback(serving: str, who: Who) -> ModelVersion:
    """Drop the canary if there is one, else re-activate the previously active version."""
    with transaction.atomic():
        list(ModelVersion.objects.select_for_update().filter(serving=known_serving(serving)))
        canary = ModelVersion.objects.filter(serving=serving, status=Status.CANARY).first()
        if canary is not None:
            canary.status, canary.canary_percent = Status.VALIDATED, 0
            canary.save(update_fields=["status", "canary_percent"])
            record(who, "rollback", serving, canary.version, dropped_canary=True)
            _notify_after_commit(serving)
            return canary
        current = ModelVersion.objects.filter(serving=serving, status=Status.ACTIVE).first()
        previous = previous_active(serving, current.version if current else None)
        if previous is None:
            raise VersionError(
                f"{serving} has no canary and no earlier active version that is still validated to roll back to; "
                f"activate one with `python manage.py models activate {serving} VERSION`"
            )
        if current is not None:
            current.status = Status.VALIDATED
            current.save(update_fields=["status"])
        previous.status = Status.ACTIVE
        previous.save(update_fields=["status"])
        record(who, "rollback", serving, previous.version, previous=current.version if current else None)
        _notify_after_commit(serving)
    return previous


def retire(serving: str, version: str, who: Who) -> ModelVersion:
    """Stop ``version`` from ever serving (its files stay in the repository)."""
    with transaction.atomic():
        row = get(serving, version, lock=True)
        if row.status == Status.ACTIVE:
            raise VersionError(
                f"{serving} {version} is the active version; activate another one or roll back before retiring it"
            )
        if row.status == Status.RETIRED:
            raise VersionError(f"{serving} {version} is already retired")
        was = row.status
        row.status, row.canary_percent = Status.RETIRED, 0
        row.save(update_fields=["status", "canary_percent"])
        record(who, "retire", serving, version, was=was)
        if was == Status.CANARY:
            _notify_after_commit(serving)
    return row
