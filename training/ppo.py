"""PPO-max on one base model: `python -m training.ppo`.

Reads top to bottom like the algorithm of Zheng et al. 2023, "Secrets of RLHF in Large Language
Models Part I: PPO" (PPO-max), in the style of CleanRL's ppo.py. One base model holds every role:

    policy     trainable LoRA adapter "policy"           (starts as the SFT model, or an rlhf-vN)
    reference  the same model with adapters disabled     (the SFT model)
    reward     frozen LoRA adapter "reward" + score head (a reward-vN from the registry)
    critic     trainable LoRA adapter "critic" + value head, initialised from the reward model

Every PPO-max trick is a named, switchable field of :class:`PPOConfig` (defaults = PPO-max) and
every metric is logged under the same name in metrics.jsonl, TensorBoard and the PNG curves:

    reward/score_mean reward/score_std reward/normalized_mean objective/kl objective/kl_per_token
    response/length response/eos_rate response/perplexity response/repeated_4gram policy/entropy
    policy/loss policy/clipfrac policy/approx_kl value/loss value/clipfrac value/explained_variance
    val/score val/kl_exact val/refusal_harmful val/refusal_safe

``objective/kl`` is the --kl-estimator estimate on the rollouts (what the penalty uses; a monitor only).
``val/kl_exact`` is the exact KL to the reference, in nats per answer, on answers sampled at each
validation (rlhf_demo/kl.py): the KL bound and the collapse guard's KL signal use it.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlhf_demo.config import Settings
from rlhf_demo.generation import GenerationParams, build_prompt_ids, decode_batch
from rlhf_demo.registry import Registry, check_name
from rlhf_demo.splits import check_not_reported
from rlhf_demo.refusal.detector import judge_refusals
from training import distributed as dist
from training import losses as L
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config_cli import parse_config
from training.actor_critic import ActorCriticRoles
from training.roles import ToyReward


@dataclass
class PPOConfig:
    # ---------------------------------------------------------------- data
    prompts: list[str] = field(default_factory=lambda: ["seed"], metadata={
        "help": "prompt sources, repeatable: 'seed' (rlhf_demo/data/ppo_prompts.jsonl), 'arena' (users' prompts "
                "from the feedback database), 'mix[:harmful=N,risky=N,ordinary=N]' (the vendored public sets' "
                "role-'train' prompts balanced by kind, default as many of each as the smallest kind has; with "
                "it the validation prompts are the sets' role-'val' ones), or a .txt/.jsonl file. Evaluation "
                "prompts are always removed."})
    max_prompts: int = field(default=0, metadata={"help": "use at most this many training prompts (0 = all)"})
    val_prompts: int = field(default=16, metadata={
        "help": "prompts held out of the pool (stratified by category) for the validation that picks the best "
                "checkpoint"})
    # ---------------------------------------------------------------- models
    reward_model: str = field(default="", metadata={
        "help": "reward-vN to optimise (default: the newest), or toy:WORD — a known-answer reward for diagnosis "
                "(1 if the answer contains WORD, else 0; no reward model, the critic starts fresh)"})
    init_policy: str = field(default="sft", metadata={
        "help": "policy to start from: 'sft' or an rlhf-vN to continue training its adapter"})
    name: str = field(default="", metadata={"help": "name of the published version (default: the next rlhf-vN)"})
    publish: bool = field(default=True, metadata={"help": "publish the best checkpoint to the registry at the end"})
    publish_dir: str = field(default="", metadata={
        "help": "publish into this versions directory instead of <data dir>/versions (e.g. rlhf_demo/versions "
                "for the shipped default)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the policy and critic adapters"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (0 keeps rollout and update identical)"})
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                     metadata={"help": "comma-separated module names that get LoRA"})
    lora_layers: int = field(default=0, metadata={
        "help": "put the policy/critic LoRA on the top N decoder layers only (0 = all layers)"})
    shared_trunk: bool = field(default=True, metadata={
        "help": "with --lora-layers: run the frozen layers below the adapters once per batch and share "
                "their output between policy, reference and critic (same numbers, less compute)"})
    # ---------------------------------------------------------------- rollouts
    iterations: int = field(default=60, metadata={"help": "PPO iterations (rollout + update)"})
    rollout_batch_size: int = field(default=16, metadata={
        "help": "prompts sampled per iteration (the buffer); per process under accelerate launch"})
    response_length: int = field(default=48, metadata={"help": "longest sampled answer, in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "rollout sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "rollout nucleus sampling (1 = sample the full policy)"})
    # ---------------------------------------------------------------- PPO-max: reward shaping
    kl_coef: float = field(default=0.05, metadata={
        "help": "token-level KL penalty coefficient β (PPO-max: 0.01–0.05): r_t = -β·KL_t (+ score at the last token)"})
    kl_estimator: str = field(default="k1", metadata={"help": "per-token KL estimator for the penalty: k1, k2 or k3"})
    reward_normalize: bool = field(default=True, metadata={
        "help": "PPO-max reward normalisation: divide scores by their running std (running moments)"})
    reward_shift_mean: bool = field(default=True, metadata={"help": "also subtract the running mean of the scores"})
    reward_clip: float = field(default=5.0, metadata={"help": "PPO-max reward clipping to [-c, c] (0 = off)"})
    eos_penalty: float = field(default=-1.0, metadata={
        "help": "added to the (normalised) score of an answer that never reaches EOS (0 = off)"})
    # ---------------------------------------------------------------- PPO-max: advantages and losses
    gamma: float = field(default=1.0, metadata={"help": "discount γ of GAE (PPO-max: 1)"})
    lam: float = field(default=0.95, metadata={"help": "GAE λ (PPO-max: 0.95)"})
    whiten_advantages: bool = field(default=True, metadata={"help": "PPO-max advantage whitening per batch"})
    clip_range: float = field(default=0.2, metadata={"help": "policy ratio clip ε of the surrogate objective"})
    value_clip: float = field(default=0.2, metadata={"help": "PPO-max value-loss clipping around old values (0 = off)"})
    vf_coef: float = field(default=1.0, metadata={"help": "critic loss weight"})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus weight (0 = only logged)"})
    ptx_coef: float = field(default=0.0, metadata={
        "help": "PPO-ptx: weight of an SFT loss on the seed pairs' chosen answers (0 = off)"})
    ptx_categories: str = field(default="helpful,sensitive", metadata={
        "help": "seed-pair categories whose chosen answers the ptx loss imitates (comma-separated; 'all' = every "
                "pair; 'sensitive:2' samples a category twice as often). The default anchors helpfulness only: "
                "imitating the harmless pairs' refusals teaches the policy to refuse in general, which raises "
                "over-refusal; adding them with the sensitive answers weighted up trades refusals against it"})
    critic_from_reward: bool = field(default=False, metadata={
        "help": "PPO-max: initialise the critic adapter and head from the reward model. Off by default: the reward "
                "head scores whole conversations on another scale than the normalised returns and is meaningless "
                "on answer prefixes — explained variance stayed at -1 to -4 through 8 warm-up iterations "
                "(docs/ppo-diagnosis.md); a fresh adapter with a zero head starts at 0 and becomes positive"})
    critic_reward_head: bool = field(default=True, metadata={
        "help": "with --critic-from-reward: copy the reward head too (else the reward adapter with a fresh value "
                "head, see --value-head-init-std)"})
    value_head_init_std: float = field(default=0.0, metadata={
        "help": "std of the initial weights of a fresh value head (--no-critic-from-reward or a toy reward); "
                "0 = zeros: the critic predicts 0 until it learns, so the first advantages are the plain "
                "returns instead of noise from a random head; < 0 = 1/sqrt(hidden+1)"})
    critic_warmup: int = field(default=4, metadata={
        "help": "PPO-max: iterations that update only the critic before the policy moves (a fresh critic needs "
                "a few to predict better than a constant)"})
    ppo_epochs: int = field(default=4, metadata={
        "help": "K epochs over the buffer per iteration (1 moved the policy too little to learn in tens of "
                "iterations; docs/ppo-diagnosis.md)"})
    mini_batch_size: int = field(default=8, metadata={"help": "rollouts per gradient step"})
    policy_lr: float = field(default=2e-4, metadata={
        "help": "policy learning rate (paper 5e-7 for full fine-tuning; a LoRA adapter, which starts at zero, needs "
                "far larger: at 5e-5 the policy moved ~1e-6 nats per update and the reward stayed flat)"})
    critic_lr: float = field(default=2e-4, metadata={
        "help": "critic learning rate (paper 1.65e-6 full FT; LoRA adapter + value head)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "PPO-max global gradient clipping (0 = off)"})
    # ---------------------------------------------------------------- collapse guard
    kl_bound: float = field(default=10.0, metadata={
        "help": "KL bound in nats per answer on val/kl_exact (the exact KL to the reference of answers sampled "
                "at each validation): the best checkpoint must be within it; the guard stops the run when it "
                "stays above it for --kl-guard-validations validations"})
    kl_guard_validations: int = field(default=2, metadata={
        "help": "validations in a row with val/kl_exact above --kl-bound that stop the run (collapse guard)"})
    best_metric: str = field(default="val/score", metadata={
        "help": "what picks the best checkpoint among those within the bounds: val/score (PPO-max: the reward "
                "model's mean score on the validation prompts) or val/refusal_margin (share of harmful validation "
                "prompts refused minus share of the other validation prompts refused; ties broken by val/score)",
        "choices": ["val/score", "val/refusal_margin"]})
    max_safe_refusal_rise: float = field(default=0.10, metadata={
        "help": "over-refusal bound for the best checkpoint: the share of held-out non-harmful validation prompts "
                "the policy refuses (rlhf_demo.refusal), and of the sensitive ones alone, may exceed the starting "
                "policy's by at most this (1 = off)"})
    guard_patience: int = field(default=3, metadata={"help": "iterations a collapse signal must persist to stop"})
    min_perplexity: float = field(default=1.01, metadata={"help": "collapse if per-token perplexity falls below"})
    max_repeated_ngrams: float = field(default=0.5, metadata={"help": "collapse if the repeated 4-gram share exceeds"})
    max_length_pinned: float = field(default=0.95, metadata={
        "help": "collapse if this share of answers hits --response-length without EOS, when the starting policy "
                "ended at least 20%% of its validation answers with EOS (else the signal is off: the limit is short)"})
    # ---------------------------------------------------------------- bookkeeping
    eval_every: int = field(default=5, metadata={"help": "validation score every N iterations (and at the end)"})
    checkpoint_every: int = field(default=5, metadata={"help": "checkpoint every N iterations"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --run-dir"})
    run_dir: str = field(default="", metadata={"help": "where checkpoints/metrics/plots go (default: <data dir>/runs/ppo-<time>)"})
    seed: int = field(default=0, metadata={"help": "seed for prompts, sampling and initialisation"})
    report_to: str = field(default="jsonl", metadata={"help": "'jsonl', or 'tensorboard' (also writes jsonl)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})


# ================================================================================================
# 1. Data: prompts (evaluation prompts are never in the pool)
# ================================================================================================
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
    from training.data import load_prompts, parse_source, public_val_prompts

    items = load_prompts(cfg.prompts, settings=settings)
    random.Random(cfg.seed).shuffle(items)
    if any(parse_source(p).kind == "mix" for p in cfg.prompts):
        # public sets: train on role-"train" prompts (and the other sources), validate on role-"val" ones only
        val = [ValPrompt(it.messages, it.category) for it in public_val_prompts(cfg.val_prompts)]
        train = [it.messages for it in items]
    else:
        val_idx = set(stratified_indices([it.category or "" for it in items], cfg.val_prompts))
        val = [ValPrompt(it.messages, it.category) for i, it in enumerate(items) if i in val_idx]
        train = [it.messages for i, it in enumerate(items) if i not in val_idx]
    # selection apart from the test: no validation prompt is a prompt of a reported suite (LeakError stops the run)
    check_not_reported([m["content"] for v in val for m in v.messages if m.get("role") == "user"],
                       "PPO validation prompts")
    if cfg.max_prompts:
        train = train[:cfg.max_prompts]
    if not train:
        raise SystemExit("error: no training prompts left (check --prompts)")
    return train, val


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
    p_len = max(len(p) for p in prompt_ids)
    a_len = max(1, max(len(a) for a in answers))
    B = len(prompt_ids)
    ids = torch.full((B, p_len + a_len), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros((B, p_len + a_len - 1), dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompt_ids, answers)):
        ids[i, p_len - len(p):p_len] = torch.tensor(p)
        ids[i, p_len:p_len + len(a)] = torch.tensor(a, dtype=torch.long)
        attn[i, p_len - len(p):p_len + len(a)] = 1
        resp[i, p_len - 1:p_len - 1 + len(a)] = 1  # logits at t predict token t+1
    return ids, attn, resp


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
def make_experience(roles: ActorCriticRoles, ro: Rollout, cfg: PPOConfig, moments: L.RunningMoments) -> Experience:
    ids, attn, mask = ro.input_ids, ro.attention_mask, ro.response_mask
    # reward role + the frozen layers, computed once for all roles (the reward reads them too when it can)
    scores, trunk = roles.score_and_trunk(conversations(ro), ids, attn)
    old_logp, entropy = roles.token_logprobs("policy", ids, attn, mask, trunk=trunk, entropy=True)  # before the update
    ref_logp, _ = roles.token_logprobs(None, ids, attn, mask, trunk=trunk)   # reference
    old_values = roles.values(ids, attn, trunk=trunk)[:, :-1]                # critic role

    # PPO-max: reward normalisation and clipping with running moments
    shaped = scores.clone()
    if cfg.reward_normalize:
        moments.update(dist.all_gather(scores))  # data parallel: the moments of every rank's scores
        shaped = L.normalize_and_clip_rewards(scores, moments, cfg.reward_clip or None, cfg.reward_shift_mean)
    elif cfg.reward_clip:
        shaped = shaped.clamp(-cfg.reward_clip, cfg.reward_clip)
    # penalty for answers that never reach EOS
    if cfg.eos_penalty:
        shaped = shaped + cfg.eos_penalty * (~ro.reached_eos).float()
    # PPO-max: token-level KL penalty to the reference
    rewards, kl = L.kl_penalized_rewards(shaped, old_logp, ref_logp, mask, cfg.kl_coef, cfg.kl_estimator)
    # GAE (γ=1, λ=0.95), then PPO-max advantage whitening
    advantages, returns = L.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
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
    """PPO-ptx: batches of the seed pairs' chosen answers for an SFT loss that anchors the policy."""

    def __init__(self, tokenizer, batch_size: int, seed: int, max_length: int = 256, categories: str = "all"):
        from training.data import encode_conversation, load_pairs

        weights = parse_category_weights(categories)
        pairs = [p for p in load_pairs(["seed"]) if "all" in weights or p.category in weights]
        if not pairs:
            raise ValueError(f"--ptx-categories {categories!r}: no seed pairs in these categories "
                             "(known: harmless, helpful, sensitive, all)")
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
        width = max(len(r) for r, _ in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        mask = torch.zeros((len(rows), width - 1), dtype=torch.long)
        for i, (r, p) in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            attn[i, :len(r)] = 1
            mask[i, p - 1:len(r) - 1] = 1  # logits at t predict the answer token t+1
        return ids, attn, mask


def used_columns(attention_mask: torch.Tensor) -> slice:
    """The columns of a mini-batch that are not padding in every row."""
    used = attention_mask.any(0).nonzero()
    return slice(int(used.min()), int(used.max()) + 1)


def _add(stats, key, value):
    stats.setdefault(key, []).append(value)


# ================================================================================================
# 5. Monitors: what the paper says reveals collapse, and the guard that stops a collapsing run
# ================================================================================================
def rollout_metrics(ro: Rollout, ex: Experience, cfg: PPOConfig) -> dict[str, float]:
    mask = ro.response_mask
    lengths = mask.sum(1).float()
    seq_kl = (ex.kl * mask).sum(1)
    nll = -L.masked_mean(ex.old_logp, mask)
    return {
        "reward/score_mean": float(ex.scores.mean()),
        "reward/score_std": float(ex.scores.std()) if len(ex.scores) > 1 else 0.0,
        "reward/normalized_mean": float((ex.rewards * mask).sum(1).mean()),
        "objective/kl": float(seq_kl.mean()),
        "objective/kl_per_token": float(L.masked_mean(ex.kl, mask)),
        "response/length": float(lengths.mean()),
        "response/eos_rate": float(ro.reached_eos.float().mean()),
        "response/perplexity": float(torch.exp(nll)),
        "response/repeated_4gram": float(np.mean([L.repeated_ngram_fraction(t, 4) for t in ro.response_tokens])),
        "policy/entropy": float(L.masked_mean(ex.entropy, mask)),
        "value/explained_variance": L.explained_variance(ex.old_values, ex.returns, mask),
    }


class CollapseGuard:
    """Stops the run when a collapse signal persists for `patience` iterations (PPO-max §5)."""

    # "Answers pinned at max length" is a collapse only if the starting policy clearly ended its answers
    # on its own: its share of cut answers must be this far below --max-length-pinned. A model whose
    # answers mostly run past --response-length already (a short limit) cannot show this collapse, and
    # a few-sample estimate of its EOS rate would make the signal fire on noise.
    PINNED_START_MARGIN = 0.15

    def __init__(self, cfg: PPOConfig):
        self.cfg, self.streak, self.start_eos_rate = cfg, {}, None

    def set_start(self, eos_rate: float) -> None:
        """The starting policy's EOS rate, measured on the validation prompts before training."""
        self.start_eos_rate = eos_rate

    def signals(self, m: dict[str, float]) -> dict[str, bool]:
        c = self.cfg
        if self.start_eos_rate is None:  # no baseline given: the first iteration's answers stand in
            self.start_eos_rate = m["response/eos_rate"]
        out = {}
        if "val/kl_exact" in m:  # measured at validation iterations only; between them the KL streak stands
            out[f"KL {m['val/kl_exact']:.2f} nats per answer (exact, on sampled validation answers) above the "
                f"bound {c.kl_bound}"] = m["val/kl_exact"] > c.kl_bound
        return out | {
            f"answers pinned at max length (EOS rate {m['response/eos_rate']:.2f}, "
            f"{self.start_eos_rate:.2f} at the start)":
                1 - m["response/eos_rate"] >= c.max_length_pinned
                and 1 - self.start_eos_rate <= c.max_length_pinned - self.PINNED_START_MARGIN,
            f"perplexity collapsed to {m['response/perplexity']:.3f}": m["response/perplexity"] < c.min_perplexity,
            f"repeated 4-grams {m['response/repeated_4gram']:.2f}": m["response/repeated_4gram"] > c.max_repeated_ngrams,
        }

    def check(self, m: dict[str, float]) -> str | None:
        for name, firing in self.signals(m).items():
            key = name.split(" ")[0]
            self.streak[key] = self.streak.get(key, 0) + 1 if firing else 0
            patience = self.cfg.kl_guard_validations if key == "KL" else self.cfg.guard_patience
            if self.streak[key] >= patience:
                return name
        return None

    def state_dict(self):
        return {"streak": dict(self.streak), "start_eos_rate": self.start_eos_rate}

    def load_state_dict(self, s):
        self.streak, self.start_eos_rate = dict(s["streak"]), s["start_eos_rate"]


@torch.no_grad()
def validate(roles: ActorCriticRoles, tokenizer, val_prompts: list[ValPrompt], cfg: PPOConfig) -> dict[str, float]:
    """Held-out prompts. Greedy answers: mean reward-model score, and how often the policy refuses harmful
    prompts (good) and the other prompts (over-refusal), by the project's refusal judge (rlhf_demo.refusal.detector's
    default, which reads the request too: an answer that swaps it for a harmless one is a refusal). Answers SAMPLED from the policy
    (temperature 1, no nucleus; the same seeds at every validation): ``val/kl_exact``, the exact KL to the
    reference in nats per answer (:func:`exact_answer_kl`), which the KL bound and the collapse guard use."""
    ro = rollout(roles, tokenizer, [v.messages for v in val_prompts], cfg, seed=0, greedy=True)
    ids, attn = ro.input_ids, ro.attention_mask
    scores, _ = roles.score_and_trunk(conversations(ro), ids, attn)
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


VAL_KL_SEED = 9_176_011  # the KL samples' seeds: the same draws at every validation (common random numbers)


@torch.no_grad()
def exact_answer_kl(roles: ActorCriticRoles, tokenizer, val_prompts: list[ValPrompt], cfg: PPOConfig) -> float:
    """Mean over the validation prompts of the exact KL(policy ‖ reference) of one answer sampled from the
    policy at temperature 1 (:mod:`rlhf_demo.kl`: the full next-token distributions at every answer position,
    summed; never negative), in nats per answer. Seeded by ``--seed``: every validation draws alike."""
    from dataclasses import replace

    from rlhf_demo.kl import answer_kl

    ro = rollout(roles, tokenizer, [v.messages for v in val_prompts], replace(cfg, temperature=1.0, top_p=1.0),
                 seed=cfg.seed * 1_000_003 + VAL_KL_SEED)
    ids, attn, mask = ro.input_ids, ro.attention_mask, ro.response_mask
    per_token = roles.token_kl(ids, attn, mask, trunk=roles.trunk(ids, attn))
    return float(answer_kl(per_token, mask).mean())


def selection_key(m: dict, cfg: PPOConfig) -> tuple[float, float]:
    """How good a validated checkpoint is (higher is better): --best-metric, then the validation score."""
    return (m[cfg.best_metric], m["val/score"])


# ================================================================================================
# 6. Logging and plots
# ================================================================================================
class MetricsLog:
    def __init__(self, run_dir: Path, report_to: str):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """On resume, forget metrics logged after the checkpoint (they will be logged again)."""
        rows = [r for r in self.rows() if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))


