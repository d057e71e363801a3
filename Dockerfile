# RLHF Arena — CPU image by default; CUDA with:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Run: docker run -p 7860:7860 -v rlhf-data:/data rlhf-arena
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RLHF_ARENA_HOME=/data \
    GRADIO_SERVER_NAME=0.0.0.0

RUN apt-get update \
 && apt-get install -y --no-install-recommends make curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 arena \
 && mkdir -p /data /app \
 && chown arena:arena /data /app

WORKDIR /app
COPY --chown=arena:arena requirements.txt ./
COPY --chown=arena:arena scripts/install.sh scripts/install.sh
USER arena
# The same install script `make run` / `make test` use; it also installs the embedded model.
RUN if [ -n "$TORCH_INDEX" ]; then PIP_EXTRA_INDEX_URL="$TORCH_INDEX" PYTHON=python3 VENV=/app/.venv bash scripts/install.sh; \
    else PYTHON=python3 VENV=/app/.venv bash scripts/install.sh; fi
COPY --chown=arena:arena . .

VOLUME ["/data"]
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS http://127.0.0.1:7860/ >/dev/null || exit 1
CMD ["/app/.venv/bin/python", "app.py", "--host", "0.0.0.0", "--port", "7860", "--data-dir", "/data"]
