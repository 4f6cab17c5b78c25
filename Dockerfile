# Dream Forge's images, installed from the lock files the test suite ran on (scripts/lock):
#
#   docker build --target worker -t dreamforge/worker:0.1.0 .  # torch with CUDA; every role
#   docker build --target api -t dreamforge/api:0.1.0 .        # the API alone: no torch
#
# The worker's torch wheels carry their CUDA libraries; a GPU node needs the NVIDIA driver
# and container toolkit only (docs/deploy-k3s.md).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DREAMFORGE_DATA_DIR=/data \
    DREAMFORGE_PUBLIC_URL=http://localhost:8000
RUN useradd --create-home --uid 10001 dreamforge && mkdir -p /data && chown dreamforge /data
WORKDIR /app
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["dreamforge"]

FROM base AS api
COPY deploy/requirements/api.txt /tmp/requirements.txt
RUN pip install --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps .
USER dreamforge
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
COPY deploy/requirements/worker.txt /tmp/requirements.txt
RUN pip install --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps .
USER dreamforge
CMD ["worker", "--queues", "gpu"]
