from django.apps import AppConfig


class MetricsConfig(AppConfig):
    """Every process of the site records its serving metrics from the start (``collectors.install``)."""

    name = "webapp.metrics"

    def ready(self):
        from .collectors import install

        install()
