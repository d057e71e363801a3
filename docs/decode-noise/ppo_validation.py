"""What --val-dtype float32 costs, and what it changes, in the shipped PPO recipe's validation.

    python docs/decode-noise/ppo_validation.py --threads 2 > docs/decode-noise/ppo_validation.json

Builds the actor-critic roles exactly as `make train-ppo` does at iteration 0 (PPO_V1_ARGS: dpo-v1's policy adapter,
reward-v2, LoRA on the top 8 layers, bfloat16, 48 val-role validation prompts), then runs training.ppo.validate and
train_readout twice in each dtype (bfloat16 as trained = --val-dtype same; float32 = the default), timing each and
keeping the greedy validation answers. Reported: seconds per validation, how many of the 48 answers the two dtypes
write differently, and each dtype's validation metrics. Nothing is trained; no reported suite is read.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RECIPE = ("--reward-model reward-v2 --init-policy dpo-v1 --prompts mix:harmful=288,risky=144,ordinary=144 seed "
          "--iterations 30 --rollout-batch-size 16 --mini-batch-size 8 --ppo-epochs 4 --response-length 48 "
          "--lora-layers 8 --policy-lr 2e-4 --critic-lr 3e-4 --critic-warmup 6 --kl-coef 0.05 --ptx-coef 0 "
          "--eos-penalty -1 --val-prompts 48 --eval-every 10 --best-metric val/refusal_margin --seed 0 "
          "--dtype bfloat16 --samples-per-prompt 4 --prompt-baseline loo --temperature 0.7 --no-publish")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (measure on a quiet machine)")
    p.add_argument("--repeats", type=int, default=2, help="validations per dtype (the first one warms up)")
    args = p.parse_args(argv)
    import torch

    from rlhf_demo.flags import parse_config
    from rlhf_demo.precision import computing_in
    from rlhf_demo.registry import Registry
    from training import ppo
    from training.actor_critic import ActorCriticRoles
    from training.ppo_config import PPOConfig
    from training.ppo_data import prompt_pool

    torch.set_num_threads(args.threads)
    cfg, settings = parse_config(PPOConfig, "ppo_validation", None, shlex.split(RECIPE) + ["--threads", str(args.threads)])
    _, val_prompts = prompt_pool(cfg, settings)
    roles = ActorCriticRoles.build(settings, Registry(settings.versions_dir), cfg)
    roles.logit_temperature = cfg.temperature
    answers, out = {}, {"recipe": RECIPE, "threads": args.threads, "validation_prompts": len(val_prompts),
                        "torch": torch.__version__, "dtypes": {}}
    real_rollout = ppo.rollout

    def keeping(*a, **kw):  # keep the greedy validation answers (the first rollout of validate)
        ro = real_rollout(*a, **kw)
        if kw.get("greedy", True) and len(ro.responses) == len(val_prompts) and "greedy" not in keeping.seen:
            keeping.seen["greedy"] = ro.responses
        return ro

    ppo.rollout = keeping
    for name, dtype in (("bfloat16 (same)", None), ("float32", torch.float32)):
        times = []
        for _ in range(args.repeats):
            keeping.seen = {}
            t0 = time.perf_counter()
            with computing_in(roles.model, dtype):
                metrics = ppo.validate(roles, roles.tokenizer, val_prompts, cfg)
            times.append(time.perf_counter() - t0)
        answers[name] = keeping.seen["greedy"]
        out["dtypes"][name] = {"validate_s": [round(t, 1) for t in times],
                               "metrics": {k: round(v, 4) for k, v in metrics.items()}}
    a, b = answers.values()
    out["answers_that_differ"] = sum(x != y for x, y in zip(a, b))
    s_bf, s_fp = (min(v["validate_s"]) for v in out["dtypes"].values())
    out["float32_over_bfloat16_time"] = round(s_fp / s_bf, 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
