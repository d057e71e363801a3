"""Grouped rollouts with a per-prompt reward baseline: the pure math of ``--samples-per-prompt K``.

Each rollout prompt is answered K times in one iteration (the K answers sit in consecutive rows). Before reward
normalisation/clipping and the KL penalty, each answer's sequence-level score loses a baseline computed from the
other answers to the *same* prompt, so what reaches the advantages is "this answer vs the other answers to this
prompt", not "this prompt vs the other prompts" (which the safety term of a composed reward makes large).

Two baselines (``--prompt-baseline``):

* ``loo`` (the default): the leave-one-out mean of the other K-1 scores of the group, as in RLOO (Ahmadian et al.
  2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs";
  Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"). TRL's RLOOTrainer
  (``trl/trainer/rloo_trainer.py``: ``baseline = (rlhf_reward.sum(0) - rlhf_reward) / (rloo_k - 1)``) and OpenRLHF
  (``openrlhf/trainer/ppo_utils/experience_maker.py``, ``--advantage_estimator rloo``: the same on the reward
  reshaped to ``(-1, n_samples_per_prompt)``, before the per-token KL is added) do it this way.
  We choose it because the baseline of answer i does not depend on answer i's own score, so subtracting it keeps
  the policy gradient unbiased; the plain group mean contains the answer's own score and shrinks every
  deviation by (K-1)/K (r_i - mean = (K-1)/K · (r_i - LOO_i)). With PPO-max's running reward normalisation the
  constant factor mostly cancels, so the two differ only in scale, not in direction; with --no-reward-normalize
  they differ by that factor.
* ``mean``: the group mean including the answer itself, as GRPO (Shao et al. 2024, DeepSeekMath) and OpenRLHF's
  ``reinforce_baseline`` / ``dr_grpo`` (without GRPO's division by the group std).
* ``none``: K answers per prompt, no baseline (isolates the effect of grouping alone).
"""

from __future__ import annotations

import torch

BASELINES = ("loo", "mean", "none")


def check_groups(batch_size: int, k: int, mode: str = "loo") -> None:
    """A batch of ``batch_size`` answers must split into whole groups of ``k`` (k ≥ 1); ``mode`` a known baseline."""
    if mode not in BASELINES:
        raise ValueError(f"--prompt-baseline {mode!r}: choose one of {', '.join(BASELINES)}")
    if k < 1:
        raise ValueError(f"--samples-per-prompt {k}: must be at least 1")
    if batch_size % k:
        raise ValueError(f"--samples-per-prompt {k}: --rollout-batch-size {batch_size} (answers per iteration, "
                         f"per process) must be a multiple of it")


def repeat_prompts(prompts: list, k: int) -> list:
    """[a, b] with k=2 -> [a, a, b, b]: each prompt's K answers in consecutive rows (one group)."""
    return [p for p in prompts for _ in range(k)]


def prompt_baseline(scores: torch.Tensor, k: int, mode: str = "loo") -> torch.Tensor:
    """The baseline of each row of ``scores`` [B] (B = groups × k, a group = k consecutive rows).

    ``loo``: mean of the other k-1 scores of the row's group; ``mean``: the group's mean; ``none`` or k = 1: zeros.
    """
    check_groups(scores.shape[0], k, mode)
    if k == 1 or mode == "none":
        return torch.zeros_like(scores)
    groups = scores.reshape(-1, k)
    total = groups.sum(-1, keepdim=True)
    if mode == "loo":
        base = (total - groups) / (k - 1)
    else:
        base = (total / k).expand_as(groups)
    return base.reshape(-1)


def group_std(scores: torch.Tensor, k: int, floor: float = 1e-6) -> torch.Tensor:
    """The population std of each row's group (k consecutive rows), at least ``floor``: ``--group-std-scale``
    divides the baselined scores by it, as GRPO does (Shao et al. 2024), so every prompt's answers reach the
    advantages on one scale — a prompt kind whose answers differ by less (the risky-but-safe prompts under a
    composed reward) weighs as much as one whose answers differ by more. Dr. GRPO (Liu et al. 2025) argues
    against it (it up-weights groups that barely differ); it is off by default."""
    check_groups(scores.shape[0], k)
    if k == 1:
        return torch.ones_like(scores)
    std = scores.reshape(-1, k).float().std(-1, unbiased=False, keepdim=True).clamp_min(floor)
    return std.expand(-1, k).reshape(-1).to(scores.dtype)


def group_stats(scores: torch.Tensor, k: int) -> dict[str, float]:
    """What a grouped batch says about the reward's variance: the spread of the group means (what a per-prompt
    baseline removes: ``reward/prompt_baseline_std``) and the mean within-group std (what is left for the policy to
    learn from: ``reward/within_prompt_std``). Population std (ddof 0); a batch of one group has spread 0."""
    check_groups(scores.shape[0], k)
    groups = scores.reshape(-1, k).float()
    means = groups.mean(-1)
    return {"reward/prompt_baseline_std": float(means.std(unbiased=False)),
            "reward/within_prompt_std": float(groups.std(-1, unbiased=False).mean())}
