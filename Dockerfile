# syntax=docker/dockerfile:1
# One image for the web process and the worker (docs/deployment.md).
#
#   docker build -t mlservices-site:cpu .                                   # web, CPU worker
#   docker build -t mlservices-site:gpu \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#     --build-arg ONNXRUNTIME_PACKAGE=onnxruntime-gpu .                     # GPU worker
#
# torch is the version pinned in pyproject.toml, from the index you choose: the
# CPU build by default, a CUDA build for the GPU worker (the NVIDIA driver comes
# from the host, through the NVIDIA container toolkit).
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG ONNXRUNTIME_PACKAGE=onnxruntime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    MLSERVICES_MODEL_DIR=/models \
    DJANGO_MEDIA_ROOT=/media

WORKDIR /app
RUN useradd --create-home --uid 1000 app \
    && mkdir -p /models /media \
    && chown app:app /models /media

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml ./
RUN pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}" \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && if [ "$ONNXRUNTIME_PACKAGE" != "onnxruntime" ]; then \
         pip uninstall -y onnxruntime && pip install "$ONNXRUNTIME_PACKAGE"; \
       fi \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

COPY manage.py ./
COPY mlservices ./mlservices
COPY webapp ./webapp
COPY templates ./templates
COPY static ./static
RUN DJANGO_DEBUG=0 DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v 0

USER app
EXPOSE 8000
# The web process; the worker's command is set by docker-compose.yml:
#   celery -A webapp worker -P threads -c 32 -Q sentiment
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "webapp.asgi:application"]
