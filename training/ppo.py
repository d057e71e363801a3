"""PPO-max on one base model: `python -m training.ppo`.

Reads top to bottom like the algorithm of Zheng et al. 2023, "Secrets of RLHF in Large Language
Models Part I: PPO" (PPO-max), in the style of CleanRL's ppo.py. One base model holds every role:

    policy     trainable LoRA adapter "policy"           (starts as the SFT model, or an rlhf-vN)
    reference  the same model with adapters disabled     (the SFT model; --kl-reference init: the KL penalty's
               reference is a frozen copy of --init-policy instead)
    reward     frozen LoRA adapter "reward" + score head (a reward-vN from the registry)
    critic     trainable LoRA adapter "critic" + value head (fresh, or from the reward model)

Every PPO-max trick is a named, switchable field of :class:`PPOConfig` (defaults = PPO-max) and
every metric is logged under the same name in metrics.jsonl, TensorBoard and the PNG curves
(with --samples-per-prompt K > 1 also reward/prompt_baseline_std and reward/within_prompt_std):

    reward/score_mean reward/score_std reward/normalized_mean objective/kl objective/kl_per_token
    response/length response/eos_rate response/perplexity response/repeated_4gram policy/entropy
    policy/loss policy/clipfrac policy/approx_kl value/loss value/clipfrac value/explained_variance
    val/score val/kl_exact val/refusal_harmful val/refusal_safe train/readout_score

``objective/kl`` is the --kl-estimator estimate on the rollouts (what the penalty uses; a monitor only).
``val/kl_exact`` is the exact KL to SFT, in nats per answer, on answers sampled at each
validation (rlhf_demo/kl.py): the KL bound and the collapse guard's KL signal use it. Validation and readouts
decode in --val-dtype (float32 on a CPU by default, also when training in bfloat16: rlhf_demo/precision.py).

At the end the best checkpoint (highest validation score within the KL bound, refusing non-harmful
validation prompts at most --max-safe-refusal-rise more often than the starting policy) is published
atomically to the registry as the next ``rlhf-vN``.

Data parallel under ``accelerate launch`` (docs/scale-out.md): each process samples and trains on its
own rollouts; gradients, reward moments and metrics are averaged across processes (training/distributed.py);
validation, logs, checkpoints and publishing happen on the main process only.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from rlhf_demo.atomic import write_json
from rlhf_demo.config import Settings
from rlhf_demo.flags import parse_config
from rlhf_demo.generation import GenerationParams, build_prompt_ids, decode_batch
from rlhf_demo.kl import answer_kl
from rlhf_demo.metrics_log import MetricsLog
from rlhf_demo.padding import pad_rows, used_columns
from rlhf_demo.precision import computing_in
from rlhf_demo.refusal.detector import judge_refusals
from rlhf_demo.registry import Registry, RegistryError, check_name
from rlhf_demo.scoring import ToyReward
from training import distributed as dist
from training import losses as L
from training import prompt_baseline as PB
from training.actor_critic import ActorCriticRoles
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.label_safety import attach as attach_label_safety
from training.ppo_config import PPOConfig
from training.ppo_data import (HARMFUL_CATEGORIES, SENSITIVE_CATEGORIES, PromptSampler, PtxData,  # noqa: F401
                               ValPrompt, labelled_pool, parse_category_weights, prompt_pool, stratified_indices)
from training.ppo_log import (PLOTTED, CollapseGuard, plot_curves, policy_card, rollout_metrics,  # noqa: F401
                              selection_key)
from training.scaffold import prepare_run_dir, seed_everything


# ================================================================================================
# 1. Config: PPOConfig (training/ppo_config.py). Data: the prompt pool, its sampler and PPO-ptx's batches
#    (training/ppo_data.py); evaluation prompts are never in the pool
# ================================================================================================

# ================================================================================================
# 2. Rollouts: sample answers from the policy; pack prompt+answer into one padded batch
# ================================================================================================
@dataclass
class Rollout:
    input_ids: torch.Tensor       # [B, T]  left-padded prompt, then the answer, then right padding
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor   # [B, T-1] 1 where position t predicts an answer token (logits index)
    prompts: list[list[dict]]     # the conversations answered
    responses: list[str]
    response_tokens: list[list[int]]
    reached_eos: torch.Tensor     # [B] bool


def pack(prompt_ids: list[list[int]], answers: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Left-pad prompts and right-pad answers so every answer starts at the same column."""
    p_ids, p_mask = pad_rows(prompt_ids, pad_id, "left")
    a_ids, a_mask = pad_rows(answers, pad_id, "right", min_width=1)
    ids, attn = torch.cat([p_ids, a_ids], dim=1), torch.cat([p_mask, a_mask], dim=1)
    resp = torch.cat([torch.zeros((len(prompt_ids), p_ids.shape[1] - 1), dtype=torch.long), a_mask], dim=1)
    return ids, attn, resp  # resp: logits at t predict token t+1


