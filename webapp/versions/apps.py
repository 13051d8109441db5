from django.apps import AppConfig


class VersionsConfig(AppConfig):
    name = "webapp.versions"
    verbose_name = "Model versions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # In-process mode, in a web server process: a serving's first use deploys the
        # database's versions, and the first request starts the sync poll (webapp.versions.sync).
        # A worker does the same in webapp.worker.load_servings.
        import mlservices
        from django.core.signals import request_started

        from webapp.jobs.dispatch import distributed

        from .sync import first_routes, start_in_web_process, web_server_process

        if web_server_process() and not distributed():
            mlservices.runtime.default().first_routes = first_routes
        request_started.connect(start_in_web_process, dispatch_uid="versions-sync-in-web-process")
