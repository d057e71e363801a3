"""The exact KL of a policy to its reference, one definition for validation, evaluation and the gates.

For an answer ``y = y_1 … y_T`` sampled from the policy ``π`` after a prompt ``x``::

    KL_answer(x, y) = Σ_t Σ_v π(v | x, y_<t) · (log π(v | x, y_<t) − log π_ref(v | x, y_<t))

— the full next-token distributions at every answer position, summed over the answer. Each term is
a KL divergence between two distributions, so it is never negative (unlike the k1 estimate
``log π(y_t) − log π_ref(y_t)`` of one token). On answers *sampled* from ``π`` at temperature 1
its mean is an unbiased estimate of the sequence-level ``KL(π(·|x) ‖ π_ref(·|x))`` (the chain rule
of KL); on greedy answers it is not, which is why the callers sample their answers for it.

Memory: the ``[N, V]`` logits of a 49k vocabulary are the largest tensors here; :func:`kl_from_hidden`
runs the LM head on ``chunk_rows`` positions at a time, so the ``[B, T, V]`` logits never exist.

Pure torch, no model code: ``training.ppo`` (validation) and ``eval.runner`` (the report and the
pipeline's gate) both call it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# rows of [rows, vocab] logits per block: 128 x 49k float32 is 25 MB per tensor
KL_CHUNK_ROWS = 128


def kl_from_logits(policy_logits: Tensor, ref_logits: Tensor) -> Tensor:
    """Exact ``KL(softmax(policy_logits) ‖ softmax(ref_logits))`` over the last axis, float32, ``>= 0``.

    ``[..., V], [..., V] -> [...]``. Computed as ``Σ_v p_v (log p_v − log q_v)`` from log-softmaxes
    in float32; float rounding can make an exact zero come out as ``-1e-9``, so it is clamped at 0.
    """
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(f"policy logits {tuple(policy_logits.shape)} and reference logits "
                         f"{tuple(ref_logits.shape)} differ")
    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)


@torch.no_grad()
def kl_from_hidden(head: Callable[[Tensor], Tensor], policy_hidden: Tensor, ref_hidden: Tensor,
                   chunk_rows: int = KL_CHUNK_ROWS, ref_head: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Exact per-position KL from the final hidden states of the same positions, ``[N, H] x 2 -> [N]``.

    ``head`` is the LM head (policy and reference share it when only LoRA adapters differ; else pass
    ``ref_head``). It runs on ``chunk_rows`` rows at a time: the peak is two ``[chunk_rows, V]`` blocks.
    """
    if policy_hidden.shape != ref_hidden.shape or policy_hidden.dim() != 2:
        raise ValueError(f"hidden states must both be [N, H], got {tuple(policy_hidden.shape)} and "
                         f"{tuple(ref_hidden.shape)}")
    ref_head = ref_head or head
    n = policy_hidden.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=policy_hidden.device)
    step = max(1, chunk_rows)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        out[rows] = kl_from_logits(head(policy_hidden[rows]), ref_head(ref_hidden[rows]))
    return out


@torch.no_grad()
def kl_and_logprobs_from_hidden(head: Callable[[Tensor], Tensor], policy_hidden: Tensor, ref_hidden: Tensor,
                                labels: Tensor, chunk_rows: int = KL_CHUNK_ROWS) -> tuple[Tensor, Tensor, Tensor]:
    """``(kl, logp, logq)``, each ``[N]`` float32: the exact per-position KL of :func:`kl_from_hidden` and the
    log-probabilities of ``labels [N]`` (the tokens that were actually sampled) under the policy and the
    reference, from the same ``[chunk_rows, V]`` blocks."""
    if policy_hidden.shape != ref_hidden.shape or policy_hidden.dim() != 2 or labels.shape != policy_hidden.shape[:1]:
        raise ValueError(f"need hidden states [N, H] x 2 and labels [N], got {tuple(policy_hidden.shape)}, "
                         f"{tuple(ref_hidden.shape)} and {tuple(labels.shape)}")
    n = policy_hidden.shape[0]
    kl, logp, logq = (torch.empty(n, dtype=torch.float32, device=policy_hidden.device) for _ in range(3))
    step = max(1, chunk_rows)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        lp = torch.log_softmax(head(policy_hidden[rows]).float(), dim=-1)
        lq = torch.log_softmax(head(ref_hidden[rows]).float(), dim=-1)
        kl[rows] = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)
        lab = labels[rows].long().unsqueeze(-1)
        logp[rows], logq[rows] = lp.gather(-1, lab).squeeze(-1), lq.gather(-1, lab).squeeze(-1)
    return kl, logp, logq


def answer_kl(per_token: Tensor, mask: Tensor) -> Tensor:
    """Per-answer KL: the per-position KL summed over each row's answer positions, ``[B, T] -> [B]``."""
    if per_token.shape != mask.shape:
        raise ValueError(f"per-token KL {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ")
    return (per_token.float() * mask.to(torch.float32)).sum(-1)
