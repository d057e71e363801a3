"""Pure math of the reward model and of PPO-max.

Every function here is pure: it reads its inputs, never modifies them in place, keeps no global
state, and returns new tensors. Inputs may be float32 or bfloat16; the arithmetic is done in
float32 (outputs are float32) because the quantities involved — log-ratios, squared errors,
variances — lose too much in bfloat16's 8-bit mantissa.

Masks: any dtype (bool, int, float); a nonzero entry marks a valid (response) token. A row of a
``[B, T]`` mask is normally ones followed by zeros (left-aligned response, right padding). Masked
positions may hold garbage (even NaN/inf): they never reach a result.

References
----------
* Reward model: Bradley–Terry pairwise loss with margin (Llama 2), label smoothing and reward
  centering — "Secrets of RLHF in Large Language Models Part II: Reward Modeling" (Wang et al. 2024)
  and TRL's ``RewardTrainer`` (``center_rewards_coefficient``).
* PPO-max — "Secrets of RLHF in Large Language Models Part I: PPO" (Zheng et al. 2023): token-level
  KL penalty, reward normalization and clipping with running moments, GAE, advantage whitening,
  clipped surrogate, value-function clipping, optional pretraining (ptx) loss.
* KL estimators k1/k2/k3 — J. Schulman, "Approximating KL Divergence" (2020).
* GAE — Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation". Clipped surrogate — Schulman et al. 2017, "Proximal Policy Optimization".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_demo.padding import last_token_index  # noqa: F401 - part of this API (the core's)
from training.logprobs import (_f32, _valid, entropy_from_logits,  # noqa: F401 - part of this API
                               logprobs_from_hidden, logprobs_from_logits, scatter_masked)

__all__ = ["bradley_terry_loss", "reward_centering_loss", "pairwise_accuracy", "logprobs_from_logits",
           "entropy_from_logits", "logprobs_from_hidden", "scatter_masked", "masked_mean", "masked_sum",
           "masked_var", "masked_whiten", "KL_KINDS", "kl_estimate", "last_token_index",
           "kl_penalized_rewards", "RunningMoments", "normalize_and_clip_rewards", "gae",
           "clipped_surrogate_loss", "clipped_value_loss", "explained_variance", "ptx_loss",
           "repeated_ngram_fraction"]

KL_KINDS = ("k1", "k2", "k3")


# --------------------------------------------------------------------------------------------------
# Reward model (MOSS-RLHF Part II / TRL RewardTrainer)
# --------------------------------------------------------------------------------------------------


def bradley_terry_loss(
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Bradley–Terry pairwise ranking loss, with optional margin and label smoothing.

    ``d = r_chosen - r_rejected - m``;
    ``loss = mean( -(1-ε)·logσ(d) - ε·logσ(-d) )``  (a scalar, float32).

    * Bradley–Terry: P(chosen ≻ rejected) = σ(r_c - r_r) (Ouyang et al. 2022; TRL RewardTrainer).
    * Margin ``m`` (Llama 2; MOSS-RLHF Part II): the chosen reward must beat the rejected one by at
      least ``m`` before the loss saturates — larger for pairs the raters found clearly different.
    * Label smoothing ``ε`` (MOSS-RLHF Part II, "conservative" BT for noisy preferences): the
      label is right with probability ``1-ε``, so the loss stops pushing an already large gap.

    ``chosen``, ``rejected`` (and ``margin``, if given) hold one reward per pair, shape ``[B]`` or
    ``[B, 1]``; they are flattened, so they must have the same number of elements (a margin may also
    be a single number).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    c, r = _f32(chosen).reshape(-1), _f32(rejected).reshape(-1)
    if c.shape != r.shape:
        raise ValueError(f"chosen has {c.numel()} rewards but rejected has {r.numel()}")
    d = c - r
    if margin is not None:
        m = _f32(torch.as_tensor(margin, device=c.device)).reshape(-1)
        if m.numel() not in (1, c.numel()):
            raise ValueError(f"margin has {m.numel()} values for {c.numel()} pairs")
        d = d - m
    loss = -F.logsigmoid(d)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-d)
    return loss.mean()


def reward_centering_loss(chosen: Tensor, rejected: Tensor, coef: float) -> Tensor:
    """Reward centering: ``coef · mean((r_chosen + r_rejected)²)`` (a scalar, float32).

    The Bradley–Terry loss only sees reward differences, so the overall offset of the reward model
    drifts freely. This auxiliary term (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``,
    suggested 0.01) pulls each pair's reward sum, and so the mean reward, toward zero.
    """
    c, r = _f32(chosen).reshape(-1), _f32(rejected).reshape(-1)
    if c.shape != r.shape:
        raise ValueError(f"chosen has {c.numel()} rewards but rejected has {r.numel()}")
    return coef * ((c + r) ** 2).mean()


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> float:
    """Share of pairs ranked right: ``mean( [r_c > r_r] + 0.5·[r_c == r_r] )``.

    Ties count one half (a coin flip would break them). NaN when there are no pairs.
    """
    c, r = _f32(chosen).reshape(-1), _f32(rejected).reshape(-1)
    if c.shape != r.shape:
        raise ValueError(f"chosen has {c.numel()} rewards but rejected has {r.numel()}")
    if c.numel() == 0:
        return float("nan")
    return ((c > r).float() + 0.5 * (c == r).float()).mean().item()


# --------------------------------------------------------------------------------------------------
# Masked statistics and advantage whitening
# --------------------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``Σ x·mask`` (float32) over ``dim`` (all elements when None); masked garbage is ignored."""
    xm = torch.where(_valid(mask), _f32(x), 0.0)
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the valid entries: ``Σ x·mask / Σ mask`` (float32).

    Over all elements when ``dim`` is None (a scalar), else over ``dim``. When nothing is valid
    (an all-masked row) the mean is defined as 0 rather than NaN, so a padded row cannot poison a
    loss.
    """
    valid = _valid(mask)
    count = valid.sum() if dim is None else valid.sum(dim)
    return masked_sum(x, valid, dim) / count.clamp_min(1).to(torch.float32)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the valid entries of ``x`` (a float32 scalar).

    ``var = Σ mask·(x - μ)² / n`` with ``μ = masked_mean(x)``, ``n = Σ mask``; times the Bessel
    correction ``n/(n-1)`` when ``unbiased``. With fewer than two valid entries the unbiased
    estimate is undefined; it is returned as the biased one (0), not NaN.
    """
    valid = _valid(mask)
    xf = _f32(x)
    mean = masked_mean(xf, valid)
    var = masked_mean((xf - mean) ** 2, valid)
    if unbiased:  # Bessel's correction, as tensors (no host sync on GPU)
        n = valid.sum().to(torch.float32)
        var = torch.where(n > 1, var * n / (n - 1).clamp_min(1.0), var)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Advantage whitening (PPO-max "advantage normalization"): ``(x - μ) / sqrt(σ² + eps)``.

    μ and σ² (unbiased) are taken over the valid entries of the whole batch. With
    ``shift_mean=False`` the mean is added back — the scale is normalised but the sign of the
    average advantage is kept (as in TRL). Masked positions are set to 0. Returns float32.
    """
    valid = _valid(mask)
    xf = _f32(x)
    mean, var = masked_mean(xf, valid), masked_var(xf, valid, unbiased=True)
    out = (xf - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, 0.0)


# --------------------------------------------------------------------------------------------------
# KL penalty to the reference policy
# --------------------------------------------------------------------------------------------------


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimator of KL(π ‖ π_ref) from tokens sampled from π (Schulman 2020), float32.

    With ``log r = ref_logp - logp`` (``r = π_ref / π``):

    * ``k1 = logp - ref_logp = -log r`` — unbiased, high variance, can be negative per token.
    * ``k2 = ½ (logp - ref_logp)²`` — biased, low variance, always ≥ 0.
    * ``k3 = (r - 1) - log r`` — unbiased and always ≥ 0 (computed as ``expm1(log r) - log r``).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of: {', '.join(KL_KINDS)}")
    log_ratio = _f32(logp) - _f32(ref_logp)  # log π/π_ref = -log r
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    log_r = -log_ratio
    return torch.expm1(log_r) - log_r


def kl_penalized_rewards(
    score: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    kl_kind: str = "k1",
) -> tuple[Tensor, Tensor]:
    """PPO-max token-level KL penalty: per-token rewards for PPO (both float32 ``[B, T]``).

    ``kl[b, t] = kl_estimate(logp, ref_logp, kl_kind)`` on valid tokens, 0 elsewhere;
    ``rewards[b, t] = -kl_coef · kl[b, t]``, plus the sequence score ``score[b]`` (the reward
    model's, already normalised/clipped) added at the LAST valid token of row ``b``
    (Ziegler et al. 2019; PPO-max). A row without valid tokens gets all-zero rewards (its score is
    dropped). Returns ``(rewards, kl)``.
    """
    valid = _valid(mask)
    kl = torch.where(valid, kl_estimate(logp, ref_logp, kl_kind), 0.0)
    rewards = -kl_coef * kl
    last = last_token_index(valid)
    s = torch.where(last >= 0, _f32(score).reshape(-1), 0.0)
    return rewards.scatter_add(-1, last.clamp_min(0).unsqueeze(-1), s.unsqueeze(-1)), kl


# --------------------------------------------------------------------------------------------------
# Reward normalization with running moments
# --------------------------------------------------------------------------------------------------


class RunningMoments:
    """Running mean and standard deviation of everything seen so far (PPO-max reward scaling).

    Each :meth:`update` merges a batch's (count, mean, M2) into the running ones with Chan et al.'s
    parallel form of Welford's algorithm:

    ``δ = μ_b - μ``;  ``n' = n + n_b``;  ``μ' = μ + δ·n_b/n'``;  ``M2' = M2 + M2_b + δ²·n·n_b/n'``

    where ``M2 = Σ (x - μ)²``. The state is three Python numbers (float64), so updating in chunks
    gives the moments of the concatenation to double precision. ``.var``/``.std`` are the unbiased
    estimates ``M2/(n-1)``; before two values have been seen ``.std`` is 1 (so normalising by it is
    the identity) and ``.mean`` is 0. :meth:`state_dict`/:meth:`load_state_dict` let a checkpoint
    save and restore it (plain numbers, also JSON-serialisable).
    """

    def __init__(self) -> None:
        self.count: int = 0
        self.mean: float = 0.0
        self.m2: float = 0.0

    @property
    def var(self) -> float:
        """Unbiased running variance ``M2/(n-1)`` (1.0 until two values were seen)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 1.0

    @property
    def std(self) -> float:
        """Unbiased running standard deviation (1.0 until two values were seen)."""
        return math.sqrt(self.var)

    def update_from_moments(self, count: int, mean: float, m2: float) -> None:
        """Merge a batch given by its count, mean and ``M2 = Σ (x - mean)²`` (e.g. all-reduced)."""
        count = int(count)
        if count <= 0:
            return
        total = self.count + count
        delta = float(mean) - self.mean
        self.mean += delta * count / total
        self.m2 += float(m2) + delta * delta * self.count * count / total
        self.count = total

    def update(self, x: Tensor) -> tuple[float, float]:
        """Merge all elements of ``x``; return the batch's ``(mean, unbiased std)``.

        The batch std is 0.0 for a single element; an empty ``x`` changes nothing and returns
        ``(0.0, 0.0)``. ``x`` is not modified.
        """
        xs = x.detach().to(torch.float64).reshape(-1)
        n = xs.numel()
        if n == 0:
            return 0.0, 0.0
        batch_mean = xs.mean()
        m2 = ((xs - batch_mean) ** 2).sum().item()
        self.update_from_moments(n, batch_mean.item(), m2)
        return batch_mean.item(), math.sqrt(m2 / (n - 1)) if n > 1 else 0.0

    def state_dict(self) -> dict:
        """``{"count": int, "mean": float, "m2": float}``."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        """Restore the state written by :meth:`state_dict`."""
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])

    def __repr__(self) -> str:
        return f"RunningMoments(count={self.count}, mean={self.mean:.6g}, std={self.std:.6g})"


def normalize_and_clip_rewards(
    scores: Tensor,
    moments: RunningMoments,
    clip: float | None,
    shift_mean: bool = False,
) -> Tensor:
    """PPO-max reward normalization and clipping (float32).

    ``r̃ = clip( (score - μ·[shift_mean]) / σ, -clip, clip )`` with μ, σ the running moments
    (``clip=None``: no clipping). PPO-max scales the reward-model score by the running std of all
    scores seen so far and clips it, which keeps the critic's targets in a stable range. This function
    does not update ``moments``: call ``moments.update(scores)`` first if the batch should count.
    """
    out = _f32(scores)
    if shift_mean:
        out = out - moments.mean
    out = out / max(moments.std, 1e-8)
    if clip is not None:
        out = out.clamp(-clip, clip)
    return out


# --------------------------------------------------------------------------------------------------
# Generalized advantage estimation
# --------------------------------------------------------------------------------------------------


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over response tokens (float32 ``[B, T]`` each).

    Reverse-time recursion, with ``m_t`` the mask:

    ``δ_t = r_t + γ·V_{t+1}·m_{t+1} - V_t``   (the next value is 0 after the last valid token)
    ``A_t = δ_t + γλ·m_{t+1}·A_{t+1}``
    ``R_t = A_t + V_t``                          (the critic's target)

    Both are 0 at masked positions (garbage rewards or values there are ignored). PPO-max uses
    γ = 1, λ = 0.95. Returns ``(advantages, returns)``.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must have the same shape"
        )
    valid = _valid(mask)
    r = torch.where(valid, _f32(rewards), 0.0)
    v = torch.where(valid, _f32(values), 0.0)
    m = valid.to(torch.float32)
    T = r.shape[-1]
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[..., 0])
    next_adv = torch.zeros_like(r[..., 0])
    for t in reversed(range(T)):
        delta = r[..., t] + gamma * next_value - v[..., t]
        adv = (delta + gamma * lam * next_adv) * m[..., t]
        advantages[..., t] = adv
        next_value, next_adv = v[..., t], adv  # both already 0 at a masked t
    returns = torch.where(valid, advantages + v, 0.0)
    return advantages, returns


# --------------------------------------------------------------------------------------------------
# PPO losses
# --------------------------------------------------------------------------------------------------


def clipped_surrogate_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate objective, as a loss to minimise (Schulman et al. 2017).

    ``ρ = exp(logp - old_logp)``;
    ``loss = masked_mean( max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)) )``;
    ``clipfrac = masked_mean( [-A·clip(ρ) > -A·ρ] )`` — share of tokens where the clipped branch
    won (its gradient is 0 there);
    ``approx_kl = masked_mean( ½ (logp - old_logp)² )`` — the k2 estimate of KL(π_old ‖ π).

    Returns ``(loss, clipfrac, approx_kl)``: float32 scalars; only ``loss`` carries gradient.
    """
    valid = _valid(mask)
    log_ratio = torch.where(valid, _f32(logp) - _f32(old_logp), 0.0)
    ratio = torch.exp(log_ratio)
    adv = torch.where(valid, _f32(advantages), 0.0)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), valid)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), valid)
        approx_kl = masked_mean(0.5 * log_ratio**2, valid)
    return loss, clipfrac, approx_kl


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
) -> tuple[Tensor, Tensor]:
    """PPO-max value-function loss with value clipping.

    ``V_clip = clip(V, V_old - ε, V_old + ε)``;
    ``loss = ½ · masked_mean( max((V - R)², (V_clip - R)²) )``;
    ``clipfrac = masked_mean( [(V_clip - R)² > (V - R)²] )``.
    With ``clip=None``: ``loss = ½ · masked_mean((V - R)²)`` and ``clipfrac = 0``.
    Returns ``(loss, clipfrac)``: float32 scalars; only ``loss`` carries gradient.
    """
    valid = _valid(mask)
    v = torch.where(valid, _f32(values), 0.0)
    target = torch.where(valid, _f32(returns), 0.0)
    loss_unclipped = (v - target) ** 2
    if clip is None:
        return 0.5 * masked_mean(loss_unclipped, valid), torch.zeros((), device=v.device)
    old = torch.where(valid, _f32(old_values), 0.0)
    v_clipped = torch.maximum(torch.minimum(v, old + clip), old - clip)
    loss_clipped = (v_clipped - target) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), valid)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), valid)
    return loss, clipfrac


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """How much of the returns' variance the critic explains: ``1 - Var[R - V] / Var[R]``.

    Over valid tokens. 1 = perfect, 0 = no better than predicting the mean, < 0 = worse.
    NaN when the returns have no variance (or nothing is valid).
    """
    valid = _valid(mask)
    r, v = _f32(returns).detach(), _f32(values).detach()
    var_r = masked_var(r, valid, unbiased=False).item()
    if valid.sum().item() == 0 or var_r == 0.0:
        return float("nan")
    return 1.0 - masked_var(r - v, valid, unbiased=False).item() / var_r


