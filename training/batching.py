"""Tokenising and batching preference pairs for the reward model.

Pairs are tokenised once (:func:`encode_pair`) into a shared prefix plus the two answers, and a batch packs
each pair into ONE row — ``[prefix | chosen | rejected]`` — with an attention mask that hides the chosen
answer from the rejected one (:func:`collate_pairs`): the prompt is computed once per pair instead of
twice, and length-grouped batches (:func:`batch_order`) leave little padding. The sources of the pairs
are :mod:`training.data`'s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlhf_demo.generation import encode_conversation  # noqa: F401 - importable from here as before
from rlhf_demo.padding import pad_rows
from rlhf_demo.records import PreferencePair

if TYPE_CHECKING:
    import torch

@dataclass
class EncodedPair:
    """Token ids of a pair: the shared prefix (templated prompt) and the two answers' own tokens."""

    prefix: list[int]
    chosen: list[int]
    rejected: list[int]
    index: int = 0  # position in the pair list it came from
    margin: float | None = None
    source: str = ""
    category: str | None = None
    truncated: bool = False

    @property
    def length(self) -> int:  # the packed row length
        return len(self.prefix) + len(self.chosen) + len(self.rejected)


def encode_pair(tokenizer, pair: PreferencePair, max_length: int, index: int = 0) -> EncodedPair:
    """Tokenise both conversations; split them at their longest common prefix.

    Each conversation (prefix + its answer) is kept within ``max_length`` tokens: the oldest
    prompt tokens go first; when an answer would leave less than a quarter of ``max_length`` for
    the prompt, the answer is cut at its end instead.
    """
    c = encode_conversation(tokenizer, pair.conversation("chosen"))
    r = encode_conversation(tokenizer, pair.conversation("rejected"))
    n = 0
    for a, b in zip(c, r):
        if a != b:
            break
        n += 1
    n = min(n, len(c) - 1, len(r) - 1)  # each answer keeps at least one token of its own
    prefix, ca, ra = c[:n], c[n:], r[n:]
    truncated = False
    longest = max(len(ca), len(ra))
    if len(prefix) + longest > max_length:
        truncated = True
        keep = max(max_length - longest, min(len(prefix), max_length // 4))  # some prompt always stays
        prefix = prefix[len(prefix) - keep:] if keep > 0 else []
        room = max_length - len(prefix)
        ca, ra = ca[:room], ra[:room]
    return EncodedPair(prefix, ca, ra, index, pair.margin, pair.source, pair.category, truncated)


def batch_order(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                mega: int = 32) -> list[list[int]]:
    """The batches of one epoch (lists of indices), deterministic in (seed, epoch).

    Length grouping (as TRL/transformers' ``group_by_length``): shuffle, cut into mega-batches of
    ``mega`` batches, sort each mega-batch by length, cut into batches, shuffle the batches. Rows of
    a batch then have similar lengths, so padding is small, while the order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    batches = []
    step = batch_size * mega
    for start in range(0, len(idx), step):
        chunk = sorted(idx[start:start + step], key=lambda i: -lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


@dataclass
class PairBatch:
    """A packed batch: one row per pair, ``[prefix | chosen | rejected | pad]``.

    ``attention_mask`` is ``[B, 1, T, T]`` bool (True = may attend): causal, and the rejected
    answer does not see the chosen one. ``position_ids`` restart the rejected answer right after
    the prefix, so each answer is computed exactly as in its own sequence. Rewards are read at
    ``chosen_index`` / ``rejected_index`` (the last token of each conversation).
    """

    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"
    chosen_index: "torch.Tensor"
    rejected_index: "torch.Tensor"
    margin: "torch.Tensor | None"
    lm_index: "torch.Tensor"  # [B, C] positions whose next token is a chosen-answer token
    lm_labels: "torch.Tensor"  # [B, C] those tokens (-100 = padding)
    n_tokens: int = 0
    sources: list[str] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def to(self, device) -> "PairBatch":
        for name in ("input_ids", "attention_mask", "position_ids", "chosen_index", "rejected_index", "margin",
                     "lm_index", "lm_labels"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate_pairs(items: list[EncodedPair], pad_id: int, pad_to_multiple_of: int | None = None) -> PairBatch:
    import torch

    width = max(it.length for it in items)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    B = len(items)
    ids, _ = pad_rows([it.prefix + it.chosen + it.rejected for it in items], pad_id, "right", width=width)
    pos = torch.zeros((B, width), dtype=torch.long)
    seg = torch.full((B, width), -1, dtype=torch.long)  # 0 prefix, 1 chosen, 2 rejected, -1 pad
    cidx = torch.zeros(B, dtype=torch.long)
    ridx = torch.zeros(B, dtype=torch.long)
    cmax = max(len(it.chosen) for it in items)
    lm_index = torch.zeros((B, cmax), dtype=torch.long)
    lm_labels = torch.full((B, cmax), -100, dtype=torch.long)
    for b, it in enumerate(items):
        P, C, R = len(it.prefix), len(it.chosen), len(it.rejected)
        pos[b, :P + C] = torch.arange(P + C)
        pos[b, P + C:P + C + R] = torch.arange(P, P + R)
        seg[b, :P] = 0
        seg[b, P:P + C] = 1
        seg[b, P + C:P + C + R] = 2
        cidx[b] = P + C - 1
        ridx[b] = P + C + R - 1
        # logits at position t predict token t+1: the chosen tokens are predicted from P-1 … P+C-2
        start = max(P - 1, 0)
        first = 0 if P > 0 else 1
        n = C - first
        lm_index[b, :n] = torch.arange(start, start + n)
        lm_labels[b, :n] = torch.tensor(it.chosen[first:], dtype=torch.long)
    t = torch.arange(width)
    causal = t[None, :, None] >= t[None, None, :]  # [1, q, k]
    sq, sk = seg[:, :, None], seg[:, None, :]
    mask = causal & (sq >= 0) & (sk >= 0) & ((sk == 0) | (sk == sq))
    mask = mask | torch.eye(width, dtype=torch.bool)[None]  # padding rows attend to themselves (no NaN)
    margin = None
    if any(it.margin is not None for it in items):
        margin = torch.tensor([it.margin or 0.0 for it in items], dtype=torch.float32)
    return PairBatch(ids, mask[:, None], pos, cidx, ridx, margin, lm_index, lm_labels,
                     n_tokens=sum(it.length for it in items), sources=[it.source for it in items],
                     categories=[it.category for it in items], indices=[it.index for it in items])
