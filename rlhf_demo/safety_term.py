"""The safety term of a composed reward version, added to the reward model's score. Two kinds (``signal``):

* ``linear`` (reward-v1): ``(2 h(p) - 1) * (v . z(p, a))`` — a prompt-harm probe ``h`` on the request's pooled
  hidden state and an answer vector ``v`` on the answer's standardised pooled state (both read by the first 16
  blocks of the embedded base, :mod:`rlhf_demo.probes`);
* ``refusal-clf-v1`` (reward-v2): ``scale * (2 h(p) - 1) * (2 c(p, a) - 1)`` — the same prompt-harm probe, and
  ``c`` the probability that the answer *is a refusal* by the fine-tuned refusal classifier
  (:mod:`rlhf_demo.refusal.clf`), which reads the text of request and answer. A linear read of the answer's
  hidden state can be raised by moving the state without writing a refusal; ``c`` pays only for answers that
  read as refusals. (The eval's default refusal judge is a different model, rules-v2 + probe-v2, so a policy
  trained on this term is not judged by the instrument it was trained against.)

A composed reward version is a reward adapter + score head like any other, plus ``safety_term.npz`` /
``safety_term.json``. :class:`SafetyTerm` loads and applies it; how it is fitted, and why, is in
:mod:`training.safety_reward`. Core: imports nothing from training, eval or the app.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import probes as P

TERM_FILE = "safety_term.npz"
TERM_CARD = "safety_term.json"
LINEAR = "linear"
REFUSAL_CLF = "refusal-clf-v1"
SIGNALS = (LINEAR, REFUSAL_CLF)


def gate(harm_probability: np.ndarray) -> np.ndarray:
    """``2 h - 1``: +1 for a surely harmful request, -1 for a surely safe one, 0 when unsure."""
    return 2.0 * np.asarray(harm_probability, dtype=np.float64) - 1.0


def safety_term(harm_probability: np.ndarray, z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(2 h - 1) * (v . z)`` per row (``z``: standardised answer features ``[n, d]``)."""
    return gate(harm_probability) * (np.asarray(z, dtype=np.float64) @ np.asarray(v, dtype=np.float64))


def refusal_term(harm_probability: np.ndarray, refusal_probability: np.ndarray, scale: float) -> np.ndarray:
    """``scale * (2 h - 1) * (2 c - 1)``: +scale for a refusal of a surely harmful request, -scale for a refusal
    of a surely safe one, and the opposite signs for an answer that does not refuse."""
    return float(scale) * gate(harm_probability) * (2.0 * np.asarray(refusal_probability, dtype=np.float64) - 1.0)


# ================================================================================================
# the term as a saved object
# ================================================================================================
@dataclass
class SafetyTerm:
    """The fitted prompt-harm probe and answer vector, with the standardisation of both inputs."""

    harm_mean: np.ndarray
    harm_scale: np.ndarray
    harm_weight: np.ndarray
    harm_bias: float
    answer_mean: np.ndarray
    answer_scale: np.ndarray
    v: np.ndarray
    card: dict
    signal: str = LINEAR  # what reads the answer: LINEAR (v . z) or REFUSAL_CLF (the refusal classifier)
    scale: float = 1.0  # REFUSAL_CLF: the term's size (reward units at h = 1, c = 1)

    def harm_probability(self, request_states: np.ndarray) -> np.ndarray:
        zz = (request_states - self.harm_mean) / self.harm_scale
        return 1.0 / (1.0 + np.exp(-(zz @ self.harm_weight + self.harm_bias)))

    def answer_features(self, answer_states: np.ndarray) -> np.ndarray:
        return (answer_states - self.answer_mean) / self.answer_scale

    def from_states(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(term, h)`` from :func:`rlhf_demo.probes.pooled_states` output ``[n, 2, H]`` (answer, request)."""
        h = self.harm_probability(pooled[:, 1])
        return safety_term(h, self.answer_features(pooled[:, 0]), self.v), h

    def score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        """The term for each (last user message, answer); runs the base model's first 16 blocks once."""
        if not answers:
            return np.zeros(0)
        if self.signal == REFUSAL_CLF:
            return refusal_term(self.request_harm(prompts), self.refusal_probability(prompts, answers), self.scale)
        return self.from_states(P.pooled_states(prompts, answers))[0]

    def request_harm(self, prompts: list[str]) -> np.ndarray:
        """``h`` of each request alone (the request's states do not depend on the answer after it); each distinct
        request is pooled once (PPO's grouped rollouts score several answers to one prompt)."""
        unique = list(dict.fromkeys(prompts))
        h = self.harm_probability(P.pooled_states(unique, [""] * len(unique))[:, 1])
        where = {p: i for i, p in enumerate(unique)}
        return h[[where[p] for p in prompts]]

    @staticmethod
    def refusal_probability(prompts: list[str], answers: list[str]) -> np.ndarray:
        from .refusal.clf import refusal_clf

        return refusal_clf().probability(prompts, answers)

    def compose(self, conversations, raw_scores) -> list[float]:
        """The reward model's raw scores plus the term, for whole conversations (prompt messages + answer)."""
        prompts = [last_user(c) for c in conversations]
        answers = [c[-1].get("content", "") for c in conversations]
        term = self.score(prompts, answers)
        return [float(r) + float(t) for r, t in zip(raw_scores, term)]

    # -- files ------------------------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        self.card = {**self.card, "signal": self.signal, "scale": float(self.scale)}
        np.savez(out_dir / TERM_FILE, **{k: np.asarray(getattr(self, k), dtype=np.float32) for k in
                                        ("harm_mean", "harm_scale", "harm_weight", "harm_bias", "answer_mean",
                                         "answer_scale", "v")})
        (out_dir / TERM_CARD).write_text(json.dumps(self.card, indent=2) + "\n")

    @classmethod
    def load(cls, version_dir: Path) -> "SafetyTerm | None":
        """The term of a reward version, or None if it has none (a plain reward model)."""
        path = Path(version_dir) / TERM_FILE
        if not path.exists():
            return None
        d = np.load(path)
        card = json.loads((Path(version_dir) / TERM_CARD).read_text())
        if int(card.get("layer", P.LAYERS)) != P.LAYERS:
            raise ValueError(f"{path}: the term reads layer {card['layer']}, rlhf_demo.probes runs {P.LAYERS}")
        signal = card.get("signal", LINEAR)
        if signal not in SIGNALS:
            raise ValueError(f"{path}: unknown safety-term signal {signal!r} (known: {', '.join(SIGNALS)})")
        return cls(d["harm_mean"], d["harm_scale"], d["harm_weight"], float(d["harm_bias"]), d["answer_mean"],
                   d["answer_scale"], d["v"], card, signal=signal, scale=float(card.get("scale", 1.0)))


def last_user(conversation: list[dict]) -> str:
    for m in reversed(conversation[:-1]):
        if m.get("role") == "user":
            return m.get("content", "")
    return ""
