"""Log-probabilities of the two answers of packed preference pairs, and DPO's held-out metrics and curves
(:mod:`training.dpo`'s measuring half; the loss math is :mod:`training.dpo_losses`).

A pair is ONE packed row ``[prefix | chosen | rejected]`` (:func:`training.batching.collate_pairs`: the rejected
answer does not see the chosen one and its positions restart after the prefix), so one forward pass gives both
answers' log-probs exactly as two separate sequences would; the LM head runs only at the positions that predict
an answer token (:func:`answer_targets`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from rlhf_demo.adapters import adapters_disabled, forward_hidden, frozen_hidden
from rlhf_demo.model_patches import causal_lm
from training.batching import EncodedPair, collate_pairs
from training.dpo_losses import dpo_loss, implicit_rewards, reward_accuracy, token_kl
from training.logprobs import logprobs_from_hidden
from training.reward_eval import autocast, pad_cached


# ---------------------------------------------------------------------------------------------
# log-probabilities of the two answers of packed pairs
# ---------------------------------------------------------------------------------------------
def answer_targets(items: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each answer token is predicted in the packed rows of :func:`training.batching.collate_pairs`.

    Returns ``(index [B, L], labels [B, L], segment [B, L])``: position whose logits predict the token,
    the token, and 1 (chosen) / 2 (rejected) / 0 (padding). Chosen token ``j`` is predicted at ``P-1+j``;
    rejected token 0 at ``P-1`` (the prefix's last token: the rejected answer follows the prefix too) and
    token ``j >= 1`` at ``P+C+j-1``. With no prefix (``P = 0``) each answer's first token is not scored.
    """
    rows = []
    for it in items:
        P, C, R = len(it.prefix), len(it.chosen), len(it.rejected)
        pos, lab, seg = [], [], []
        for j in range(C):
            if P - 1 + j >= 0:
                pos.append(P - 1 + j), lab.append(it.chosen[j]), seg.append(1)
        for j in range(R):
            p = (P - 1) if j == 0 else P + C + j - 1
            if p >= 0:
                pos.append(p), lab.append(it.rejected[j]), seg.append(2)
        rows.append((pos, lab, seg))
    width = max(1, max(len(r[0]) for r in rows))
    index = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.zeros((len(items), width), dtype=torch.long)
    segment = torch.zeros((len(items), width), dtype=torch.long)
    for b, (pos, lab, seg) in enumerate(rows):
        index[b, :len(pos)] = torch.tensor(pos, dtype=torch.long)
        labels[b, :len(lab)] = torch.tensor(lab, dtype=torch.long)
        segment[b, :len(seg)] = torch.tensor(seg, dtype=torch.long)
    return index, labels, segment


def _picked_hidden(model, items, pad_id, device, cache=None, start_layer=0):
    batch = collate_pairs(items, pad_id).to(device)
    index, labels, segment = (t.to(device) for t in answer_targets(items))
    embeds = None
    if cache is not None:
        embeds = pad_cached(cache, [it.index for it in items], batch.input_ids.shape[1], device)
    hidden = forward_hidden(model, None if embeds is not None else batch.input_ids, batch.attention_mask,
                            batch.position_ids, embeds, start_layer if embeds is not None else 0)
    valid = segment > 0
    picked = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))[valid]
    return picked, labels[valid], segment[valid], valid


def answer_logps(model, items: list[EncodedPair], pad_id: int, device, cache=None, start_layer: int = 0
                 ) -> torch.Tensor:
    """``[B, 4]``: (sum log p chosen, sum log p rejected, chosen tokens, rejected tokens) under the active adapter."""
    picked, labels, segment, valid = _picked_hidden(model, items, pad_id, device, cache, start_layer)
    logp, _ = logprobs_from_hidden(causal_lm(model).get_output_embeddings(), picked, labels)
    rows = torch.arange(valid.shape[0], device=device)[:, None].expand_as(valid)[valid]
    out = torch.zeros((len(items), 4), dtype=torch.float32, device=device)
    for col, s in ((0, 1), (1, 2)):
        m = segment == s
        out[:, col] = out[:, col].index_add(0, rows[m], logp[m])
        out[:, col + 2] = out[:, col + 2].index_add(0, rows[m], torch.ones_like(logp[m]))
    return out


