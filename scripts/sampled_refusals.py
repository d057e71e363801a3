"""Do a policy's *sampled* answers to harmful training prompts contain refusals? (the PPO exploration check)

PPO can only reinforce what its rollouts sample. This samples ``--samples`` answers at ``--temperature`` to
``--prompts`` harmful train-role prompts of ``--prompts mix seed`` (seeded choice), from SFT and/or a PPO checkpoint,
and prints per answer: the prompt-harm probe ``h``, the refusal classifier's ``c`` (reward-v2's training signal)
and the default refusal judge's verdict, then the means. Used in docs/rlhf-v1/run3/README.md:

    python scripts/sampled_refusals.py --checkpoint runs/ppo-rlhf-v1-run3/checkpoints/step-0000055 --temperature 1
    python scripts/sampled_refusals.py --policies sft --temperature 0.7 --prompts 6
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def adapter_dir(checkpoint: Path, tmp: Path) -> Path:
    """A PPO checkpoint (``adapter-policy.*``) or a published version (``adapter_config.json``) as a PEFT folder."""
    if (checkpoint / "adapter_config.json").is_file():
        return checkpoint
    if not (checkpoint / "adapter-policy.json").is_file():
        raise SystemExit(f"error: {checkpoint}: neither adapter_config.json nor adapter-policy.json")
    shutil.copyfile(checkpoint / "adapter-policy.json", tmp / "adapter_config.json")
    shutil.copyfile(checkpoint / "adapter-policy.safetensors", tmp / "adapter_model.safetensors")
    return tmp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="PPO checkpoint or policy version folder")
    p.add_argument("--policies", default="sft,policy", help="which to sample: sft, policy or both (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=3, help="harmful prompts (default: %(default)s)")
    p.add_argument("--samples", type=int, default=4, help="answers per prompt (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="prompt choice seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = p.parse_args(argv)
    which = [w for w in args.policies.split(",") if w]
    if "policy" in which and args.checkpoint is None:
        raise SystemExit("error: --policies policy needs --checkpoint")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from peft import PeftModel

    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.config import Settings
    from rlhf_demo.refusal.detector import judge_refusals
    from rlhf_demo.safety_term import SafetyTerm
    from training.data import load_prompts
    from training.roles import resolve_reward_version

    settings = Settings()
    harmful = [it for it in load_prompts(["mix", "seed"], settings=settings) if it.category == "harmful"]
    pick = random.Random(args.seed).sample(harmful, min(args.prompts, len(harmful)))
    model, tok = load_base_model(settings)
    term = SafetyTerm.load(resolve_reward_version(settings, "reward-v1").path)  # its prompt-harm probe h
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dir(args.checkpoint, Path(tmp))), adapter_name="policy")
        for name in which:
            prompts, answers = [], []
            for it in pick:
                enc = tok.apply_chat_template(it.messages, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)
                for s in range(args.samples):
                    torch.manual_seed(s)
                    kw = dict(do_sample=True, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
                    if name == "sft" and args.checkpoint is not None:
                        with model.disable_adapter():
                            out = model.generate(**enc, **kw)
                    else:
                        out = model.generate(**enc, **kw)
                    prompts.append(it.messages[-1]["content"])
                    answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
            c = term.refusal_probability(prompts, answers)
            h = term.request_harm(prompts)
            judged = [v.refusal for v in judge_refusals(answers, prompts)]
            print(f"===== {name} (temperature {args.temperature}): classifier c mean {c.mean():.3f}, judge refusals "
                  f"{int(np.sum(judged))}/{len(judged)}, h mean {h.mean():.2f}")
            for q, a, cc, hh, jj in zip(prompts, answers, c, h, judged):
                print(f"h={hh:.2f} c={cc:.2f} judge={int(jj)} | {q[:50]!r} -> {a[:110]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