PLOTTED = ["reward/score_mean", "objective/kl", "response/length", "response/perplexity", "policy/entropy",
           "policy/clipfrac", "value/loss", "value/explained_variance", "policy/approx_kl", "val/score",
           "val/refusal_sensitive", "val/kl_exact"]


def plot_curves(rows: list[dict], out: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 6, figsize=(24, 7))
    for ax, key in zip(axes.flat, PLOTTED):
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle("PPO-max training curves")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


# ================================================================================================
# 7. The loop
# ================================================================================================
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: PPOConfig, settings: Settings, stop_after: int | None = None) -> dict:
    """Run PPO-max; returns a summary. ``stop_after`` (tests) stops after that many iterations, as a crash would."""
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    settings = dist.init(settings)  # under accelerate launch: join the other processes (else a no-op)
    rank, world = dist.rank(), dist.world_size()
    seed_everything(cfg.seed)  # the same on every rank: the same initial adapters
    toy_reward = ToyReward.parse(cfg.reward_model)  # toy:WORD (a bad WORD is refused here)
    if toy_reward and cfg.publish:
        raise ValueError(f"--reward-model {cfg.reward_model} is a diagnosis reward: a policy trained on it is not "
                         "published; add --no-publish")
    for name in (cfg.name, None if toy_reward else cfg.reward_model, cfg.init_policy):
        if name:
            check_name(name)  # a bad version name (e.g. '../x') is refused now, not after the run
    registry = Registry(settings.versions_dir)
    target = Registry(Path(cfg.publish_dir), package_dir=None) if cfg.publish_dir else registry  # where to publish
    if cfg.publish and cfg.name:  # fail now, not after the run
        target.check_new_name(cfg.name, hint="pass another --name (e.g. the next rlhf-vN) or --no-publish")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else settings.data_dir / "runs" / time.strftime("ppo-%Y%m%d-%H%M%S")
    run_dir = dist.broadcast_object(run_dir)  # one run dir for all ranks (named by the main rank's clock)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        (run_dir / "config.json").write_text(json.dumps({"ppo": asdict(cfg), "base_model": settings.base_model},
                                                        indent=2))

    train_prompts, val_prompts = prompt_pool(cfg, settings)
    roles = ActorCriticRoles.build(settings, registry, cfg)
    tokenizer = roles.tokenizer
    policy_opt = torch.optim.AdamW(roles.params("policy"), lr=cfg.policy_lr, eps=1e-5)
    critic_opt = torch.optim.AdamW(roles.params("critic"), lr=cfg.critic_lr, eps=1e-5)
    dist.broadcast_params_(roles.params("policy") + roles.params("critic"))  # data parallel: one start for all
    moments = L.RunningMoments()
    sampler = PromptSampler(train_prompts, cfg.seed)
    guard = CollapseGuard(cfg)
    update_rng = torch.Generator().manual_seed(cfg.seed)  # mini-batch order; the same on every rank (own data)
    ptx = PtxData(tokenizer, cfg.mini_batch_size, cfg.seed, categories=cfg.ptx_categories) if cfg.ptx_coef else None
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
                               "sampler": sampler.state_dict(), "guard": guard.state_dict(), "best": dict(best),
                               "baseline": dict(baseline),
                               "update_rng": update_rng.get_state()})

    if cfg.resume:
        try:
            ck = load_checkpoint(run_dir, model=roles.model, modules=roles.modules(), optimizer=policy_opt)
        except CheckpointError as exc:
            print(f"[ppo] --resume: {exc}; starting fresh", file=sys.stderr)
        else:
            start, s = ck.step, ck.extra
            critic_opt.load_state_dict(s["critic_opt"])
            moments.load_state_dict(s["moments"])
            sampler.load_state_dict(s["sampler"])
            guard.load_state_dict(s["guard"])
            best.update(s["best"])
            baseline.update(s.get("baseline", {}))
            update_rng.set_state(s["update_rng"])
            if dist.is_main():
                log.truncate_after(start)
            print(f"[ppo] resumed from iteration {start} ({ck.path})", file=sys.stderr)

    if not baseline and dist.is_main():  # PPO-max keeps the best checkpoint, judged against where it started
        baseline = validate(roles, tokenizer, val_prompts, cfg)
        log.log(0, baseline)
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
        # data parallel: every rank draws the same global batch and answers its own share, with its own seeds
        prompts = dist.shard(sampler.next(cfg.rollout_batch_size * world), rank, world)
        ro = rollout(roles, tokenizer, prompts, cfg,
                     seed=cfg.seed * 100003 + step * 1009 + rank * cfg.rollout_batch_size)
        ex = make_experience(roles, ro, cfg, moments)
        metrics = rollout_metrics(ro, ex, cfg)
        warmup = step <= cfg.critic_warmup  # PPO-max: critic warm-up before the policy moves
        ptx_batch = ptx.batch(step) if ptx else None
        metrics.update(ppo_update(roles, ro, ex, cfg, policy_opt, critic_opt, not warmup, update_rng, ptx_batch))
        metrics["time/iteration_s"] = time.time() - t0
        metrics = dist.all_reduce_mean(metrics)  # data parallel: every rank logs and guards on the same averages
        if (step % cfg.eval_every == 0 or step == cfg.iterations) and dist.is_main():
            metrics.update(validate(roles, tokenizer, val_prompts, cfg))
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
        final = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}
        card = {"kind": "policy", "parent": cfg.init_policy, "base_model": settings.base_model,
                "reward_model": roles.reward_name,
                "reward_model_sha256": roles.scorer.card.get("files", {}).get("adapter_model.safetensors"),
                "trainer": "training.ppo (PPO-max)", "config": asdict(cfg),
                "data": {"prompts": cfg.prompts, "train_prompts": len(train_prompts), "val_prompts": len(val_prompts)},
                "best_step": best["step"], "metrics": {"best": best, "final": final}, "stopped": stopped,
                "command": "python -m training.ppo " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("ppo.py") else None}
        if world > 1:  # --rollout-batch-size was per process
            card["data_parallel"] = summary["data_parallel"]
        version = target.publish(run_dir / "best", card, name=cfg.name or None)
        summary["published"] = version.name
        print(f"[ppo] published {version.name} (best iteration {best['step']}) at {version.path}", file=sys.stderr)
    elif cfg.publish:
        print(f"[ppo] nothing published: no checkpoint within the KL bound {cfg.kl_bound} and the over-refusal "
              f"bound (+{cfg.max_safe_refusal_rise:.0%} refusals of non-harmful validation prompts)", file=sys.stderr)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    dist.barrier()  # release the other ranks
    return summary


def main(argv: list[str] | None = None) -> int:
    from rlhf_demo.base_model import BaseModelError
    from rlhf_demo.registry import RegistryError
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