def ptx_loss(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pretraining / SFT loss (PPO-ptx, Ouyang et al. 2022; optional in PPO-max): masked token NLL.

    ``loss = masked_mean( -log softmax(logits)[labels] )`` (a float32 scalar).
    The labels must already be ALIGNED with the logits: ``labels[b, t]`` is the token predicted by
    ``logits[b, t]`` (i.e. the caller has shifted — ``logits[:, :-1]`` against ``input_ids[:, 1:]``).
    ``mask`` marks the tokens that count; when None, every label ≠ -100 counts. Labels at masked
    positions may be anything (e.g. -100).
    """
    valid = labels != -100 if mask is None else _valid(mask)
    safe_labels = torch.where(valid, labels.long(), 0)
    return masked_mean(-logprobs_from_logits(logits, safe_labels), valid)


# --------------------------------------------------------------------------------------------------
# Collapse monitors
# --------------------------------------------------------------------------------------------------


def repeated_ngram_fraction(token_ids: Sequence[int], n: int = 4) -> float:
    """Share of the n-grams of a sequence that repeat an earlier one: ``1 - #distinct / #n-grams``.

    0 for a sequence without repeats (or shorter than ``n``); near 1 for a degenerate loop such as
    ``a b a b a b …``. The PPO collapse guard watches it (Zheng et al. 2023 report repetitive
    outputs as a symptom of pattern collapse). ``token_ids`` may be a list or a 1-D tensor.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = token_ids.tolist() if isinstance(token_ids, Tensor) else list(token_ids)
    total = len(ids) - n + 1
    if total <= 0:
        return 0.0
    distinct = len({tuple(ids[i : i + n]) for i in range(total)})
    return 1.0 - distinct / total
