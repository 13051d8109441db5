"""``versions.validate``: a validation run, sent to the serving's queue so a worker serving it runs it."""

from __future__ import annotations

from celery import shared_task

from .validation import validate_and_record


@shared_task(name="versions.validate", acks_late=False, ignore_result=True)
def validate(serving: str, version: str, username: str = "") -> dict:
    return validate_and_record(serving, version, username)
