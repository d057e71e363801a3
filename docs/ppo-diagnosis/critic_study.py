"""Offline critic study on the embedded model + reward-v0 (the policy is frozen during warm-up, so every
critic config sees the SAME rollouts).

  collect OUT N            : N batches of 16 SFT rollouts on seed training prompts -> OUT (torch.save)
  fit DATA NAME k=v ...    : warm up a critic on batches 1..N-1 in turn (one PPO warm-up iteration each);
                             prints the in-loop EV (old values on each new batch) and EV on held-out batch 0
"""
import json, sys, time, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)
from pathlib import Path
from dataclasses import replace
from rlhf_demo.config import Settings
from rlhf_demo.registry import Registry
from training import ppo as P, losses as L
from training.actor_critic import ActorCriticRoles

settings = Settings(data_dir=ROOT / "runs", device="cpu", dtype="bfloat16")
BASE = dict(reward_model="reward-v0", prompts=["seed"], rollout_batch_size=16, mini_batch_size=8, ppo_epochs=2,
            response_length=48, lora_layers=8, kl_coef=0.05, ptx_coef=0, val_prompts=16, seed=0, publish=False)

def cast(k, v):
    d = P.PPOConfig.__dataclass_fields__[k].default
    return (v.lower() in ("1", "true")) if isinstance(d, bool) else type(d)(v)

if sys.argv[1] == "collect":
    out, n = sys.argv[2], int(sys.argv[3])
    cfg = P.PPOConfig(**BASE)
    train, _ = P.prompt_pool(cfg, settings)
    roles = ActorCriticRoles.build(settings, Registry(settings.versions_dir), cfg)
    sampler = P.PromptSampler(train, 0)
    batches = []
    for i in range(n):
        t = time.time()
        ro = P.rollout(roles, roles.tokenizer, sampler.next(16), cfg, seed=1000 * i)
        batches.append(ro)
        torch.save(batches, out)
        print(f"batch {i} {time.time()-t:.0f}s", flush=True)
else:
    data, name = sys.argv[2], sys.argv[3]
    kv = dict(a.split("=", 1) for a in sys.argv[4:])
    iters = int(kv.pop("iters", 0))
    cfg = P.PPOConfig(**BASE, **{k: cast(k, v) for k, v in kv.items()})
    batches = torch.load(data, weights_only=False)
    roles = ActorCriticRoles.build(settings, Registry(settings.versions_dir), cfg)
    torch.manual_seed(0)
    critic_opt = torch.optim.AdamW(roles.params("critic"), lr=cfg.critic_lr, eps=1e-5)
    moments = L.RunningMoments()
    rng = torch.Generator().manual_seed(0)
    train_b = batches[1:][: iters or None]
    evs, held = [], []
    t = time.time()
    for i, ro in enumerate(train_b):
        ex = P.make_experience(roles, ro, cfg, moments)
        evs.append(L.explained_variance(ex.old_values, ex.returns, ro.response_mask))
        P.ppo_update(roles, ro, ex, cfg, None, critic_opt, False, rng)
    m2 = L.RunningMoments(); m2.load_state_dict(moments.state_dict())
    ex0 = P.make_experience(roles, batches[0], cfg, m2)
    held = L.explained_variance(ex0.old_values, ex0.returns, batches[0].response_mask)
    print(f"{name}: {time.time()-t:.0f}s in-loop EV " + " ".join(f"{e:.2f}" for e in evs) + f" | held-out EV after {len(train_b)} its: {held:.2f}", flush=True)