def rollout(roles: ActorCriticRoles, tokenizer, prompts: list[list[dict]], cfg: PPOConfig, seed: int,
            greedy: bool = False) -> Rollout:
    msgs = prompts
    prompt_ids = [build_prompt_ids(tokenizer, m, max_prompt_tokens=256) for m in msgs]
    params = [GenerationParams(max_new_tokens=cfg.response_length, temperature=cfg.temperature, top_p=cfg.top_p,
                               repetition_penalty=1.0, greedy=greedy, seed=seed + i) for i in range(len(prompts))]
    with roles.use("policy"):
        results = decode_batch(roles.model, tokenizer, prompt_ids, params)
    # The EOS token is an action too: keep it in the answer so PPO learns when to stop.
    answers = [r.token_ids + ([roles.end_of_turn_id] if r.finish_reason == "eos" else []) for r in results]
    ids, attn, resp = pack(prompt_ids, answers, tokenizer.pad_token_id)
    return Rollout(ids, attn, resp, prompts, [tokenizer.decode(r.token_ids, skip_special_tokens=True) for r in results],
                   [r.token_ids for r in results], torch.tensor([r.finish_reason == "eos" for r in results]))


# ================================================================================================
# 3. Experience: reward-model scores, reference/old log-probs and values, per-token rewards, GAE
# ================================================================================================
def conversations(ro: Rollout) -> list[list[dict]]:
    return [p + [{"role": "assistant", "content": r}] for p, r in zip(ro.prompts, ro.responses)]


@dataclass
class Experience:
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    old_values: torch.Tensor
    trunk: torch.Tensor | None    # output of the shared frozen layers (None without --lora-layers)
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor          # raw reward-model scores [B]
    rewards: torch.Tensor         # per-token rewards [B, T-1]
    kl: torch.Tensor              # per-token KL estimate [B, T-1]
    entropy: torch.Tensor         # per-token policy entropy [B, T-1]


