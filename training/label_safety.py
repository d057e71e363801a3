"""A safety term from what is known, not read: ``python -m training.ppo --label-safety SCALE``.

The composed rewards (reward-v1/v2/v3, rlhf_demo/safety_term.py) decide *whether a request is harmful* with a
prompt-harm probe on the 135M base, and reward-v2/v3 decide *whether an answer refuses* with a classifier on the
same base. Both misread (docs/reward-v2/README.md: h("How do I boil an egg?") = 0.81; refusal-clf-v1's F1 on
development answers is about 0.67), and PPO optimises every misreading. Yet PPO's training prompts carry their
kind from the data set they came from (``mix:harmful=…,risky=…,ordinary=…`` and ``seed``: harmful, sensitive,
ordinary), and an *explicit* decline ("I can't help with that") is what rules-v2 finds with a precision of
0.89–1.00 by policy, 0.98 overall, on the project's own policies' answers (labelled by reading:
docs/rlhf-v1/run21/explicit_precision.md).

So this term uses the prompt's data-set label ``y`` (+1 harmful, −1 any other known kind, 0 unknown: no term)
and rules-v2's explicit-decline verdict ``e`` of the answer::

    term = SCALE · y · (2e − 1)        an empty answer: −SCALE whatever the prompt

a refusal of a harmful training request earns +SCALE, an answer to it −SCALE; on a safe or ordinary request the
signs swap. "Is a refusal" alone predicts nothing (the same refusal is paid on one kind and fined on the other),
and the reward model's own score still ranks answers within a kind. Soft refusals (lectures, swaps) are not
explicit declines: on a harmful request they earn what an answer earns, so the term pushes toward the clear
refusal a user can read as one. Validation prompts are not in the lookup (their labels stay out of training):
``val/score`` is the reward model's alone.
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf_demo.refusal.detector import rules_decline
from rlhf_demo.refusal.rules_v2 import detect_refusal_v2
from rlhf_demo.safety_term import last_user
from training.ppo_data import HARMFUL_CATEGORIES


def prompt_sign(category: str | None) -> int:
    """+1 for a harmful kind, −1 for any other known kind (sensitive, ordinary, helpful…), 0 when unlabelled."""
    if not category:
        return 0
    return 1 if category.strip().lower() in HARMFUL_CATEGORIES else -1


def answer_verdict(response: str, prompt: str | None) -> str:
    """'refusal' (rules-v2's explicit decline), 'empty', or 'other' (an answer, or a soft refusal)."""
    v = detect_refusal_v2(response, prompt)
    return v.kind if rules_decline(v) else "other"  # rules_decline: the kinds 'refusal' and 'empty' only


def label_term(signs, verdicts, scale: float) -> np.ndarray:
    """``scale · y · (2e − 1)`` per row (e = 1 for an explicit refusal); an empty answer gets −scale; y = 0: 0."""
    out = []
    for y, v in zip(signs, verdicts):
        if y == 0:
            out.append(0.0)
        elif v == "empty":
            out.append(-float(scale))
        else:
            out.append(float(scale) * y * (1.0 if v == "refusal" else -1.0))
    return np.asarray(out, dtype=np.float64)


class LabelSafety:
    """The term for conversations whose last user message is a labelled training prompt."""

    def __init__(self, labels: dict[str, int], scale: float):
        if scale <= 0:
            raise ValueError(f"--label-safety {scale}: the scale must be > 0 (0 = off)")
        self.labels, self.scale = labels, float(scale)
        self.last_verdicts: list[str] = []
        self.last_signs: list[int] = []

    @classmethod
    def from_pool(cls, prompts: list[list[dict]], categories: list[str | None], scale: float) -> "LabelSafety":
        """From the training pool and its categories. A request that appears under two kinds is left unlabelled."""
        labels: dict[str, int] = {}
        clash: set[str] = set()
        for messages, category in zip(prompts, categories):
            text, sign = last_user([*messages, {}]), prompt_sign(category)  # last_user reads a conversation + answer
            if not sign:
                continue
            if labels.get(text, sign) != sign:
                clash.add(text)
            labels[text] = sign
        for text in clash:
            del labels[text]
        if not labels:
            raise ValueError("--label-safety: no training prompt has a known kind (use 'mix:…' or 'seed' prompts)")
        return cls(labels, scale)

    def score(self, conversations: list[list[dict]]) -> torch.Tensor:
        prompts = [last_user(c) for c in conversations]
        answers = [c[-1].get("content", "") for c in conversations]
        signs = self.last_signs = [self.labels.get(p, 0) for p in prompts]
        self.last_verdicts = [answer_verdict(a, p) if s else "unlabelled" for a, p, s in zip(answers, prompts, signs)]
        return torch.tensor(label_term(signs, self.last_verdicts, self.scale), dtype=torch.float32)

    def stats(self) -> dict[str, float]:
        """Of the last scored answers: the share whose prompt was labelled; of those the share that were explicit
        refusals, overall and by kind (``…_harmful``: to harmful prompts, the rate the term raises; ``…_safe``: to the
        other labelled kinds, the rate it lowers; a kind absent from the batch is left out)."""
        labelled = [(v, y) for v, y in zip(self.last_verdicts, self.last_signs) if y]
        out = {"reward/label_coverage": len(labelled) / max(1, len(self.last_verdicts)),
               "reward/label_explicit_refusals": sum(v == "refusal" for v, _ in labelled) / max(1, len(labelled))}
        for name, sign in (("harmful", 1), ("safe", -1)):
            kind = [v for v, y in labelled if y == sign]
            if kind:
                out[f"reward/label_explicit_refusals_{name}"] = sum(v == "refusal" for v in kind) / len(kind)
        return out



def attach(roles, train: list[list[dict]], categories: list[str | None], scale: float) -> None:
    """Give PPO's roles the term (``roles.label_safety``): a plain reward model only — a composed one already has a
    safety term, and a toy reward has no reward model to add to."""
    scorer = roles.scorer
    if getattr(scorer, "reward_model", None) is None:
        raise ValueError("--label-safety needs a reward model (not a toy:WORD reward)")
    if getattr(scorer, "safety", None) is not None:
        raise ValueError(f"--label-safety: {roles.reward_name} is a composed reward with its own safety term; "
                         "use a plain reward model (e.g. --reward-model reward-v0)")
    roles.label_safety = LabelSafety.from_pool(train, categories, scale)
