"""Side by side: the greedy answers of a policy version and of a PPO checkpoint to a run's readout prompts, each scored
by the training reward (total and safety term) — which answers lost or gained reward, and why.

    python scripts/readout_answers.py --run-config docs/rlhf-v1/run9/config.json \
        --checkpoint runs/runs/ppo-run9/checkpoints/step-0000024 --before dpo-v1 --reward reward-v3 \
        --out docs/rlhf-v1/run8/readout_answers_dpo-v1_vs_run9.txt

The readout prompts are the ones ``training.ppo`` draws (``random.Random(seed).sample`` of the run's training pool,
``--train-readout-prompts`` of them). 48 new tokens, greedy, as PPO's readout. A diagnostic: it trains nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-config", type=Path, required=True, help="the PPO run's config.json")
    ap.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint folder with adapter-policy.*")
    ap.add_argument("--before", default="dpo-v1", help="the policy version to compare with (the run's start)")
    ap.add_argument("--reward", required=True, help="the reward version the run trained against")
    ap.add_argument("--out", type=Path, required=True, help="text file to write")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = ap.parse_args(argv)
    import numpy as np
    import torch

    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.config import Settings
    from rlhf_demo.generation import GenerationParams, PolicyServer, Request
    from rlhf_demo.registry import Registry, StagedRegistry
    from rlhf_demo.safety_term import SafetyTerm
    from rlhf_demo.scoring import load_reward_scorer, resolve_reward_version
    from training.ppo_config import PPOConfig
    from training.ppo_data import prompt_pool

    torch.set_num_threads(a.threads)
    run = json.loads(a.run_config.read_text())["ppo"]
    settings = Settings()
    cfg = PPOConfig(prompts=run["prompts"], val_prompts=run["val_prompts"], seed=run["seed"],
                    max_prompts=run.get("max_prompts", 0))
    train, _ = prompt_pool(cfg, settings)
    readout = random.Random(cfg.seed).sample(train, min(run.get("train_readout_prompts", 32), len(train)))
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoint as a staged (unpublished) version, evaluation only
        after = "checkpoint"
        d = Path(tmp) / after
        d.mkdir()
        shutil.copy(a.checkpoint / "adapter-policy.safetensors", d / "adapter_model.safetensors")
        shutil.copy(a.checkpoint / "adapter-policy.json", d / "adapter_config.json")
        model, tok = load_base_model(settings)
        registry = StagedRegistry(Registry(settings.versions_dir), after, d, {"kind": "policy"})
        server = PolicyServer(model, tok, registry)
        params = GenerationParams(max_new_tokens=48, greedy=True, seed=0)
        answers = {}
        for policy in (a.before, after):
            streams = server.submit([Request(m, policy, params) for m in readout])
            answers[policy] = [st.result(timeout=900) for st in streams]
        server.close()
    scorer = load_reward_scorer(settings, a.reward, model=model, tokenizer=tok, allow_judge=True)  # one base in memory
    term = SafetyTerm.load(resolve_reward_version(settings, a.reward).path)
    prompts = [next(m["content"] for m in reversed(c) if m["role"] == "user") for c in readout]
    scores = {}
    for policy, ans in answers.items():
        total = np.array(scorer.score([c + [{"role": "assistant", "content": x}] for c, x in zip(readout, ans)]))
        safety = term.score(prompts, ans) if term is not None else np.zeros(len(ans))
        scores[policy] = (total, safety)
    h = term.request_harm(prompts) if term is not None else np.full(len(prompts), np.nan)
    lines = [f"# {a.before} vs {a.checkpoint} on {len(readout)} readout prompts; reward {a.reward} (total, safety term)"]
    for i, p in enumerate(prompts):
        lines.append(f"#{i} h={h[i]:.2f} | {p[:90]!r}")
        for policy, label in ((a.before, a.before), (after, "checkpoint")):
            t, s = scores[policy][0][i], scores[policy][1][i]
            lines.append(f"   {label} total={t:+.2f} term={s:+.2f} :: {answers[policy][i][:150]!r}")
    for policy, label in ((a.before, a.before), (after, "checkpoint")):
        lines.append(f"{label} mean total {scores[policy][0].mean():.3f} mean term {scores[policy][1].mean():.3f}")
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
