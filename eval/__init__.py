"""Evaluation of policy versions: harmlessness, over-refusal, helpfulness, KL to SFT.

``python -m eval --help`` runs it (see ``eval/README.md``). The metrics are Hugging Face
``evaluate`` modules under ``eval/metrics/<name>/<name>.py``, always loaded by absolute path with
``HF_EVALUATE_OFFLINE=1`` (never from the hub)::

    from eval import load_metric
    refusal = load_metric("refusal")        # == evaluate.load("/abs/path/eval/metrics/refusal")
    refusal.compute(predictions=["I can't help with that."])

This package stays import-light (no torch): the metric modules import ``eval.stats`` and
``rlhf_demo.refusal.detector`` from it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
METRICS = ("refusal", "harmlessness", "over_refusal", "helpfulness", "kl")
_ROOT = str(Path(__file__).resolve().parents[1])


def metric_path(name: str) -> Path:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS_DIR / name


def load_metric(name: str, online: bool = False, **kwargs):
    """``evaluate.load`` of one of our modules by absolute path, offline unless ``online``.

    The module file is copied into evaluate's module cache and imports ``eval.*`` from there, so the
    repository root is put on ``sys.path`` first.
    """
    if not online:
        os.environ["HF_EVALUATE_OFFLINE"] = "1"
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), **kwargs)