@torch.no_grad()
def make_experience(roles: ActorCriticRoles, ro: Rollout, cfg: PPOConfig, moments: L.RunningMoments,
                    value_moments: L.RunningMoments | None = None) -> Experience:
    ids, attn, mask = ro.input_ids, ro.attention_mask, ro.response_mask
    # reward role + the frozen layers, computed once for all roles (the reward reads them too when it can)
    scores, trunk = roles.score_and_trunk(conversations(ro), ids, attn)
    old_logp, entropy = roles.token_logprobs("policy", ids, attn, mask, trunk=trunk, entropy=True)  # before the update
    ref_logp, _ = roles.token_logprobs(roles.kl_reference, ids, attn, mask, trunk=trunk)  # the penalty's reference
    old_values = roles.values(ids, attn, trunk=trunk)[:, :-1]                # critic role

    def shape(x: torch.Tensor, running: L.RunningMoments) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence scores -> per-token rewards (and the per-token KL)."""
        if cfg.reward_normalize:  # PPO-max: reward normalisation and clipping with running moments
            running.update(dist.all_gather(x))  # data parallel: the moments of every rank's scores
            x = L.normalize_and_clip_rewards(x, running, cfg.reward_clip or None, cfg.reward_shift_mean)
        elif cfg.reward_clip:
            x = x.clamp(-cfg.reward_clip, cfg.reward_clip)
        if cfg.eos_penalty:  # penalty for answers that never reach EOS
            x = x + cfg.eos_penalty * (~ro.reached_eos).float()
        # PPO-max: token-level KL penalty to the reference
        return L.kl_penalized_rewards(x, old_logp, ref_logp, mask, cfg.kl_coef, cfg.kl_estimator)

    # Grouped rollouts (RLOO's baseline, training/prompt_baseline.py): each answer's score minus the mean score of
    # the other answers to its prompt, so the advantage says "better than the other answers to this prompt"
    base = scores
    if cfg.samples_per_prompt > 1:
        base = scores - PB.prompt_baseline(scores, cfg.samples_per_prompt, cfg.prompt_baseline)
        if cfg.group_std_scale:  # GRPO: each prompt's answers on one scale
            base = base / PB.group_std(scores, cfg.samples_per_prompt)
    rewards, kl = shape(base.clone(), moments)
    # GAE (γ=1, λ=0.95) on the critic's values — or RLOO: the rest-of-answer return, no value subtracted (the
    # leave-one-out baseline above is the baseline)
    advantages, returns = L.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    if cfg.advantage == "rloo":
        advantages, _ = L.gae(rewards, torch.zeros_like(old_values), mask, 1.0, 1.0)
        # the critic, a monitor here, learns the value of each state: the Monte-Carlo return (λ = 1, no bootstrap
        # to flatter its explained variance) of the score *without* the baseline, normalised on its own running
        # moments. The baseline is the other answers' mean score, which is not in the critic's input: taught the
        # baselined returns it explained nothing (EV ≈ 0 in runs 14–22)
        value_moments = value_moments if value_moments is not None else L.RunningMoments()
        returns = L.gae(shape(scores.clone(), value_moments)[0], old_values, mask, cfg.gamma, 1.0)[1]
    # PPO-max advantage whitening
    if cfg.whiten_advantages:
        advantages = L.masked_whiten(advantages, mask)
    return Experience(old_logp, ref_logp, old_values, trunk, advantages, returns, scores, rewards, kl, entropy)


# ================================================================================================
# 4. The update: K epochs over mini-batches; clipped surrogate, clipped value loss, global grad clip
# ================================================================================================
def ppo_update(roles: ActorCriticRoles, ro: Rollout, ex: Experience, cfg: PPOConfig, policy_opt, critic_opt,
               update_policy: bool, rng: torch.Generator, ptx_batch=None) -> dict[str, float]:
    B = ro.input_ids.shape[0]
    stats: dict[str, list[float]] = {}
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=rng)
        for start in range(0, B, cfg.mini_batch_size):
            idx = order[start:start + cfg.mini_batch_size]
            cols = used_columns(ro.attention_mask[idx])  # drop all-padding columns: less work per step
            ids, attn = ro.input_ids[idx][:, cols], ro.attention_mask[idx][:, cols]
            tok = slice(cols.start, cols.stop - 1)        # per-token tensors have one column fewer
            mask = ro.response_mask[idx][:, tok]
            trunk = ex.trunk[idx][:, cols] if ex.trunk is not None else None
            if update_policy:
                logp, entropy = roles.token_logprobs("policy", ids, attn, mask, grad=True, trunk=trunk,
                                                     entropy=bool(cfg.entropy_coef))
                pg_loss, clipfrac, approx_kl = L.clipped_surrogate_loss(
                    logp, ex.old_logp[idx][:, tok], ex.advantages[idx][:, tok], mask, cfg.clip_range)
                loss = pg_loss
                if cfg.entropy_coef:
                    loss = loss - cfg.entropy_coef * L.masked_mean(entropy, mask)
                if cfg.ptx_coef and ptx_batch is not None:
                    p_ids, p_attn, p_mask = ptx_batch
                    p_logp, _ = roles.token_logprobs("policy", p_ids, p_attn, p_mask, grad=True)  # no [B, T, V]
                    ptx = -L.masked_mean(p_logp, p_mask)  # = L.ptx_loss on the logits
                    loss = loss + cfg.ptx_coef * ptx
                    _add(stats, "policy/ptx_loss", ptx.item())
                policy_opt.zero_grad(set_to_none=True)
                loss.backward()
                dist.all_reduce_mean_(roles.params("policy"))  # data parallel: average gradients across ranks
                if cfg.max_grad_norm:
                    _add(stats, "policy/grad_norm", float(torch.nn.utils.clip_grad_norm_(roles.params("policy"),
                                                                                          cfg.max_grad_norm)))
                policy_opt.step()
                _add(stats, "policy/loss", pg_loss.item())
                _add(stats, "policy/clipfrac", float(clipfrac))
                _add(stats, "policy/approx_kl", float(approx_kl))
                del logp, entropy, loss
            values = roles.values(ids, attn, grad=True, trunk=trunk)[:, :-1]
            v_loss, v_clipfrac = L.clipped_value_loss(values, ex.old_values[idx][:, tok], ex.returns[idx][:, tok], mask,
                                                      cfg.value_clip or None)
            critic_opt.zero_grad(set_to_none=True)
            (cfg.vf_coef * v_loss).backward()
            dist.all_reduce_mean_(roles.params("critic"))
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(roles.params("critic"), cfg.max_grad_norm)
            critic_opt.step()
            _add(stats, "value/loss", v_loss.item())
            _add(stats, "value/clipfrac", float(v_clipfrac))
    return {k: float(np.mean(v)) for k, v in stats.items()}


def _add(stats, key, value):
    stats.setdefault(key, []).append(value)


# ================================================================================================
# 5. Monitors: validation on held-out prompts; the rollout metrics that reveal collapse, the collapse guard,
#    checkpoint selection and the curves are training/ppo_log.py's; the metrics log is rlhf_demo/metrics_log.py
# ================================================================================================

@torch.no_grad()
def scored_answers(roles: ActorCriticRoles, tokenizer, prompts: list[list[dict]], cfg: PPOConfig, seed: int = 0,
                  greedy: bool = True):
    """Answers to ``prompts`` (greedy, or sampled as the rollouts are) and their training-reward scores."""
    ro = rollout(roles, tokenizer, prompts, cfg, seed=seed, greedy=greedy)
    scores, _ = roles.score_and_trunk(conversations(ro), ro.input_ids, ro.attention_mask)
    return ro, scores


@torch.no_grad()
def validate(roles: ActorCriticRoles, tokenizer, val_prompts: list[ValPrompt], cfg: PPOConfig) -> dict[str, float]:
    """Held-out prompts. Greedy answers: mean reward-model score, and how often the policy refuses harmful
    prompts (good) and the other prompts (over-refusal), by the project's refusal judge (rlhf_demo.refusal.detector's
    default, which reads the request too: an answer that swaps it for a harmless one is a refusal). Answers SAMPLED from the policy
    (temperature 1, no nucleus; the same seeds at every validation): ``val/kl_exact``, the exact KL to the
    reference in nats per answer (:func:`exact_answer_kl`), which the KL bound and the collapse guard use."""
    ro, scores = scored_answers(roles, tokenizer, [v.messages for v in val_prompts], cfg)
    out = {"val/score": float(scores.mean()), "val/kl_exact": exact_answer_kl(roles, tokenizer, val_prompts, cfg),
           "val/eos_rate": float(ro.reached_eos.float().mean())}
    requests = [next((m["content"] for m in reversed(v.messages) if m["role"] == "user"), None) for v in val_prompts]
    refused = [v.refusal for v in judge_refusals(ro.responses, requests)]
    for key, want in (("val/refusal_harmful", True), ("val/refusal_safe", False)):
        picked = [r for r, v in zip(refused, val_prompts) if v.harmful == want]
        if picked:
            out[key] = sum(picked) / len(picked)
    # the safe-but-risky-sounding prompts ("how do I kill a process?") are where over-refusal shows first
    sensitive = [r for r, v in zip(refused, val_prompts) if (v.category or "").lower() in SENSITIVE_CATEGORIES]
    if sensitive:
        out["val/refusal_sensitive"] = sum(sensitive) / len(sensitive)
    out["val/refusal_margin"] = out.get("val/refusal_harmful", 0.0) - out.get("val/refusal_safe", 0.0)
    return out


@torch.no_grad()
def train_readout(roles: ActorCriticRoles, tokenizer, prompts: list[list[dict]], cfg: PPOConfig) -> dict[str, float]:
    """The learning curve: greedy answers to the same fixed sample of TRAINING prompts at every validation, scored by
    the training reward (``train/readout_score``; with a composed reward also its safety part). Does PPO raise the
    reward it optimises? Unlike ``reward/score_mean`` this compares the same prompts over time. With
    --train-readout-samples K also K answers per prompt SAMPLED as the rollouts are, with the same seeds every time
    (``train/readout_sampled_score``): the reward PPO actually optimises, where greedy is what evaluation sees."""
    if not prompts:
        return {}
    _, scores = scored_answers(roles, tokenizer, prompts, cfg)
    out = {"train/readout_score": float(scores.mean())}
    if roles.last_safety is not None:
        out["train/readout_safety"] = float(roles.last_safety.mean())
    if cfg.train_readout_samples:
        _, sampled = scored_answers(roles, tokenizer, PB.repeat_prompts(prompts, cfg.train_readout_samples), cfg,
                                   seed=cfg.seed * 1_000_003 + READOUT_SEED, greedy=False)
        out["train/readout_sampled_score"] = float(sampled.mean())
    return out


READOUT_SEED = 4_102_913  # the sampled readout's seeds: the same draws at every validation
VAL_KL_SEED = 9_176_011  # the KL samples' seeds: the same draws at every validation (common random numbers)


@torch.no_grad()
def exact_answer_kl(roles: ActorCriticRoles, tokenizer, val_prompts: list[ValPrompt], cfg: PPOConfig) -> float:
    """Mean over the validation prompts of the exact KL(policy ‖ reference) of one answer sampled from the
    policy at temperature 1 (:mod:`rlhf_demo.kl`: the full next-token distributions at every answer position,
    summed; never negative), in nats per answer. Seeded by ``--seed``: every validation draws alike."""
    ro = rollout(roles, tokenizer, [v.messages for v in val_prompts], replace(cfg, temperature=1.0, top_p=1.0),
                 seed=cfg.seed * 1_000_003 + VAL_KL_SEED)
    ids, attn, mask = ro.input_ids, ro.attention_mask, ro.response_mask
    per_token = roles.token_kl(ids, attn, mask, trunk=roles.trunk(ids, attn))
    return float(answer_kl(per_token, mask).mean())


# ================================================================================================
# 6. The loop (seed, run dir, checkpoints and publishing: training/scaffold.py, training/checkpoint.py, the registry)
# ================================================================================================

def train(cfg: PPOConfig, settings: Settings, stop_after: int | None = None) -> dict:
    """Run PPO-max; returns a summary. ``stop_after`` (tests) stops after that many iterations, as a crash would."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    settings = dist.init(settings)  # under accelerate launch: join the other processes (else a no-op)
    rank, world = dist.rank(), dist.world_size()
    seed_everything(cfg.seed)  # the same on every rank: the same initial adapters
    toy_reward = ToyReward.parse(cfg.reward_model)  # toy:WORD (a bad WORD is refused here)
    PB.check_groups(cfg.rollout_batch_size, cfg.samples_per_prompt, cfg.prompt_baseline)  # whole groups, or error now
    cfg.check_combinations()  # flags that need each other (--advantage rloo, --group-std-scale): error now
    if toy_reward and cfg.publish:
        raise ValueError(f"--reward-model {cfg.reward_model} is a diagnosis reward: a policy trained on it is not "
                         "published; add --no-publish")
    for name in (cfg.name, None if toy_reward else cfg.reward_model, cfg.init_policy):
        if name:
            check_name(name)  # a bad version name (e.g. '../x') is refused now, not after the run
    registry = Registry(settings.versions_dir)
    target = Registry(cfg.publish_dir, package_dir=None) if cfg.publish_dir else registry  # where to publish
    if cfg.publish and cfg.name:  # fail now, not after the run
        target.check_new_name(cfg.name, hint="pass another --name (e.g. the next rlhf-vN) or --no-publish")
    run_dir = prepare_run_dir(cfg.run_dir, settings, "ppo", {"ppo": asdict(cfg), "base_model": settings.base_model})

    train_prompts, val_prompts, train_kinds = labelled_pool(cfg, settings)
    readout = random.Random(cfg.seed).sample(train_prompts, min(cfg.train_readout_prompts, len(train_prompts)))
    roles = ActorCriticRoles.build(settings, registry, cfg)
    if cfg.label_safety:  # the prompts' known kinds and explicit declines as the safety term: training/label_safety.py
        attach_label_safety(roles, train_prompts, train_kinds, cfg.label_safety)
    roles.logit_temperature = cfg.temperature  # log-probs of the tempered policy the rollouts sample from
    tokenizer = roles.tokenizer
    val_dtype = cfg.validation_dtype(settings)  # float32 on a CPU (--val-dtype): rlhf_demo/precision.py
    policy_opt = torch.optim.AdamW(roles.params("policy"), lr=cfg.policy_lr, eps=1e-5)
    critic_opt = torch.optim.AdamW(roles.params("critic"), lr=cfg.critic_lr, eps=1e-5)
    dist.broadcast_params_(roles.params("policy") + roles.params("critic"))  # data parallel: one start for all
    moments, value_moments = L.RunningMoments(), L.RunningMoments()  # the scores' (RLOO: the critic's own)
    sampler = PromptSampler(train_prompts, cfg.seed)
    guard = CollapseGuard(cfg)
    update_rng = torch.Generator().manual_seed(cfg.seed)  # mini-batch order; the same on every rank (own data)
    ptx = PtxData(tokenizer, cfg.mini_batch_size, cfg.seed, categories=cfg.ptx_categories,
                  sources=cfg.ptx_pairs) if cfg.ptx_coef else None
    log = MetricsLog(run_dir, cfg.report_to if dist.is_main() else "jsonl")  # written by the main rank only
    best = {"step": None, "val/score": -math.inf, "selection": [-math.inf, -math.inf]}
    start = 0
    baseline: dict[str, float] = {}  # validation of the starting policy (iteration 0)

    def save(step: int) -> None:
        dist.check_in_sync(roles.params("policy") + roles.params("critic"))  # what rank 0 saves is every rank's
        if not dist.is_main():
            return
        save_checkpoint(run_dir, step, model=roles.model, adapters=("policy", "critic"), modules=roles.modules(),
                        optimizer=policy_opt, keep_last=cfg.keep_checkpoints,
                        extra={"critic_opt": critic_opt.state_dict(), "moments": moments.state_dict(),
                               "value_moments": value_moments.state_dict(),
                               "sampler": sampler.state_dict(), "guard": guard.state_dict(), "best": dict(best),
                               "baseline": dict(baseline), "val_dtype": cfg.validation_dtype_name(settings),
                               "update_rng": update_rng.get_state()})

    if cfg.resume:
        try:
            ck = load_checkpoint(run_dir, model=roles.model, modules=roles.modules(), optimizer=policy_opt)
        except CheckpointError as exc:
            print(f"[ppo] --resume: {exc}; starting fresh", file=sys.stderr)
        else:
            start, s = ck.step, ck.extra
            cfg.check_resumed_val_dtype(s.get("val_dtype"), settings)  # baseline and best: validated alike
            critic_opt.load_state_dict(s["critic_opt"])
            moments.load_state_dict(s["moments"])
            value_moments.load_state_dict(s.get("value_moments", s["moments"]))  # older checkpoints: the scores'
            sampler.load_state_dict(s["sampler"])
            guard.load_state_dict(s["guard"])
            best.update(s["best"])
            baseline.update(s.get("baseline", {}))
            update_rng.set_state(s["update_rng"])
            if dist.is_main():
                log.truncate_after(start)
            print(f"[ppo] resumed from iteration {start} ({ck.path})", file=sys.stderr)

    if not baseline and dist.is_main():  # PPO-max keeps the best checkpoint, judged against where it started
        with computing_in(roles.model, val_dtype):
            baseline = validate(roles, tokenizer, val_prompts, cfg)
            log.log(0, {**baseline, **train_readout(roles, tokenizer, readout, cfg)})
        guard.set_start(baseline["val/eos_rate"])
        print("[ppo] starting policy on the validation prompts: " + ", ".join(
            f"{k} {v:.3f}" for k, v in baseline.items()), file=sys.stderr)

    def within_bounds(m: dict) -> bool:
        """The best checkpoint must stay within the KL bound and the over-refusal bound, on all the
        non-harmful validation prompts and on the sensitive ones alone."""
        rise = max(m.get(k, 0.0) - baseline.get(k, 0.0) for k in ("val/refusal_safe", "val/refusal_sensitive"))
        return m["val/kl_exact"] <= cfg.kl_bound and rise <= cfg.max_safe_refusal_rise + 1e-9

    stopped = None
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="PPO-max", unit="it",
               disable=not dist.is_main())
    for it in bar:
        step = it + 1
        t0 = time.time()
        seed_everything(cfg.seed * 7919 + step + 1_000_003 * rank)  # per iteration (and rank): resume = same rollouts
        # data parallel: every rank draws the same global batch and answers its own share, with its own seeds;
        # grouped rollouts: rollout_batch_size answers = rollout_batch_size / K prompts, each K times in a row
        k = cfg.samples_per_prompt
        prompts = dist.shard(PB.repeat_prompts(sampler.next(cfg.rollout_batch_size * world // k), k), rank, world)
        ro = rollout(roles, tokenizer, prompts, cfg,
                     seed=cfg.seed * 100003 + step * 1009 + rank * cfg.rollout_batch_size)
        ex = make_experience(roles, ro, cfg, moments, value_moments)
        metrics = rollout_metrics(ro, ex, cfg)
        if k > 1:  # how much of the reward's spread is between prompts (removed) and how much is left within them
            metrics.update(PB.group_stats(ex.scores, k))
        if roles.last_safety is not None:  # a composed reward: its two parts, so a run shows which one moves
            metrics["reward/safety_mean"] = float(roles.last_safety.mean())
            metrics["reward/rm_mean"] = metrics["reward/score_mean"] - metrics["reward/safety_mean"]
            metrics.update(roles.label_safety.stats() if roles.label_safety else {})  # explicit refusals, coverage
        warmup = step <= cfg.critic_warmup  # PPO-max: critic warm-up before the policy moves
        ptx_batch = ptx.batch(step) if ptx else None
        metrics.update(ppo_update(roles, ro, ex, cfg, policy_opt, critic_opt, not warmup, update_rng, ptx_batch))
        metrics["time/iteration_s"] = time.time() - t0
        metrics = dist.all_reduce_mean(metrics)  # data parallel: every rank logs and guards on the same averages
        if (step % cfg.eval_every == 0 or step == cfg.iterations) and dist.is_main():
            with computing_in(roles.model, val_dtype):  # --val-dtype float32: the same greedy answers in any batch
                metrics.update(validate(roles, tokenizer, val_prompts, cfg))
                metrics.update(train_readout(roles, tokenizer, readout, cfg))
            if within_bounds(metrics) and selection_key(metrics, cfg) > tuple(best["selection"]) and not warmup:
                best = {"step": step, **{k: v for k, v in metrics.items() if k.startswith("val/")},
                        "selection": list(selection_key(metrics, cfg))}
                roles.save_policy(run_dir / "best")
        if dist.is_main():
            log.log(step, metrics)
        bar.set_postfix(score=f"{metrics['reward/score_mean']:.2f}", kl=f"{metrics['objective/kl']:.2f}",
                        len=f"{metrics['response/length']:.0f}")
        reason = dist.broadcast_object(guard.check(metrics) if dist.is_main() else None)  # main's guard stops all
        if step % cfg.checkpoint_every == 0 or reason or step == cfg.iterations:
            save(step)
        if reason:
            stopped = f"collapse guard at iteration {step}: {reason}"
            print(f"[ppo] {stopped}; keeping the best checkpoint (iteration {best['step']})", file=sys.stderr)
            break
        if stop_after is not None and step >= start + stop_after:
            return {"interrupted_at": step, "run_dir": str(run_dir)}
    bar.close()
    fingerprints = dist.check_in_sync(roles.params("policy"), "policy adapters")  # [] in a single process
    if not dist.is_main():  # plots, publishing and the summary are the main rank's: wait for it, then stop
        dist.barrier()
        return {"run_dir": str(run_dir), "rank": rank}

    rows = log.rows()
    plot = plot_curves(rows, run_dir / "curves.png")
    summary = {"run_dir": str(run_dir), "iterations": rows[-1]["step"] if rows else 0, "stopped": stopped,
               "best_step": best["step"], "best_val_score": best["val/score"] if best["step"] else None,
               "curves": str(plot) if plot else None}
    if world > 1:
        summary["data_parallel"] = {"processes": world, "policy_fingerprints": fingerprints}
    if best["step"] is None:
        # no validation within the KL bound after warm-up: publish the final policy only if within bound
        final_kl = rows[-1].get("val/kl_exact") if rows else None
        if final_kl is not None and rows[-1]["step"] > 0 and within_bounds(rows[-1]):
            roles.save_policy(run_dir / "best")
            best = {"step": rows[-1]["step"], "val/score": rows[-1].get("val/score"), "val/kl_exact": final_kl}
            summary["best_step"] = best["step"]
    if cfg.publish and best["step"] is not None:
        card = policy_card(cfg, settings, roles, best, rows, stopped, len(train_prompts), len(val_prompts))
        if world > 1:  # --rollout-batch-size was per process
            card["data_parallel"] = summary["data_parallel"]
        version = target.publish(run_dir / "best", card, name=cfg.name or None)
        summary["published"] = version.name
        print(f"[ppo] published {version.name} (best iteration {best['step']}) at {version.path}", file=sys.stderr)
    elif cfg.publish:
        print(f"[ppo] nothing published: no checkpoint within the KL bound {cfg.kl_bound} and the over-refusal "
              f"bound (+{cfg.max_safe_refusal_rise:.0%} refusals of non-harmful validation prompts)", file=sys.stderr)
    write_json(run_dir / "summary.json", summary)
    dist.barrier()  # release the other ranks
    return summary


def main(argv: list[str] | None = None) -> int:
    from rlhf_demo.base_model import BaseModelError
    from training.data import DataError

    cfg, settings = parse_config(PPOConfig, "python -m training.ppo", __doc__, argv)
    try:
        summary = train(cfg, settings)
    except (BaseModelError, RegistryError, DataError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
