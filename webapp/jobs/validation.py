"""The door: what the web process checks before anything is enqueued.

Generic for every serving: it reads the serving's declared input spec
(``mlservices.spec``) and the site's limits, loads no model, and is the same
in both modes.

- ``spec_json(name)``: the spec as clients see it (``GET /api/servings``, the
  page), with the site's effective limits.
- ``check(owner, name, input, live=False) -> (input, upload)``: the input in its canonical
  form, ready to be stored on a job. Text is bounded by ``max_chars``; a file
  serving's input names an upload of the same owner (``{"file": "<upload
  id>", ...options}``) whose sniffed format and size the spec accepts;
  options are typed and range-checked; the serving's own ``validate`` runs
  last. Each refusal names the value, the limit and the fix.
"""

from __future__ import annotations

import json
import uuid

import mlservices
from django.conf import settings
from mlservices.spec import FILE_FIELD

from .models import Upload


def definition(name: str) -> mlservices.Serving:
    """Serving ``name`` as configured for this site, unloaded (``ServingNotFound`` lists the known ones)."""
    if not isinstance(name, str) or not name:
        raise mlservices.InvalidInput("'serving' is missing; name one, e.g. \"sentiment\"")
    return mlservices.runtime.default().definition(name)


def limits(name: str) -> dict:
    """The limits the site applies to ``name``: its spec's, the site's defaults, then MLSERVICES_LIMITS."""
    spec = definition(name).spec
    effective = {k: v for k, v in spec.as_json()["limits"].items()}
    if spec.kind == "text":
        effective["max_chars"] = min(effective.get("max_chars", settings.MLSERVICES_MAX_TEXT_CHARS),
                                     settings.MLSERVICES_MAX_TEXT_CHARS)
    if spec.is_file:
        effective["max_bytes"] = min(effective.get("max_bytes", settings.MLSERVICES_UPLOAD_MAX_BYTES),
                                     settings.MLSERVICES_UPLOAD_MAX_BYTES)
    effective.update(settings.MLSERVICES_LIMITS.get(name, {}))
    return effective


def spec_json(name: str) -> dict:
    return {**definition(name).spec.as_json(), "limits": limits(name)}


def reads_database(name: str) -> bool:
    """Whether ``check`` of serving ``name`` reads the database (a file serving looks its upload up);
    a text or JSON serving's check is pure, cheap enough to run on the event loop."""
    return definition(name).spec.is_file


def check(owner, name: str, input, *, live: bool = False) -> tuple[object, Upload | None]:
    """``live``: for a live prediction (which may use a live upload), not a job."""
    serving = definition(name)
    spec = serving.spec
    if spec.is_file:
        return _check_file_input(owner, serving, input, live)
    if spec.kind == "text":
        text = input.get("text") if isinstance(input, dict) else input
        if isinstance(text, str):  # the site's limit; the spec reports other mistakes
            spec.check_text(name, text, max_chars=limits(name)["max_chars"])
    return serving.check(input), None


def _check_file_input(owner, serving: mlservices.Serving, input, live: bool) -> tuple[dict, Upload]:
    name, spec = serving.name, serving.spec
    if not isinstance(input, dict) or not isinstance(input.get(FILE_FIELD), str):
        raise mlservices.InvalidInput(
            f'{name}: send {{"file": "<upload id>", ...options}}; upload the file first '
            "(POST /api/uploads), or send the job as multipart/form-data with the file"
        )
    upload = find_upload(owner, input[FILE_FIELD])
    if upload.live and not live:
        raise mlservices.InvalidInput(
            f"upload {upload.pk} was sent for one live prediction (live=true) and is deleted after it; "
            "upload the file again without live=true to make a job of it"
        )
    spec.check_format(name, upload.format)
    max_bytes = limits(name)["max_bytes"]
    if upload.size > max_bytes:
        raise mlservices.InvalidInput(
            f"{name}: the file is {upload.size:,} bytes; the limit is {max_bytes:,}. Send a smaller file"
        )
    options = spec.check_options(name, {k: v for k, v in input.items() if k != FILE_FIELD})
    return {FILE_FIELD: str(upload.id), **options}, upload


def find_upload(owner, upload_id: str) -> Upload:
    try:
        key = uuid.UUID(str(upload_id))
    except ValueError:
        key = None
    upload = owner.uploads().filter(pk=key).first() if key else None
    if upload is None:  # someone else's upload is as absent as a missing one
        raise mlservices.InvalidInput(
            f"no upload {str(upload_id)[:40]!r} among yours; upload the file first (POST /api/uploads)"
        )
    return upload


def summary(input, upload: Upload | None = None) -> str:
    if upload is not None:
        shown = upload.name or f"{upload.format} file"
    elif isinstance(input, dict) and isinstance(input.get("text"), str):
        shown = input["text"]
    elif isinstance(input, str):
        shown = input
    else:
        shown = json.dumps(input, ensure_ascii=False)
    shown = " ".join(shown.split())
    return shown if len(shown) <= 120 else shown[:119] + "…"
