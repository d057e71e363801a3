"""Scoring pairs with the reward model outside its training step: encoding, the frozen-trunk cache of the
lower layers (hidden states computed once, right-padded), held-out scores, their summary and calibration.
Used by :mod:`training.reward_model` (training and ``--evaluate-only``) and its benches."""

from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict

import torch

from rlhf_demo.config import Settings
from training.data import EncodedPair, collate_pairs, encode_pair, load_pairs
from training.losses import pairwise_accuracy
from training.roles import RewardModel

def autocast(device: torch.device | str, enabled: bool):
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled)


def encode_all(tokenizer, pairs, max_length: int) -> list[EncodedPair]:
    return [encode_pair(tokenizer, p, max_length, index=i) for i, p in enumerate(pairs)]


def pad_cached(cache: list[torch.Tensor], idx: list[int], width: int, device) -> torch.Tensor:
    """Right-pad the cached hidden states of the pairs ``idx`` into ``[B, width, H]``."""
    hidden = cache[idx[0]].shape[-1]
    out = torch.zeros((len(idx), width, hidden), dtype=cache[idx[0]].dtype)
    for b, i in enumerate(idx):
        out[b, :cache[i].shape[0]] = cache[i]
    return out.to(device)


@torch.no_grad()
def build_frozen_cache(rm: RewardModel, encoded: list[EncodedPair], pad_id: int, stop_layer: int,
                       batch_size: int = 16, bf16: bool = False, progress: bool = False) -> list[torch.Tensor]:
    """The output of the frozen layers ``[0, stop_layer)`` for every pair's packed row (float32, on CPU)."""
    from training.roles import frozen_hidden

    out: list[torch.Tensor] = [None] * len(encoded)  # type: ignore[list-item]
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)
    chunks = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"frozen layers 0-{stop_layer - 1} (once)", unit="batch", dynamic_ncols=True)
    was_training = rm.model.training
    rm.eval()
    try:
        for chunk in chunks:
            batch = collate_pairs([encoded[i] for i in chunk], pad_id).to(rm.device)
            with autocast(rm.device, bf16):
                h = frozen_hidden(rm.model, batch.input_ids, batch.attention_mask, batch.position_ids, stop_layer)
            for b, i in enumerate(chunk):
                out[i] = h[b, :encoded[i].length].cpu().clone()
    finally:
        rm.train(was_training)
    return out


@torch.no_grad()
def score_encoded(rm: RewardModel, encoded: list[EncodedPair], pad_id: int, batch_size: int = 16,
                  bf16: bool = False, cache: list[torch.Tensor] | None = None, start_layer: int = 0
                  ) -> tuple[list[float], list[float]]:
    """(chosen, rejected) rewards of encoded pairs, in their order; batches sorted by length."""
    was_training = rm.model.training
    rm.eval()
    chosen = [0.0] * len(encoded)
    rejected = [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate_pairs([encoded[i] for i in chunk], pad_id).to(rm.device)
            embeds = pad_cached(cache, chunk, batch.input_ids.shape[1], rm.device) if cache is not None else None
            with autocast(rm.device, bf16):
                c, r, _ = rm.pair_rewards(batch, inputs_embeds=embeds, start_layer=start_layer if embeds is not None else 0)
            for b, i in enumerate(chunk):
                chosen[i], rejected[i] = float(c[b]), float(r[b])
    finally:
        rm.train(was_training)
    return chosen, rejected


def check_frozen_split(rm: RewardModel, encoded: list[EncodedPair], pad_id: int, stop_layer: int, bf16: bool) -> float:
    """Largest difference between rewards computed in one pass and via the frozen-layer split (2 pairs)."""
    sample = encoded[:2]
    cache = build_frozen_cache(rm, sample, pad_id, stop_layer, bf16=bf16)
    full = score_encoded(rm, sample, pad_id, bf16=bf16)
    split = score_encoded(rm, sample, pad_id, bf16=bf16, cache=cache, start_layer=stop_layer)
    return max(abs(a - b) for x, y in zip(full, split) for a, b in zip(x, y))


def summarize(encoded: list[EncodedPair], chosen: list[float], rejected: list[float]) -> dict:
    """Accuracy and mean margin overall, per source and per source/category."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(encoded):
        groups["all"].append(i)
        groups[e.source].append(i)
        if e.category:
            groups[f"{e.source}/{e.category}"].append(i)
    out = {}
    for name, idx in groups.items():
        c = torch.tensor([chosen[i] for i in idx])
        r = torch.tensor([rejected[i] for i in idx])
        out[name] = {"accuracy": round(pairwise_accuracy(c, r), 4), "mean_margin": round(float((c - r).mean()), 4),
                     "n": len(idx)}
    return out


def calibration(chosen: list[float], rejected: list[float], buckets: int = 5) -> list[dict]:
    """Accuracy by |margin| quantile bucket, with the Bradley–Terry predicted accuracy mean(sigmoid(|m|))."""
    m = torch.tensor(chosen) - torch.tensor(rejected)
    if m.numel() == 0:
        return []
    order = torch.argsort(m.abs())
    rows = []
    for k in range(buckets):
        sel = order[k * len(order) // buckets:(k + 1) * len(order) // buckets]
        if sel.numel() == 0:
            continue
        a = m[sel].abs()
        rows.append({"lo": float(a.min()), "hi": float(a.max()), "n": int(sel.numel()),
                     "accuracy": float(((m[sel] > 0).float() + 0.5 * (m[sel] == 0).float()).mean()),
                     "predicted": float(torch.sigmoid(a).mean())})
    return rows


def evaluate_only(config, settings: Settings, out=None) -> dict:
    """Score every pair of ``--data`` with ``--reward-model``; print the report; return the metrics."""
    from training.roles import load_reward_scorer

    out = out or sys.stdout
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if config.bf16 and settings.dtype == "auto":
        settings = dataclasses.replace(settings, dtype="bfloat16")
    scorer = load_reward_scorer(settings, config.reward_model, allow_judge=True)  # scoring a judge is fine; training it is not
    pairs = load_pairs(config.data, settings, skip_invalid=config.skip_invalid)
    max_length = min(config.max_length, scorer.max_length) if config.max_length else scorer.max_length
    enc = encode_all(scorer.tokenizer, pairs, max_length)
    pad_id = scorer.tokenizer.pad_token_id if scorer.tokenizer.pad_token_id is not None else 0
    c, r = score_encoded(scorer.reward_model, enc, pad_id, config.eval_batch_size, config.bf16)
    metrics = summarize(enc, c, r)
    calib = calibration(c, r)
    print(f"reward model: {scorer.name} (base {settings.base_model})", file=out)
    print(f"data: {', '.join(config.data)}: {len(pairs)} pairs", file=out)
    for name, m in sorted(metrics.items(), key=lambda kv: (kv[0] != "all", kv[0])):
        print(f"  {name:<28} accuracy {m['accuracy']:.4f}  mean margin {m['mean_margin']:+.4f}  n={m['n']}", file=out)
    print("calibration (accuracy by |margin| bucket; BT-predicted = mean sigmoid(|margin|)):", file=out)
    for row in calib:
        print(f"  |margin| {row['lo']:7.3f} .. {row['hi']:7.3f}  n={row['n']:<5} accuracy {row['accuracy']:.3f}  "
              f"predicted {row['predicted']:.3f}", file=out)
    overall = metrics["all"]
    print(f"accuracy={overall['accuracy']:.4f} n={overall['n']}", file=out)
    return {"metrics": metrics, "calibration": calib}
