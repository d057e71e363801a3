"""The refusal judge's second probe (``rules-v2+probe-v2``): a logistic head on two layers of the base model.

Features come from :func:`rlhf_demo.probes.layer_states`: the embedded SmolLM2-135M-Instruct reads
``user: {prompt} / assistant: {answer}`` (each cut to 64 tokens), only its first ``max(layers) + 1`` blocks run,
and the hidden states after blocks 13 and 20 (no final norm) are mean-pooled over the answer's tokens and
over the request's tokens: ``[answer@13 | request@13 | answer@20 | request@20]`` (2,304 numbers). The head
(standardise, then logistic regression; :class:`rlhf_demo.probes.Probe`) lives in
``rlhf_demo/refusal/weights/refusal-probe-v2/`` with a card saying what it was trained and chosen on;
``scripts/train_refusal_probe_v2.py`` rebuilds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..probes import Probe as _Probe
from ..probes import layer_states

PROBE_V2_DIR = Path(__file__).resolve().parent / "weights" / "refusal-probe-v2"
DEFAULT_LAYERS = (13, 20)


def features(states: np.ndarray) -> np.ndarray:
    """``[n, L, 2, H]`` states -> ``[n, L * 2 * H]``: per layer, the answer's then the request's mean state."""
    states = np.asarray(states)
    if states.ndim != 4 or states.shape[2] != 2:
        raise ValueError(f"expected states of shape [n, layers, 2, hidden], got {states.shape}")
    return states.reshape(len(states), -1)


class ProbeV2(_Probe):
    """The generic head; its card names the layers it reads (``card["layers"]``)."""

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.card["layers"])

    @classmethod
    def load(cls, path: Path = PROBE_V2_DIR) -> "ProbeV2":
        path = Path(path)
        data = np.load(path / "head.npz")
        card = json.loads((path / "card.json").read_text())
        layers = card.get("layers")
        if not layers or not all(isinstance(x, int) and x >= 1 for x in layers):
            raise ValueError(f"{path / 'card.json'}: 'layers' must be a list of block numbers >= 1, got {layers!r}")
        if data["weight"].shape != data["mean"].shape or data["mean"].shape[0] % (2 * len(layers)):
            raise ValueError(f"{path / 'head.npz'}: weight {data['weight'].shape} / mean {data['mean'].shape} do not fit "
                             f"{len(layers)} layers x (answer, request)")
        return cls(data["mean"], data["scale"], data["weight"], float(data["bias"]), float(card["threshold"]), card)

    def probability(self, prompts: list[str | None], responses: list[str]) -> np.ndarray:
        """Probability that each answer is a refusal (runs the base model's first blocks)."""
        if not responses:
            return np.zeros(0)
        return self.proba(features(layer_states(prompts, responses, self.layers)))


_PROBE = None


def probe_v2() -> ProbeV2:
    global _PROBE
    if _PROBE is None:
        _PROBE = ProbeV2.load()
    return _PROBE


def refusal_probability_v2(prompts: list[str | None], responses: list[str]) -> np.ndarray:
    """probe-v2's probability that each answer is a refusal."""
    return probe_v2().probability(prompts, responses)
