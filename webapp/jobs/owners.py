"""Who owns a job: a signed-in user, or an anonymous visitor's session.

The same ``Owner`` is derived from an HTTP request and from a websocket scope,
so both see exactly the same jobs, and its ``group`` is the channel-layer
group that job updates are pushed to.
"""

from __future__ import annotations

import dataclasses

from .models import Job, Upload


@dataclasses.dataclass(frozen=True)
class Owner:
    user_id: int | None = None
    session_key: str | None = None

    @property
    def known(self) -> bool:
        return bool(self.user_id or self.session_key)

    @property
    def group(self) -> str:
        if self.user_id:
            return f"jobs.user.{self.user_id}"
        return f"jobs.session.{self.session_key}"

    def owned(self, queryset):
        """``queryset`` (of jobs or uploads) narrowed to this owner's rows."""
        if self.user_id:
            return queryset.filter(owner_id=self.user_id)
        if self.session_key:
            return queryset.filter(owner__isnull=True, session_key=self.session_key)
        return queryset.none()

    def jobs(self):
        return self.owned(Job.objects.select_related("upload").prefetch_related("files"))

    def uploads(self):
        return self.owned(Upload.objects.all())

    def stamp(self, row):
        """Make this owner the owner of ``row`` (a job or an upload); returns it."""
        row.owner_id = self.user_id
        row.session_key = "" if self.user_id else self.session_key
        return row


def of_job(job: Job) -> Owner:
    """The owner of a job (or of any owned row)."""
    return Owner(user_id=job.owner_id) if job.owner_id else Owner(session_key=job.session_key)


def of_request(request, *, create_session: bool = False) -> Owner:
    if request.user.is_authenticated:
        return Owner(user_id=request.user.pk)
    if create_session and not request.session.session_key:
        request.session.save()
    return Owner(session_key=request.session.session_key)


def of_scope(scope) -> Owner:
    user = scope.get("user")
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk)
    session = scope.get("session")
    return Owner(session_key=session.session_key if session is not None else None)
