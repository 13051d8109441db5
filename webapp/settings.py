"""Settings, read from the environment, with defaults that run on a laptop.

With nothing set: SQLite, the in-memory channel layer, servings run inside the
web process. ``DATABASE_URL`` switches the database (e.g.
``postgres://postgres@127.0.0.1:5432/test``); ``REDIS_URL`` switches to the
distributed setup: Redis channel layer, Celery broker, and servings run by the
Celery worker (``MLSERVICES_MODE=inprocess`` keeps them in-process anyway).
Every variable is listed in docs/configuration.md.
"""

import json
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.lower() in ("1", "true", "yes", "on")


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = env("DJANGO_SECRET_KEY", "dev-only-insecure-key-set-DJANGO_SECRET_KEY-in-production")
if not DEBUG and SECRET_KEY.startswith("dev-only"):
    raise RuntimeError("DJANGO_SECRET_KEY is not set; set it to a long random string when DJANGO_DEBUG=0")
ALLOWED_HOSTS = [h for h in env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "webapp.jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"), conn_max_age=0
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Servings -------------------------------------------------------------
# "inprocess": the web process runs servings itself (like an Nx.Serving in a
# Phoenix app). "celery": views and consumers enqueue; the worker runs them.
MLSERVICES_MODE = env("MLSERVICES_MODE", "celery" if REDIS_URL else "inprocess")
if MLSERVICES_MODE not in ("inprocess", "celery"):
    raise RuntimeError(f"MLSERVICES_MODE={MLSERVICES_MODE!r}; use 'inprocess' or 'celery'")

# Options of each serving, by name (see `python -m mlservices list`).
# MLSERVICES_CONFIG (JSON) is merged over these, serving by serving.
MLSERVICES = {
    "sentiment": {
        k: v
        for k, v in {
            "model": env("SENTIMENT_MODEL"),
            "revision": env("SENTIMENT_REVISION"),
            "sha256": env("SENTIMENT_SHA256"),
        }.items()
        if v
    },
}
for _name, _options in json.loads(env("MLSERVICES_CONFIG", "{}")).items():
    MLSERVICES.setdefault(_name, {}).update(_options)

# Largest text accepted from a browser or the API, in characters.
MLSERVICES_MAX_TEXT_CHARS = int(env("MLSERVICES_MAX_TEXT_CHARS", "20000"))
# Request bodies above this are refused before they are read (bytes).
DATA_UPLOAD_MAX_MEMORY_SIZE = int(env("DJANGO_MAX_BODY_BYTES", str(1024 * 1024)))
# How many times a job may start (worker deaths included) before it is failed.
JOBS_MAX_ATTEMPTS = int(env("JOBS_MAX_ATTEMPTS", "3"))

# --- Celery (distributed mode) --------------------------------------------
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# An unacknowledged job of a dead worker is handed out again after this long.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(env("CELERY_VISIBILITY_TIMEOUT", "300"))}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Static files and the rest --------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env("DJANGO_MEDIA_ROOT", str(BASE_DIR / "media")))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the page's script reads it to send X-CSRFToken

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}
