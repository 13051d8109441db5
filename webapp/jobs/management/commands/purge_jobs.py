"""``python manage.py purge_jobs [--days N] [--dry-run]``: delete what has outlived the retention.

Jobs queued, and uploads made, more than ``JOBS_RETENTION_DAYS`` days ago
(``--days`` overrides) are deleted with their files in storage. Jobs still
queued or running are kept whatever their age. Run it daily, e.g. from cron::

    17 3 * * *  cd /srv/site && .venv/bin/python manage.py purge_jobs
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db.models import Q
from django.utils import timezone

from webapp.jobs.models import Job, JobFile, Upload


class Command(BaseCommand):
    help = "Delete jobs, uploads and their files older than the retention (JOBS_RETENTION_DAYS)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=None, help="retention in days (default: JOBS_RETENTION_DAYS)")
        parser.add_argument("--dry-run", action="store_true", help="only say what would be deleted")

    def handle(self, *args, days=None, dry_run=False, **options):
        days = settings.JOBS_RETENTION_DAYS if days is None else days
        if days < 0:
            self.stderr.write(f"error: --days {days:g}: use 0 or more")
            raise SystemExit(2)
        cutoff = timezone.now() - timedelta(days=days)
        jobs = Job.objects.filter(queued_at__lt=cutoff, status__in=Job.FINISHED)
        # An upload goes once it is old and no job that is kept still needs it.
        uploads = Upload.objects.filter(created_at__lt=cutoff).exclude(
            Q(jobs__queued_at__gte=cutoff) | Q(jobs__status__in=(Job.Status.QUEUED, Job.Status.RUNNING))
        ).distinct()
        files = JobFile.objects.filter(job__in=jobs)
        counts = (jobs.count(), uploads.count(), files.count() + uploads.count())
        summary = "deleted {} job(s), {} upload(s) and {} file(s)".format(*counts)
        if dry_run:
            self.stdout.write("would have " + summary + f" (older than {days:g} days)")
            return
        for row in list(files) + list(uploads):
            row.file.delete(save=False)
        jobs.delete()
        Upload.objects.filter(pk__in=[u.pk for u in uploads]).delete()
        self.stdout.write(summary + f" (older than {days:g} days)")
