# syntax=docker/dockerfile:1.7
# mmrag gateway: the HTTP API (FastAPI under uvicorn). Installs the `gateway` extra only: no torch, no pymilvus.
# Build from the repository root:  docker build -f deploy/docker/gateway.Dockerfile -t mmrag/gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.18-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone (a stub package), so a source change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir services && touch services/__init__.py && pip install "./[gateway]"
COPY services ./services
RUN pip install --no-deps --force-reinstall . && python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE} AS gateway
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid so volumes and Kubernetes' fsGroup/runAsUser agree; /data is created owned by it, so a fresh
# named volume mounted there starts writable.
RUN groupadd --system --gid 10001 mmrag \
    && useradd --system --uid 10001 --gid mmrag --home-dir /home/mmrag --create-home mmrag \
    && mkdir -p /data/media \
    && chown -R mmrag:mmrag /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MMRAG_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/mmrag
EXPOSE 8000
# Ready, not just alive: Redis answers and both queues have a consumer (`GET /readyz`).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["mmrag", "health", "gateway", "--url", "http://127.0.0.1:8000"]
ENTRYPOINT ["tini", "--"]
CMD ["mmrag", "gateway", "--host", "0.0.0.0", "--port", "8000"]
