"""Offline critic study for run 21's set-up (reward-v0 + --label-safety 3, from dpo-v1, balanced pool, 4 answers per
prompt, RLOO): why does the monitor critic of run 23 explain ~nothing, and what would let it learn?

  python docs/rlhf-v1/run23/critic_study.py collect OUT.pt N       # N batches of 32 rollouts (8 prompts x 4) of dpo-v1
  python docs/rlhf-v1/run23/critic_study.py fit OUT.pt NAME k=v ... # warm up a fresh critic on batches H..N-1 in turn

`fit` trains only the critic (the policy stays dpo-v1, so every configuration sees the SAME rollouts), one PPO
iteration's critic update per batch (--ppo-epochs x mini-batches), and prints the in-loop explained variance (the
critic's values on each batch *before* it trains on it, as `value/explained_variance` is logged) and the explained
variance on the first H batches, held out (H = 3, never trained on), against the Monte-Carlo return of the score
without the prompt baseline (training/ppo.py `make_experience`, --advantage rloo). k=v sets PPOConfig fields
(value_clip=0, critic_lr=1e-3, ...). Also prints how much of the return's variance a perfect per-prompt constant
would explain on the held-out batches (the ceiling of a critic that reads the prompt only, at the first answer token).
"""
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from rlhf_demo.config import Settings  # noqa: E402
from rlhf_demo.registry import Registry  # noqa: E402
from training import losses as L  # noqa: E402
from training import ppo as P  # noqa: E402
from training import prompt_baseline as PB  # noqa: E402
from training.actor_critic import ActorCriticRoles  # noqa: E402
from training.label_safety import attach  # noqa: E402

HELD = 3
settings = Settings(data_dir=ROOT / "runs", device="cpu", dtype="bfloat16")
BASE = dict(reward_model="reward-v0", label_safety=3.0, init_policy="dpo-v1",
            prompts=["mix:harmful=288,risky=144,ordinary=144", "seed"], rollout_batch_size=32, samples_per_prompt=4,
            mini_batch_size=8, ppo_epochs=4, response_length=64, lora_layers=8, critic_lr=3e-4, kl_coef=0.0,
            eos_penalty=0.0, temperature=0.7, advantage="rloo", val_prompts=48, seed=0, publish=False)


def cast(k, v):
    d = P.PPOConfig.__dataclass_fields__[k].default
    return (v.lower() in ("1", "true")) if isinstance(d, bool) else type(d)(v)


def build(cfg):
    torch.manual_seed(0)
    train, _, kinds = P.labelled_pool(cfg, settings)
    roles = ActorCriticRoles.build(settings, Registry(settings.versions_dir), cfg)
    attach(roles, train, kinds, cfg.label_safety)
    roles.logit_temperature = cfg.temperature
    return roles, train


def prompt_ceiling(batches, roles, cfg, moments):
    """EV of the best per-prompt constant (each group's mean return at every token) on the given batches."""
    num = den = 0.0
    for ro in batches:
        m2 = L.RunningMoments()
        m2.load_state_dict(moments.state_dict())
        ex = P.make_experience(roles, ro, cfg, L.RunningMoments(), m2)
        mask = ro.response_mask.bool()
        first = ex.returns[torch.arange(len(ro.prompts)), mask.float().argmax(1)]  # the return from the first token
        group = first.reshape(-1, cfg.samples_per_prompt).mean(1, keepdim=True).expand(-1, cfg.samples_per_prompt)
        pred = group.reshape(-1, 1).expand_as(ex.returns)
        num += float(((ex.returns - pred)[mask] ** 2).sum())
        den += float(((ex.returns - ex.returns[mask].mean())[mask] ** 2).sum())
    return 1 - num / den


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
    if sys.argv[1] == "collect":
        out, n = sys.argv[2], int(sys.argv[3])
        cfg = P.PPOConfig(**BASE)
        roles, train = build(cfg)
        sampler = P.PromptSampler(train, 0)
        batches = []
        for i in range(n):
            t = time.time()
            prompts = PB.repeat_prompts(sampler.next(cfg.rollout_batch_size // cfg.samples_per_prompt),
                                        cfg.samples_per_prompt)
            batches.append(P.rollout(roles, roles.tokenizer, prompts, cfg, seed=1000 * i))
            torch.save(batches, out)
            print(f"batch {i} {time.time() - t:.0f}s", flush=True)
    else:
        data, name = sys.argv[2], sys.argv[3]
        kv = dict(a.split("=", 1) for a in sys.argv[4:])
        cfg = P.PPOConfig(**{**BASE, **{k: cast(k, v) for k, v in kv.items()}})
        batches = torch.load(data, weights_only=False)
        roles, _ = build(cfg)
        critic_opt = torch.optim.AdamW(roles.params("critic"), lr=cfg.critic_lr, eps=1e-5)
        moments, value_moments = L.RunningMoments(), L.RunningMoments()
        rng = torch.Generator().manual_seed(0)
        evs, t = [], time.time()
        for ro in batches[HELD:]:
            ex = P.make_experience(roles, ro, cfg, moments, value_moments)
            evs.append(L.explained_variance(ex.old_values, ex.returns, ro.response_mask))
            P.ppo_update(roles, ro, ex, cfg, None, critic_opt, False, rng)
        held = []
        for ro in batches[:HELD]:
            m2 = L.RunningMoments()
            m2.load_state_dict(value_moments.state_dict())
            ex = P.make_experience(roles, ro, cfg, L.RunningMoments(), m2)
            held.append(L.explained_variance(ex.old_values, ex.returns, ro.response_mask))
        ceiling = prompt_ceiling(batches[:HELD], roles, cfg, value_moments)
        print(f"{name}: {time.time() - t:.0f}s in-loop EV " + " ".join(f"{e:.2f}" for e in evs)
              + f" | held-out EV {' '.join(f'{h:.2f}' for h in held)} (mean {sum(held) / len(held):.2f})"
              + f" | per-prompt-constant ceiling {ceiling:.2f}", flush=True)
