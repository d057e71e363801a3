"""Token log-probabilities and entropies from logits or from final hidden states, in float32, without ever
materialising more of a ``[B, T, V]`` tensor than a block of rows at a time; part of :mod:`training.losses`'
API (which re-exports every name here) and as pure as the rest of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

_FULL_PRECISION = (torch.float32, torch.float64)


def _f32(x: Tensor) -> Tensor:
    """``x`` as float32 (a new tensor unless it already is float32; never modified in place)."""
    return x.to(torch.float32)


def _valid(mask: Tensor) -> Tensor:
    """A boolean mask: True where ``mask`` is nonzero."""
    return mask if mask.dtype == torch.bool else mask != 0


# --------------------------------------------------------------------------------------------------
# Token log-probabilities and entropy
# --------------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label under the softmax of its logits (float32).

    ``logp[b, t] = logits[b, t, labels[b, t]] - logsumexp_v logits[b, t, v]``
    (= ``log_softmax(logits).gather(labels)``, without materialising the full log-softmax).

    Shapes: ``logits [..., V]``, ``labels [...]`` (e.g. ``[B, T, V]`` and ``[B, T]``); the labels
    must already be aligned with the logits (``labels[t]`` is the token that ``logits[t]`` predicts —
    shift before calling). Labels must be valid ids (replace ignore-index entries such as -100 by any
    id and mask the result). Half-precision logits are converted to float32 one leading row at a time
    (as TRL's ``selective_log_softmax``), so the float32 copy of a ``[B, T, V]`` tensor never exists
    at once.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    labels = labels.long()
    if logits.dtype in _FULL_PRECISION or logits.dim() < 3:
        z = _f32(logits)
        return z.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
    rows = []
    for row_logits, row_labels in zip(logits, labels):
        z = _f32(row_logits)
        rows.append(z.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax of each row of logits (nats, float32): ``[..., V] -> [...]``.

    ``H = -Σ_v p_v log p_v = logsumexp(z) - Σ_v p_v z_v`` with ``p = softmax(z)``.
    Used as a PPO monitor (a collapsing policy's entropy falls toward 0). Half-precision logits are
    converted one leading row at a time.
    """

    def _entropy(z: Tensor) -> Tensor:
        z = _f32(z)
        p = torch.softmax(z, dim=-1)
        return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)

    if logits.dtype in _FULL_PRECISION or logits.dim() < 3:
        return _entropy(logits)
    return torch.stack([_entropy(row) for row in logits])


def _row_blocks(n: int, vocab: int, device: torch.device):
    """Row ranges of ``[n, vocab]`` blocks whose float32 copy (~1 MB) stays in a CPU core's L2 cache.

    Why: a log-softmax over a ``[192, 49k]`` block makes ~5 passes (cast, max, exp, sum, gather);
    done on the whole block each pass streams 38 MB through memory, done a few rows at a time every
    pass after the first hits the cache: 4x faster on one core, with the same per-row arithmetic
    (every reduction is along a row), hence the same bits. On a GPU, blocks of 256 MB (few kernel
    launches).
    """
    budget = (1 << 20) if device.type == "cpu" else (1 << 28)
    step = max(1, budget // (4 * max(vocab, 1)))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _logp_entropy_blocked(logits: Tensor, labels: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Float32 ``(logp, logsumexp, entropy or None)`` of each row of ``logits [N, V]`` at ``labels [N]``
    (no autograd), a cache-sized block of rows at a time (:func:`_row_blocks`)."""
    n = logits.shape[0]
    logp = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    ent = torch.empty(n, dtype=torch.float32, device=logits.device) if with_entropy else None
    for rows in _row_blocks(n, logits.shape[-1], logits.device):
        z = _f32(logits[rows])
        lse[rows] = torch.logsumexp(z, dim=-1)
        logp[rows] = z.gather(-1, labels[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
        if with_entropy:
            ent[rows] = lse[rows] - (torch.softmax(z, dim=-1) * z).sum(-1)
    return logp, lse, ent


class _SelectiveLogSoftmax(torch.autograd.Function):
    """``logits [N, V], labels [N] -> (log_softmax(logits)[labels], entropy or None)`` in float32.

    Forward: the arithmetic of :func:`logprobs_from_logits` / :func:`entropy_from_logits`, a cache-sized
    block of rows at a time (:func:`_row_blocks`). Backward (log-probs only): the gradient
    ``g·(onehot - softmax)`` is built block by block, in place, from the saved logits (kept in their
    own dtype, half the size of a float32 copy) and logsumexp — instead of autograd's chain of
    logsumexp-backward, a zero-filled gather-backward, their sum and a cast, each a full pass over the
    ``[N, V]`` block. Same values as autograd's (the same operations per element).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, with_entropy: bool = False):
        logp, lse, ent = _logp_entropy_blocked(logits, labels, with_entropy)
        ctx.save_for_backward(logits, labels, lse)
        ctx.mark_non_differentiable(*([ent] if with_entropy else []))
        return logp, ent

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_entropy=None):
        logits, labels, lse = ctx.saved_tensors
        out = torch.empty_like(logits)
        g = grad.to(torch.float32).unsqueeze(-1)
        for rows in _row_blocks(logits.shape[0], logits.shape[-1], logits.device):
            p = logits[rows].to(torch.float32, copy=True)
            p.sub_(lse[rows].unsqueeze(-1)).exp_().mul_(-g[rows])          # -g · softmax
            p.scatter_add_(-1, labels[rows].unsqueeze(-1), g[rows])        # + g at each label
            out[rows] = p
        return out, None, None


