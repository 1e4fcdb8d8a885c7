# syntax=docker/dockerfile:1.7
# mmrag reranker: the Celery worker on queue `rerank` (panorama + vision LLM). CPU only, no torch.
# Build from the repository root:  docker build -f deploy/docker/reranker.Dockerfile -t mmrag/reranker:0.1.0 .
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
RUN mkdir services && touch services/__init__.py && pip install "./[reranker]"
COPY services ./services
RUN pip install --no-deps --force-reinstall . && python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE} AS reranker
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*
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
# Pings this container's Celery node (reranker@<hostname>) over the broker: alive means consuming.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD ["mmrag", "health", "worker", "reranker"]
# tini forwards SIGTERM to Celery only (no -g): a warm shutdown that lets running tasks finish.
ENTRYPOINT ["tini", "--"]
CMD ["mmrag", "worker", "reranker"]
