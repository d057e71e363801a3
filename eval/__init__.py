"""Evaluation of policy versions: harmlessness, over-refusal, helpfulness, KL to SFT.

``python -m eval --help`` runs it (see ``eval/README.md``). The metrics are Hugging Face
``evaluate`` modules under ``eval/metrics/<name>/<name>.py`` — thin wrappers over the plain functions of
:mod:`eval.metric_functions` — always loaded by absolute path with ``HF_EVALUATE_OFFLINE=1`` (never from the
hub) and without touching ``sys.path``::

    from eval import load_metric
    refusal = load_metric("refusal")        # the module's metric, as evaluate.load("/abs/path/…") gives it
    refusal.compute(predictions=["I can't help with that."])

This package stays import-light (no torch): the metric modules import ``eval.stats`` and
``rlhf_demo.refusal.detector`` from it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
METRICS = ("refusal", "harmlessness", "over_refusal", "helpfulness", "kl")


def metric_path(name: str) -> Path:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS_DIR / name


def load_metric(name: str, online: bool = False, **kwargs):
    """One of our ``evaluate`` modules, offline unless ``online``: its file is imported from its absolute path
    and its metric class instantiated (what ``evaluate.load(path)`` does, without copying the file into
    evaluate's module cache — from where it could not import ``eval`` without the repository on ``sys.path``).
    ``kwargs`` go to the metric (``keep_in_memory`` defaults to True)."""
    if not online:
        os.environ["HF_EVALUATE_OFFLINE"] = "1"
    import evaluate

    path = metric_path(name) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"eval.metrics.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, evaluate.Metric) and c is not evaluate.Metric]
    if len(classes) != 1:
        raise ImportError(f"{path}: expected one evaluate.Metric class, found {len(classes)}")
    kwargs.setdefault("keep_in_memory", True)
    return classes[0](**kwargs)