def logprobs_from_hidden(
    head,
    hidden: Tensor,
    labels: Tensor,
    chunk_size: int = 0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of ``labels`` (and entropies) under ``softmax(head(hidden))``, ``chunk_size`` rows at a time.

    ``hidden [N, H]`` are the final hidden states of the N positions that matter (e.g. only those that
    predict answer tokens), ``labels [N]`` the tokens they predict, ``head`` the LM head (any callable
    ``[n, H] -> [n, V]``). Returns float32 ``(logp [N], entropy [N] or None)`` with the same per-row
    arithmetic as :func:`logprobs_from_logits` and :func:`entropy_from_logits` (one shared logsumexp).

    Why: the ``[N, V]`` logits of a 49k-token vocabulary are the largest tensors of a PPO step. Running
    the head on a chunk of rows and reducing it to two numbers per row at once means the full
    ``[B, T, V]`` logits (and their float32 copy) never exist; the peak is one ``[chunk, V]`` block.
    ``chunk_size=0`` takes all rows at once (under autograd, chunking saves nothing: every chunk's
    logits are kept for the backward pass anyway).
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [N, H] and labels {tuple(labels.shape)} [N]")
    n = hidden.shape[0]
    step = n if chunk_size <= 0 else chunk_size
    logps, entropies = [], []
    for start in range(0, n, max(step, 1)):
        logits, lab = head(hidden[start:start + step]), labels[start:start + step].long()
        if with_entropy and torch.is_grad_enabled() and logits.requires_grad:  # an entropy bonus: plain autograd
            z = _f32(logits)
            lse = torch.logsumexp(z, dim=-1)
            logps.append(z.gather(-1, lab.unsqueeze(-1)).squeeze(-1) - lse)
            entropies.append(lse - (torch.softmax(z, dim=-1) * z).sum(-1))
            del z
        else:  # log-probs with the lean backward; the entropy (a monitor here) without gradient
            logp, ent = _SelectiveLogSoftmax.apply(logits, lab, with_entropy)
            logps.append(logp)
            entropies.append(ent)
        del logits
    if not logps:  # no rows: empty results
        empty = hidden.new_zeros((0,), dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    logp = torch.cat(logps) if len(logps) > 1 else logps[0]
    entropy = (torch.cat(entropies) if len(entropies) > 1 else entropies[0]) if with_entropy else None
    return logp, entropy


def scatter_masked(values: Tensor, mask: Tensor) -> Tensor:
    """Put ``values [N]`` at the N valid entries of ``mask [B, T]`` (row-major order, as ``x[mask]`` reads
    them); 0 elsewhere. Differentiable in ``values``. The inverse of ``x[mask]``."""
    valid = _valid(mask)
    if int(valid.sum()) != values.numel():
        raise ValueError(f"{values.numel()} values for {int(valid.sum())} valid entries")
    return torch.zeros(valid.shape, dtype=values.dtype, device=values.device).masked_scatter(valid, values)
