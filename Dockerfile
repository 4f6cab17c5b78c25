# Dream Forge with CUDA. One image for every role: `api`, `worker`, `db upgrade`, `serve`.
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DREAMFORGE_DATA_DIR=/data \
    DREAMFORGE_PUBLIC_URL=http://localhost:8000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# torch comes with the base image; pip keeps it, as the project's range admits it.
RUN pip install . && useradd --create-home --uid 10001 dreamforge \
    && mkdir -p /data && chown dreamforge /data

USER dreamforge
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["dreamforge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
