"""Pure math of direct preference optimisation (``python -m training.dpo``).

Every function reads its inputs, never modifies them, and returns new float32 tensors (or floats).
Inputs are per-pair sequence log-probabilities of the chosen and rejected answers under the policy
(``pc``, ``pr``) and under the reference (``qc``, ``qr``), shape ``[B]``.

* DPO (Rafailov et al. 2023): ``h = (pc - qc) - (pr - qr)``, ``loss = -logσ(β·h)``.
* Conservative DPO / label smoothing (Mitchell 2023, "A note on DPO with noisy preferences"; TRL's
  ``label_smoothing``): the label is wrong with probability ε, ``loss = -(1-ε)·logσ(β·h) - ε·logσ(-β·h)``.
* IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"):
  ``loss = (h - 1/(2β))²``; as in the paper and TRL, ``h`` is computed from length-AVERAGED log-probs (the
  trainer passes averages for ``ipo``, sums for ``sigmoid``).
* RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's ``rpo_alpha``): DPO plus
  ``α ·`` the negative log-likelihood of the chosen answers, per token over the batch (:func:`chosen_nll`) —
  DPO alone can raise the margin by pushing the rejected answer down while the chosen one barely rises; the NLL
  term makes the policy *produce* the chosen answers (e.g. sample refusals of harmful requests).
* Implicit rewards: ``r_c = β·(pc - qc)``, ``r_r = β·(pr - qr)``; margin ``r_c - r_r``; accuracy the share of
  pairs with ``r_c > r_r`` (ties one half).
* :func:`token_kl`: the exact KL(π‖π_ref) of the next-token distributions at given positions,
  ``Σ_v p_v (log p_v - log q_v)`` — the held-out "KL to the reference" on teacher-forced answer contexts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("sigmoid", "ipo")


def _flat(x: Tensor) -> Tensor:
    return x.to(torch.float32).reshape(-1)


def dpo_logits(pc: Tensor, pr: Tensor, qc: Tensor, qr: Tensor) -> Tensor:
    """``h = (pc - qc) - (pr - qr)``: how much more the policy prefers chosen over rejected than the reference."""
    pc, pr, qc, qr = map(_flat, (pc, pr, qc, qr))
    if not pc.shape == pr.shape == qc.shape == qr.shape:
        raise ValueError(f"log-prob shapes differ: {[tuple(t.shape) for t in (pc, pr, qc, qr)]}")
    return (pc - qc) - (pr - qr)


def dpo_loss(pc: Tensor, pr: Tensor, qc: Tensor, qr: Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> Tensor:
    """Mean DPO (``sigmoid``, with optional label smoothing ε) or IPO loss over the pairs (a float32 scalar)."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = dpo_logits(pc, pr, qc, qr)
    if loss_type == "sigmoid":
        loss = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
        if label_smoothing:
            loss = loss - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label smoothing is defined for the sigmoid (DPO) loss only")
        loss = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return loss.mean()


def chosen_nll(chosen_logp_sum: Tensor, chosen_tokens: Tensor) -> Tensor:
    """Negative log-likelihood of the chosen answers per token over the whole batch (TRL's RPO ``nll_loss``):
    ``-Σ log p(chosen tokens) / Σ chosen tokens`` (a float32 scalar; 0 without tokens)."""
    lp, n = _flat(chosen_logp_sum), _flat(chosen_tokens)
    if lp.shape != n.shape:
        raise ValueError(f"shapes differ: {tuple(lp.shape)} vs {tuple(n.shape)}")
    return -lp.sum() / n.sum().clamp_min(1.0)


def implicit_rewards(pc: Tensor, pr: Tensor, qc: Tensor, qr: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """``(β·(pc - qc), β·(pr - qr))``: DPO's implicit rewards of the chosen and rejected answers, float32 ``[B]``."""
    pc, pr, qc, qr = map(_flat, (pc, pr, qc, qr))
    return beta * (pc - qc), beta * (pr - qr)


def reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Share of pairs whose chosen implicit reward is higher (ties count one half); NaN without pairs."""
    c, r = _flat(chosen_rewards), _flat(rejected_rewards)
    if c.numel() == 0:
        return float("nan")
    return ((c > r).float() + 0.5 * (c == r).float()).mean().item()


def token_kl(policy_logits: Tensor, ref_logits: Tensor) -> Tensor:
    """Exact KL(π‖π_ref) of each row's next-token distribution (nats, float32): ``[..., V] -> [...]``."""
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(f"logits shapes differ: {tuple(policy_logits.shape)} vs {tuple(ref_logits.shape)}")
    lp = torch.log_softmax(policy_logits.to(torch.float32), dim=-1)
    lq = torch.log_softmax(ref_logits.to(torch.float32), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)
