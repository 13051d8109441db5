# One command to run the site, one to test it. Both build .venv on first use.
#   make run     the site on http://127.0.0.1:8000 (SQLite, in-process servings)
#   make test    the whole test suite (what CI runs)
#   make stack   the distributed setup: Redis + Celery worker + ASGI server
#   make bench   the serving benchmark (bench/README.md)

VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
SHARED_SENTIMENT := $(wildcard ../shared/models/sentiment-minilm-sst2)
SHARED_U2NETP := $(wildcard ../shared/models/u2netp/model.onnx)
SHARED_WHISPER := $(wildcard ../shared/models/whisper-base)
# Use the checkout's shared weights when present, unless told otherwise.
export SENTIMENT_MODEL ?= $(SHARED_SENTIMENT)
export BACKGROUND_REMOVAL_MODEL ?= $(SHARED_U2NETP)
export TRANSCRIPTION_MODEL ?= $(SHARED_WHISPER)

.PHONY: install run test stack worker bench bench-deps bench-bg bench-transcription migrate clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, pinned, so nothing can pull CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

migrate: install
	$(PY) manage.py migrate --noinput

run: migrate
	$(VENV)/bin/daphne -b $(HOST) -p $(PORT) webapp.asgi:application

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The distributed setup, no Docker: daphne + a Celery worker against a local
# Redis (bin/stack.py; docs/worker.md). Ctrl-C stops both.
stack worker: export REDIS_URL ?= redis://127.0.0.1:6379/0
WORKER_CONCURRENCY ?= 32
WORKER_QUEUES ?=
stack: install
	$(PY) bin/stack.py --host $(HOST) --port $(PORT) --concurrency $(WORKER_CONCURRENCY) $(if $(WORKER_QUEUES),--queues $(WORKER_QUEUES))

# One worker alone (e.g. on a GPU box): WORKER_QUEUES=sentiment make worker
worker: install
	$(VENV)/bin/celery -A webapp worker -P threads -c $(WORKER_CONCURRENCY) $(if $(WORKER_QUEUES),-Q $(WORKER_QUEUES)) -l INFO

# The serving benchmark (bench/README.md): raw model vs in-process serving vs
# the Celery worker, on the real sentiment model; needs Redis (db 14, flushed).
# Options: BENCH_ARGS='--budget 4 --inputs long', see --help.
bench: install
	$(PY) -m bench.sentiment $(BENCH_ARGS)

# Background removal and transcription, beside rembg / faster-whisper and the
# Hugging Face pipeline (bench/README.md); those come from the `bench` extra.
bench-deps: install
	$(PY) -m pip install -q -e '.[bench]'
bench-bg: bench-deps
	$(PY) -m bench.background_removal $(BENCH_ARGS)
bench-transcription: bench-deps
	$(PY) -m bench.transcription $(BENCH_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles
