"""The refusal judge's probe: a logistic head on the base model's pooled states of request and answer.

Features and head come from :mod:`rlhf_demo.probes` (the first 16 blocks of the embedded
SmolLM2-135M-Instruct, answer and request mean-pooled side by side). Its weights (a 1,152-vector, a
bias, the standardisation) live in ``rlhf_demo/refusal/weights/refusal-probe-v1/`` with a card saying
what it was trained on; ``scripts/train_refusal_probe.py`` rebuilds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..probes import (LAYERS, MAX_PROMPT_TOKENS, MAX_RESPONSE_TOKENS, encode, features, fit_logistic,  # noqa: F401
                      pooled_states)
from ..probes import Probe as _Probe

PROBE_DIR = Path(__file__).resolve().parent / "weights" / "refusal-probe-v1"



class Probe(_Probe):
    """The generic head, loading the refusal probe's weights by default."""

    @classmethod
    def load(cls, path: Path = PROBE_DIR) -> "Probe":
        return super().load(path)


_PROBE = None


def probe() -> Probe:
    global _PROBE
    if _PROBE is None:
        _PROBE = Probe.load()
    return _PROBE


def refusal_probability(prompts: list[str | None], responses: list[str]) -> np.ndarray:
    """The probe's probability that each answer is a refusal (runs the base model's first blocks)."""
    if not responses:
        return np.zeros(0)
    return probe().proba(features(pooled_states(prompts, responses)))
