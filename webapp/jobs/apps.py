from django.apps import AppConfig
from django.conf import settings


class JobsConfig(AppConfig):
    name = "webapp.jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import mlservices

        from .startup import prepare_servings

        # Every serving discovered (package, MLSERVICES_EXTRA_SERVINGS, entry points), configured
        # and built: a name clash, an unknown option or a malformed spec stops the site here.
        prepare_servings(settings.MLSERVICES, settings.MLSERVICES_EXTRA_SERVINGS)
        # Configuring loads nothing: each serving loads on first use (in-process
        # mode) or when the worker starts (Celery mode).
        mlservices.configure(settings.MLSERVICES)
        # In-process mode: the first request of a process resumes what a dead one left (dispatch).
        from django.core.signals import request_started

        from .dispatch import resume_unfinished

        request_started.connect(resume_unfinished, dispatch_uid="resume-unfinished-jobs")
