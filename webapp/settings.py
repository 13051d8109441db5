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
    "webapp.metrics",
    "webapp.versions",
]

MIDDLEWARE = [
    "webapp.http_errors.APIErrorsMiddleware",  # first: sees every response; /api/ errors become JSON
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
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Jobs run on threads beside the request handlers: let writers queue up
    # instead of failing with "database is locked", and test on a file (an
    # in-memory database shared between threads locks whole tables).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / "test-db.sqlite3")}
    (BASE_DIR / "var").mkdir(exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL")


def redis_channel_layer(url: str) -> dict:
    """The Redis channel layer on ``url``. channels_redis waits up to 5 s per
    receive (a blocking pop); redis-py 8 times sockets out after 5 s by default,
    which raised in every socket idle for 5 s (django/channels_redis#422), so
    the socket gets a longer timeout than the pop."""
    return {
        "BACKEND": "webapp.redis_layer.RedisChannelLayer",  # channels_redis', living through outages
        "CONFIG": {"hosts": [{"address": url, "socket_timeout": 15, "socket_connect_timeout": 5}]},
    }


if REDIS_URL:
    CHANNEL_LAYERS = {"default": redis_channel_layer(REDIS_URL)}
else:  # one process: Channels' in-memory layer, made safe to send to from job threads
    CHANNEL_LAYERS = {"default": {"BACKEND": "webapp.channel_layer.InProcessChannelLayer"}}

# --- Servings -------------------------------------------------------------
# "inprocess": the web process runs servings itself (like an Nx.Serving in a
# Phoenix app). "celery": views and consumers enqueue; the worker runs them.
MLSERVICES_MODE = env("MLSERVICES_MODE", "celery" if REDIS_URL else "inprocess")
if MLSERVICES_MODE not in ("inprocess", "celery"):
    raise RuntimeError(f"MLSERVICES_MODE={MLSERVICES_MODE!r}; use 'inprocess' or 'celery'")
# The serving whose page is / (every serving's page is /s/<name>/).
MLSERVICES_HOME_SERVING = env("MLSERVICES_HOME_SERVING", "sentiment")

# Options of each serving, by name (see `python -m mlservices list`).
# MLSERVICES_CONFIG (JSON) is merged over these, serving by serving. At start-up
# (webapp/jobs/startup.py) every discovered serving missing here gets an entry,
# with model/revision/sha256 from <NAME>_MODEL, <NAME>_REVISION, <NAME>_SHA256
# (e.g. EMBEDDINGS_MODEL), and each one is built: a bad option stops the site.
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
    "background_removal": {
        k: v
        for k, v in {"model": env("BACKGROUND_REMOVAL_MODEL"), "sha256": env("BACKGROUND_REMOVAL_SHA256")}.items()
        if v
    },
    "transcription": {
        k: v
        for k, v in {
            "model": env("TRANSCRIPTION_MODEL"),
            "revision": env("TRANSCRIPTION_REVISION"),
            "sha256": env("TRANSCRIPTION_SHA256"),
        }.items()
        if v
    },
}
for _name, _options in json.loads(env("MLSERVICES_CONFIG", "{}")).items():
    MLSERVICES.setdefault(_name, {}).update(_options)

# Largest text accepted from a browser or the API, in characters.
MLSERVICES_MAX_TEXT_CHARS = int(env("MLSERVICES_MAX_TEXT_CHARS", "20000"))
# Largest upload, in bytes, for a file serving whose spec sets no smaller limit.
MLSERVICES_UPLOAD_MAX_BYTES = int(env("MLSERVICES_UPLOAD_MAX_BYTES", str(50 * 1024 * 1024)))
# Per-serving overrides of the spec's limits (JSON), e.g.
# {"background_removal": {"max_bytes": 5000000}, "sentiment": {"max_chars": 5000}}.
MLSERVICES_LIMITS = json.loads(env("MLSERVICES_LIMITS", "{}"))
# Most bytes one owner may keep stored (uploads + job files); past it uploads get 413.
OWNER_STORAGE_MAX_BYTES = int(env("OWNER_STORAGE_MAX_BYTES", str(500 * 1024 * 1024)))
# `python manage.py purge_jobs` deletes jobs, uploads and files older than this.
JOBS_RETENTION_DAYS = float(env("JOBS_RETENTION_DAYS", "7"))
# Request bodies above this are refused before they are read (bytes).
DATA_UPLOAD_MAX_MEMORY_SIZE = int(env("DJANGO_MAX_BODY_BYTES", str(1024 * 1024)))
# Live predictions (the websocket's predict): running at once per socket (a
# newer one waiting replaces the one waiting before it: latest wins), per owner
# over all their sockets (in one web process), and how long one may go
# unanswered before the page is told "timeout" (a little over the 60 s after
# which a queued prediction task expires unrun).
PREDICTIONS_PER_SOCKET = int(env("PREDICTIONS_PER_SOCKET", "1"))
PREDICTIONS_PER_OWNER = int(env("PREDICTIONS_PER_OWNER", "4"))
PREDICTION_TIMEOUT_S = float(env("PREDICTION_TIMEOUT_S", "65"))
# Jobs one owner may have queued or running at once; more get 429 + Retry-After.
JOBS_MAX_ACTIVE_PER_OWNER = int(env("JOBS_MAX_ACTIVE_PER_OWNER", "20"))
JOBS_RETRY_AFTER_S = int(env("JOBS_RETRY_AFTER_S", "5"))
# How many times a job may start (worker deaths included) before it is failed.
JOBS_MAX_ATTEMPTS = int(env("JOBS_MAX_ATTEMPTS", "3"))

# --- Celery (distributed mode) --------------------------------------------
# The worker: `celery -A webapp worker -P threads -c 32 -Q sentiment` (docs/worker.md).
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or None
CELERY_RESULT_EXPIRES = int(env("CELERY_RESULT_EXPIRES", "3600"))  # only live predictions store one
CELERY_TASK_IGNORE_RESULT = True  # a job's outcome lives in the database
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A job is acknowledged when it has finished, not when it was received: the
# jobs of a worker that dies are delivered again (and counted, JOBS_MAX_ATTEMPTS).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS stays off (the
# default): it asks the pool to kill the running tasks when the broker
# connection drops, which the threads pool cannot do (every such task logged
# "NotImplementedError: TaskPool does not implement kill_job" and ran on). So
# on a connection loss running jobs finish; their acknowledgement is lost with
# the connection, Redis hands them out again after CELERY_VISIBILITY_TIMEOUT,
# and execute_job skips a job that already finished (Celery warns once,
# CPendingDeprecationWarning, that 6.0 will change the default).
# An unacknowledged job of a dead worker is handed out again after this long
# (seconds); it must exceed every hard time limit below, or a slow job is
# handed to a second worker while the first still runs it. Workers look for
# such jobs at start and then every CELERY_UNACKED_RESTORE_INTERVAL seconds.
CELERY_VISIBILITY_TIMEOUT = float(env("CELERY_VISIBILITY_TIMEOUT", "300"))
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "unacked_restore_interval": float(
        env("CELERY_UNACKED_RESTORE_INTERVAL", str(max(1.0, min(10.0, CELERY_VISIBILITY_TIMEOUT / 3))))
    ),
    "unacked_restore_throttle": 1,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Nothing stuck (webapp.jobs.liveness, a thread in every worker; docs/worker.md).
# Each worker writes a heartbeat to Redis every JOBS_WORKER_HEARTBEAT seconds;
# one silent for JOBS_WORKER_DEAD_AFTER seconds is dead, and the jobs it was
# running go back on their queues at the next heartbeat of a live worker (or
# when a worker restarts under the same node name, at its start).
JOBS_WORKER_HEARTBEAT = float(env("JOBS_WORKER_HEARTBEAT", "2"))
JOBS_WORKER_DEAD_AFTER = float(env("JOBS_WORKER_DEAD_AFTER", "10"))
# Every JOBS_REAPER_INTERVAL seconds, jobs queued for over JOBS_REQUEUE_AFTER
# seconds whose message Redis no longer holds (a restart without persistence)
# are sent again; after JOBS_MAX_REQUEUES re-sends a job fails with "lost", and
# one whose serving no live worker serves fails with "unserved" once queued for
# JOBS_UNSERVED_AFTER seconds.
JOBS_REAPER_INTERVAL = float(env("JOBS_REAPER_INTERVAL", "15"))
JOBS_REQUEUE_AFTER = float(env("JOBS_REQUEUE_AFTER", "60"))
JOBS_MAX_REQUEUES = int(env("JOBS_MAX_REQUEUES", "3"))
JOBS_UNSERVED_AFTER = float(env("JOBS_UNSERVED_AFTER", "300"))


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


# --- The servings worker (distributed mode) ---------------------------------
# Servings a worker loads (and warms up) at start, comma-separated. Empty: the
# servings its queues name (-Q sentiment), or every serving in MLSERVICES when
# it consumes no serving's queue. The worker also consumes the queue of each
# serving it loads, so a GPU box can run the heavy servings and a CPU box the
# light ones.
MLSERVICES_WORKER_SERVINGS = env_list("MLSERVICES_WORKER_SERVINGS")
# Packages of extra servings the worker discovers besides mlservices.servings
# (e.g. a site's own servings package, or the tests' toy servings).
MLSERVICES_EXTRA_SERVINGS = env_list("MLSERVICES_EXTRA_SERVINGS")
# Time limits of a run, in seconds, for every serving unless
# MLSERVICES_TIME_LIMITS (JSON, e.g. {"sentiment": {"soft": 20, "hard": 60}})
# says otherwise. Soft: a job that has waited this long for its serving fails
# with code "timeout" (its owner sees why). Hard: a worker with a model call
# (one batch) or a run still going after this long is stuck (a hung model or
# GPU); it exits so that a fresh worker takes over and gets the jobs it was
# still running, each tried at most JOBS_MAX_ATTEMPTS times.
MLSERVICES_SOFT_TIME_LIMIT = float(env("MLSERVICES_SOFT_TIME_LIMIT", "60"))
MLSERVICES_HARD_TIME_LIMIT = float(env("MLSERVICES_HARD_TIME_LIMIT", "120"))
MLSERVICES_TIME_LIMITS = {
    name: {"soft": MLSERVICES_SOFT_TIME_LIMIT, "hard": MLSERVICES_HARD_TIME_LIMIT} for name in MLSERVICES
}
for _name, _limits in json.loads(env("MLSERVICES_TIME_LIMITS", "{}")).items():
    _unknown = sorted(set(_limits) - {"soft", "hard"})
    if _unknown:
        raise RuntimeError(f"MLSERVICES_TIME_LIMITS[{_name!r}]: unknown key(s) {', '.join(_unknown)}; use soft, hard")
    MLSERVICES_TIME_LIMITS.setdefault(
        _name, {"soft": MLSERVICES_SOFT_TIME_LIMIT, "hard": MLSERVICES_HARD_TIME_LIMIT}
    ).update({k: float(v) for k, v in _limits.items()})

# --- Model versions (webapp.versions, docs/models.md) -----------------------
# Every process holding servings (a worker; the web process in in-process mode)
# checks the database for version changes this often (seconds; 0: never), on
# top of the broadcast each admin action sends.
MODELS_SYNC_INTERVAL = float(env("MODELS_SYNC_INTERVAL", "5"))
# `manage.py models validate` waits this long (seconds) for a worker's outcome.
MODELS_VALIDATE_TIMEOUT = float(env("MODELS_VALIDATE_TIMEOUT", "600"))
# Largest model file or archive an admin may upload (bytes). The limit is applied
# before the request is read, so before the admin login is checked: anyone may send
# this much to that one URL. Bigger models: `manage.py models import` or a server path.
MODELS_UPLOAD_MAX_BYTES = int(env("MODELS_UPLOAD_MAX_BYTES", str(512 * 1024**2)))

# --- Metrics and the status page (docs/operations.md) -----------------------
# Prometheus reads /metrics (and each worker's WORKER_METRICS_PORT) with the header
# "Authorization: Bearer <METRICS_TOKEN>"; with no token set, metrics are not served.
METRICS_TOKEN = env("METRICS_TOKEN")
# A worker's own metrics port (0: none) and the address it listens on.
WORKER_METRICS_PORT = int(env("WORKER_METRICS_PORT", "0"))
WORKER_METRICS_HOST = env("WORKER_METRICS_HOST", "0.0.0.0")
# How often the staff status page (/status/) is refreshed over its websocket (seconds).
STATUS_REFRESH_S = float(env("STATUS_REFRESH_S", "2"))

# --- Static files and the rest --------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
# Uploads and job files: Django's default storage. The file system under
# MEDIA_ROOT unless DJANGO_STORAGES (JSON, Django's STORAGES format, e.g. an
# S3 bucket through django-storages) says otherwise; web and workers must
# share it. Files are served only through owner-checked views, never MEDIA_URL.
MEDIA_ROOT = Path(env("DJANGO_MEDIA_ROOT", str(BASE_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
STORAGES.update(json.loads(env("DJANGO_STORAGES", "{}")))
# Uploads above this size go to a temporary file instead of memory while read.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the page's script reads it to send X-CSRFToken

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # A Redis outage logs a few lines, not a traceback per failed call (webapp.outages).
    "filters": {"quiet_outages": {"()": "webapp.outages.QuietConnectionErrors"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["quiet_outages"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "urllib3": {"level": "WARNING"}},
}

# --- Hardening: HTTP edge ---------------------------------------------------
# Untrusted JSON (request bodies, websocket messages; webapp.jobs.json_body):
# the deepest nesting and the longest number (in digits) accepted.
JSON_MAX_DEPTH = int(env("JSON_MAX_DEPTH", "32"))
JSON_MAX_NUMBER_DIGITS = int(env("JSON_MAX_NUMBER_DIGITS", "30"))
# A request body must arrive whole within this many seconds of its headers,
# or the request gets 408 and its connection is closed (webapp.body_limits).
# Bodies may be DATA_UPLOAD_MAX_MEMORY_SIZE bytes, uploads to /api/uploads and
# /api/jobs MLSERVICES_UPLOAD_MAX_BYTES plus 64 KiB of form fields (413 past it).
HTTP_BODY_TIMEOUT = float(env("HTTP_BODY_TIMEOUT", "30"))
# A failed CSRF check: JSON (code csrf_failed) under /api/, a short page elsewhere.
CSRF_FAILURE_VIEW = "webapp.http_errors.csrf_failure"
