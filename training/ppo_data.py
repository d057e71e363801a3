"""PPO's data: the prompt pool (training prompts, and held-out validation prompts stratified by category;
evaluation prompts are never in it), the sampler that walks it epoch by epoch, and PPO-ptx's batches of
chosen answers. The second step of :mod:`training.ppo`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rlhf_demo.config import Settings
from rlhf_demo.generation import build_prompt_ids
from rlhf_demo.padding import pad_rows
from rlhf_demo.splits import check_not_reported

if TYPE_CHECKING:
    from training.ppo_config import PPOConfig


@dataclass
class ValPrompt:
    messages: list[dict]
    category: str | None = None

    @property
    def harmful(self) -> bool:
        return (self.category or "").lower() in HARMFUL_CATEGORIES


HARMFUL_CATEGORIES = {"harmful", "harmless", "unsafe"}  # prompt categories where refusing is right
SENSITIVE_CATEGORIES = {"sensitive"}  # safe requests in risky-sounding words: refusing them is over-refusal


def stratified_indices(categories: list[str], n: int) -> list[int]:
    """n indices taken round-robin over the categories (in order of first appearance): a small
    validation set still sees every kind of prompt."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        groups.setdefault(c, []).append(i)
    out, queues = [], [list(g) for g in groups.values()]
    while len(out) < min(n, len(categories)):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out)


def prompt_pool(cfg: PPOConfig, settings: Settings) -> tuple[list[list[dict]], list[ValPrompt]]:
    """(train, validation) conversations; training.data drops every evaluation prompt."""
    train, val, _ = labelled_pool(cfg, settings)
    return train, val


def labelled_pool(cfg: PPOConfig, settings: Settings) -> tuple[list[list[dict]], list[ValPrompt], list[str | None]]:
    """(train, validation, the training prompts' categories) — :func:`prompt_pool` plus each training prompt's kind
    from its data set (what ``--label-safety`` reads)."""
    from training.data import load_prompts, parse_source, public_val_prompts

    items = load_prompts(cfg.prompts, settings=settings)
    random.Random(cfg.seed).shuffle(items)
    if any(parse_source(p).kind == "mix" for p in cfg.prompts):
        # public sets: train on role-"train" prompts (and the other sources), validate on role-"val" ones only
        val = [ValPrompt(it.messages, it.category) for it in public_val_prompts(cfg.val_prompts)]
        kept = items
    else:
        val_idx = set(stratified_indices([it.category or "" for it in items], cfg.val_prompts))
        val = [ValPrompt(it.messages, it.category) for i, it in enumerate(items) if i in val_idx]
        kept = [it for i, it in enumerate(items) if i not in val_idx]
    train, categories = [it.messages for it in kept], [it.category for it in kept]
    # selection apart from the test: no validation prompt is a prompt of a reported suite (LeakError stops the run)
    check_not_reported([m["content"] for v in val for m in v.messages if m.get("role") == "user"],
                       "PPO validation prompts")
    if cfg.max_prompts:
        train, categories = train[:cfg.max_prompts], categories[:cfg.max_prompts]
    if not train:
        raise SystemExit("error: no training prompts left (check --prompts)")
    return train, val, categories


class PromptSampler:
    """Epochs over a shuffled pool; its state is saved with checkpoints so resume sees the same batches."""

    def __init__(self, pool: list[list[dict]], seed: int):
        self.pool, self.seed, self.epoch, self.pos = pool, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.pool)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[list[dict]]:
        out = []
        while len(out) < n:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.pool[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def parse_category_weights(spec: str) -> dict[str, int]:
    """'harmless,helpful,sensitive:2' -> {'harmless': 1, 'helpful': 1, 'sensitive': 2}."""
    out = {}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        name, _, weight = part.partition(":")
        try:
            out[name.strip()] = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"--ptx-categories {spec!r}: weight of {name!r} must be a whole number") from None
        if out[name.strip()] < 1:
            raise ValueError(f"--ptx-categories {spec!r}: weight of {name!r} must be at least 1")
    return out


class PtxData:
    """PPO-ptx: batches of the chosen answers of preference pairs (default: the seed pairs) for an SFT loss that
    anchors the policy."""

    def __init__(self, tokenizer, batch_size: int, seed: int, max_length: int = 256, categories: str = "all",
                 sources: list[str] | tuple[str, ...] = ("seed",)):
        from training.data import encode_conversation, load_pairs

        weights = parse_category_weights(categories)
        every = load_pairs(list(sources))
        pairs = [p for p in every if "all" in weights or p.category in weights]
        if not pairs:
            known = ", ".join(sorted({p.category for p in every if p.category})) or "none"
            raise ValueError(f"--ptx-categories {categories!r}: no pairs of --ptx-pairs {' '.join(sources)} in these "
                             f"categories (known: {known}, all)")
        self.rows = []
        for pair in pairs:
            full = encode_conversation(tokenizer, pair.conversation("chosen"))[:max_length]
            prompt_len = len(build_prompt_ids(tokenizer, pair.prompt))
            if prompt_len < len(full):
                # a category of weight k is sampled k times as often (its rows appear k times)
                self.rows += [(full, prompt_len)] * weights.get(pair.category, weights.get("all", 1))
        self.batch_size, self.seed, self.pad = batch_size, seed, tokenizer.pad_token_id

    def batch(self, step: int):
        rng = random.Random(self.seed * 31 + step)
        rows = rng.sample(self.rows, min(self.batch_size, len(self.rows)))
        ids, attn = pad_rows([r for r, _ in rows], self.pad, "right")
        mask = torch.zeros((len(rows), ids.shape[1] - 1), dtype=torch.long)
        for i, (r, p) in enumerate(rows):
            mask[i, p - 1:len(r) - 1] = 1  # logits at t predict the answer token t+1
        return ids, attn, mask
