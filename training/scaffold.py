"""What every trainer (``training.ppo``, ``training.reward_model``) needs around its algorithm: seeding, the
run directory, the learning-rate schedule, the metrics log (:mod:`rlhf_demo.metrics_log`), checkpoints and
resume (:mod:`training.checkpoint`), data parallelism (:mod:`training.distributed`) and publishing
(:func:`rlhf_demo.registry.publish_to`): the pieces that are not the algorithm, so each trainer reads as one.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlhf_demo.config import Settings
from training import checkpoint as ckpt
from training import distributed as dist


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (every device) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up for ``warmup`` steps, then cosine / linear decay to 0 at ``total`` (or constant)."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return f


def default_run_dir(settings: Settings, prefix: str) -> Path:
    """``<data dir>/runs/<prefix>-<local time>`` (not created)."""
    return Path(settings.data_dir) / "runs" / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")


def newest_run(settings: Settings, prefix: str) -> Path | None:
    """The newest ``<data dir>/runs/<prefix>-*`` that holds a checkpoint (what ``--resume`` continues)."""
    root = Path(settings.data_dir) / "runs"
    runs = sorted(p for p in root.glob(f"{prefix}-*") if p.is_dir() and ckpt.list_checkpoints(p)) \
        if root.is_dir() else []
    return runs[-1] if runs else None


def prepare_run_dir(run_dir: str | Path, settings: Settings, prefix: str, config: dict) -> Path:
    """The run directory (``run_dir``, or :func:`default_run_dir`), the same on every data-parallel rank (named by
    the main rank's clock), created, with ``config.json`` written by the main rank."""
    path = Path(run_dir) if run_dir else default_run_dir(settings, prefix)
    path = dist.broadcast_object(path)
    path.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def load_pair_model(settings: Settings, bf16: bool, model=None, tokenizer=None):
    """``(settings, model, tokenizer)`` for a pair trainer (reward model, DPO): the base in bfloat16 when ``bf16``
    and the dtype is ``auto``; a given model is kept (its tokenizer loaded if missing)."""
    import dataclasses

    if bf16 and settings.dtype == "auto":
        settings = dataclasses.replace(settings, dtype="bfloat16")
    if model is None:
        from rlhf_demo.base_model import load_base_model

        model, tokenizer = load_base_model(settings)
    elif tokenizer is None:
        from rlhf_demo.base_model import load_tokenizer

        tokenizer = load_tokenizer(settings)
    return settings, model, tokenizer
