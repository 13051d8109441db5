"""The Django project: settings, ASGI routing, and the apps that put servings on the web."""

from .celery import app as celery_app

__all__ = ["celery_app"]