def pair_inputs(lp: torch.Tensor, loss_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-probs fed to the loss: sums for DPO, per-token means for IPO."""
    if loss_type == "ipo":
        return lp[:, 0] / lp[:, 2].clamp_min(1), lp[:, 1] / lp[:, 3].clamp_min(1)
    return lp[:, 0], lp[:, 1]


@torch.no_grad()
def frozen_cache(model, encoded: list[EncodedPair], pad_id: int, stop_layer: int, batch_size: int, bf16: bool,
                 device) -> list[torch.Tensor]:
    """Output of the frozen layers ``[0, stop_layer)`` of every packed pair (the same with or without adapters)."""
    out: list[torch.Tensor] = [None] * len(encoded)  # type: ignore[list-item]
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        batch = collate_pairs([encoded[i] for i in chunk], pad_id).to(device)
        with autocast(device, bf16):
            h = frozen_hidden(model, batch.input_ids, batch.attention_mask, batch.position_ids, stop_layer)
        for b, i in enumerate(chunk):
            out[i] = h[b, :encoded[i].length].cpu().clone()
    return out


@torch.no_grad()
def all_logps(model, encoded, pad_id, device, batch_size, bf16, cache=None, start_layer=0,
              reference: bool = False) -> torch.Tensor:
    """:func:`answer_logps` of every pair, in order (``reference``: with the adapter disabled)."""
    out = torch.zeros((len(encoded), 4))
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)
    with adapters_disabled(model) if reference else contextlib.nullcontext():
        for k in range(0, len(order), batch_size):
            chunk = order[k:k + batch_size]
            with autocast(device, bf16):
                out[chunk] = answer_logps(model, [encoded[i] for i in chunk], pad_id, device, cache, start_layer).cpu()
    return out


def eval_mode(model) -> None:
    """``model.eval()`` (no dropout), except bitsandbytes' 4-bit layers: in eval mode on CPU they repack their
    weights for an inference kernel (which fails for some shapes); their forward is the same in both modes."""
    model.eval()
    for m in model.modules():
        if type(m).__module__.startswith("bitsandbytes"):
            m.train()


@torch.no_grad()
def evaluate(model, encoded, config, pad_id, device, cache=None, start_layer=0) -> dict:
    """Held-out loss, implicit-reward accuracy and margin (overall and per source), and the exact token
    KL(π‖π_ref) at the answer positions; ONE policy and one reference pass per batch, both read with the same
    arithmetic (so at step 0, where the policy is the reference, every margin is exactly 0)."""
    was_training = model.training
    eval_mode(model)
    head = causal_lm(model).get_output_embeddings()
    pol = torch.zeros((len(encoded), 4))
    ref = torch.zeros((len(encoded), 4))
    kl_sum, n_tok = 0.0, 0
    try:
        order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)  # the batches all_logps makes
        for k in range(0, len(order), config.eval_batch_size):
            chunk = order[k:k + config.eval_batch_size]
            items = [encoded[i] for i in chunk]
            part = torch.zeros((2, len(chunk), 4))
            with autocast(device, config.bf16):
                h_pol, labels, segment, valid = _picked_hidden(model, items, pad_id, device, cache, start_layer)
                with adapters_disabled(model):
                    h_ref = _picked_hidden(model, items, pad_id, device, cache, start_layer)[0]
                rows = torch.arange(valid.shape[0], device=h_pol.device)[:, None].expand_as(valid)[valid]
                for s in range(0, h_pol.shape[0], 256):
                    zp, zq = head(h_pol[s:s + 256]), head(h_ref[s:s + 256])
                    kl_sum += float(token_kl(zp, zq).sum())
                    for which, z in enumerate((zp, zq)):
                        lp = torch.log_softmax(z.float(), -1).gather(-1, labels[s:s + 256, None]).squeeze(-1)
                        for col, seg in ((0, 1), (1, 2)):
                            m = segment[s:s + 256] == seg
                            r = rows[s:s + 256][m].cpu()
                            part[which, :, col].index_add_(0, r, lp[m].cpu())
                            part[which, :, col + 2].index_add_(0, r, torch.ones(len(r)))
            pol[chunk], ref[chunk] = part[0], part[1]
            n_tok += h_pol.shape[0]
    finally:
        model.train(was_training)
    pc, pr = pair_inputs(pol, config.loss_type)
    qc, qr = pair_inputs(ref, config.loss_type)
    loss = dpo_loss(pc, pr, qc, qr, config.beta, config.loss_type, config.label_smoothing)
    rc, rr = implicit_rewards(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], config.beta)
    out = {"eval/loss": round(float(loss), 6), "eval/accuracy": round(reward_accuracy(rc, rr), 6),
           "eval/margin": round(float((rc - rr).mean()), 6), "eval/chosen_reward": round(float(rc.mean()), 6),
           "eval/rejected_reward": round(float(rr.mean()), 6), "eval/kl_token": round(kl_sum / max(1, n_tok), 6),
           "eval/kl_answer": round(kl_sum / max(1, 2 * len(encoded)), 6), "eval/pairs": len(encoded)}
    sources = sorted({e.source for e in encoded})
    if len(sources) > 1:
        for src in sources:
            idx = torch.tensor([i for i, e in enumerate(encoded) if e.source == src])
            out[f"eval/{src}/accuracy"] = round(reward_accuracy(rc[idx], rr[idx]), 6)
            out[f"eval/{src}/pairs"] = len(idx)
    return out


PLOTTED = ["train/loss", "train/accuracy", "train/margin", "eval/loss", "eval/accuracy", "eval/margin",
           "eval/kl_token", "train/grad_norm"]


def plot_curves(rows: list[dict], out: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, key in zip(axes.flat, PLOTTED):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle("DPO training curves")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
