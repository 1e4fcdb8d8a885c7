# syntax=docker/dockerfile:1.7
# mmrag embedder: the Celery worker on queues `embed-search` and `embed-index` (Visualized BGE + Milvus).
# Build from the repository root:
#   GPU (default):  docker build -f deploy/docker/embedder.Dockerfile -t mmrag/embedder:0.1.0 .
#   CPU only:       docker build -f deploy/docker/embedder.Dockerfile --build-arg VARIANT=cpu -t mmrag/embedder:0.1.0-cpu .
#   weights baked:  ... --target embedder-baked --build-arg MMRAG_MODEL=bge-visualized-base-en-v1.5
ARG VARIANT=gpu
# torch's PyPI wheels for 2.14.1 are built for CUDA 13.0 and carry cuBLAS/cuDNN themselves, so the CUDA image is
# the small `base` flavour (driver-compatibility check and forward-compat libraries), not `runtime` (a second copy).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11.18-slim-bookworm
ARG PYTHON_VERSION=3.11.18

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# tini-static from Debian: one init binary for both variants (Ubuntu's CUDA image has no pinned tini of its own).
FROM ${PYTHON_IMAGE} AS tini
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*

# Python 3.11 on the CUDA image: uv's standalone CPython (Ubuntu 24.04 ships 3.12).
FROM ${CUDA_IMAGE} AS python-gpu
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_NO_CACHE=1
RUN uv python install "${PYTHON_VERSION}" && uv venv --python "${PYTHON_VERSION}" /opt/venv
ENV TORCH_INDEX_URL=https://pypi.org/simple

FROM ${PYTHON_IMAGE} AS python-cpu
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_PREFERENCE=only-system \
    UV_NO_CACHE=1
RUN uv venv --python /usr/local/bin/python3 /opt/venv
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# A stage of this file picked by VARIANT (gpu or cpu), not a registry image, so there is no tag to pin.
# hadolint ignore=DL3006
FROM python-${VARIANT} AS build
# Kept equal to the pins of the `embedder` extra in pyproject.toml (tests/unit/test_deploy.py checks).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV VIRTUAL_ENV=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
# torch first and from the variant's index (CUDA wheels from PyPI, or the CPU-only ones); its own layer, the largest.
RUN uv pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
# Then the other dependencies, from pyproject.toml alone (a stub package), so a source change reinstalls nothing.
COPY pyproject.toml README.md ./
RUN mkdir services && touch services/__init__.py && uv pip install "./[embedder]"
COPY services ./services
RUN uv pip install --no-deps --reinstall .

FROM ${CUDA_IMAGE} AS runtime-gpu
COPY --from=python-gpu /opt/python /opt/python

FROM ${PYTHON_IMAGE} AS runtime-cpu

# A stage of this file picked by VARIANT (gpu or cpu), not a registry image, so there is no tag to pin.
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS embedder
COPY --from=tini /usr/bin/tini-static /usr/bin/tini
RUN groupadd --system --gid 10001 mmrag \
    && useradd --system --uid 10001 --gid mmrag --home-dir /home/mmrag --create-home mmrag \
    && mkdir -p /data/media /cache/huggingface \
    && chown -R mmrag:mmrag /data /cache
COPY --from=build /opt/venv /opt/venv
# Weights and tokenizer files download once into HF_HOME: a named volume (compose) or a PVC (Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    MMRAG_DATA_DIR=/data \
    HF_HOME=/cache/huggingface
USER 10001:10001
WORKDIR /home/mmrag
# Pings this container's Celery node (embedder@<hostname>) over the broker; the start period covers a first
# download of the weights.
HEALTHCHECK --interval=30s --timeout=15s --start-period=300s --retries=3 \
    CMD ["mmrag", "health", "worker", "embedder"]
# tini forwards SIGTERM to Celery only (no -g): a warm shutdown that lets running tasks finish.
ENTRYPOINT ["tini", "--"]
CMD ["mmrag", "worker", "embedder"]

# The same image with the weights and tokenizer files inside, for hosts without access to the Hugging Face hub.
FROM embedder AS embedder-baked
ARG MMRAG_MODEL=bge-visualized-base-en-v1.5
# Outside /cache/huggingface, where compose and Kubernetes mount the (then unused) model cache volume.
ENV HF_HOME=/home/mmrag/huggingface \
    MMRAG_MODEL=${MMRAG_MODEL}
# The embedder's own loader fetches exactly what it later loads (checkpoint + text model files) into HF_HOME.
RUN python -c "from services.embedder.model_loading import load_model; \
load_model('${MMRAG_MODEL}', device='cpu', dtype='float32', progress=False)"
ENV HF_HUB_OFFLINE=1
