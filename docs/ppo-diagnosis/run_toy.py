"""python run_toy.py NAME key=value ... : a PPO run on the few-word tiny model with toy:blue; prints a summary."""
import json, sys, time, torch, math
from pathlib import Path
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))
from rlhf_demo.config import Settings
from training.ppo import PPOConfig, train
import rlhf_demo.refusal.detector as _D
_orig = _D.is_refusal
_D.is_refusal = lambda r, *a, **k: _orig(r, "rules-v1")  # the toy answers need no refusal judge: the fast rules

name, kv = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
model = kv.pop("model", str(ROOT / "runs/ppo-diagnosis/fewword-model"))
base = dict(reward_model="toy:blue", iterations=30, rollout_batch_size=16, mini_batch_size=8, response_length=8,
            val_prompts=4, eval_every=1000, checkpoint_every=1000, lora_r=4, lora_alpha=8, kl_bound=1e9,
            run_dir=str(ROOT / f"runs/ppo-diagnosis/toy/{name}"), publish=False, seed=0, threads=1,
            guard_patience=1000, max_repeated_ngrams=1.1, min_perplexity=0.0, max_length_pinned=1.1)
import dataclasses
types = {f.name: f.type for f in dataclasses.fields(PPOConfig)}
for k, v in kv.items():
    d = PPOConfig.__dataclass_fields__[k].default
    base[k] = (v.lower() in ("1", "true")) if isinstance(d, bool) else type(d)(v) if not isinstance(d, list) else v.split(",")
import shutil; shutil.rmtree(base["run_dir"], ignore_errors=True)
settings = Settings(data_dir=ROOT / "runs/ppo-diagnosis/toy-data", base_model=model, device="cpu", dtype="float32")
t = time.time()
train(PPOConfig(**base), settings)
rows = [json.loads(l) for l in open(Path(base["run_dir"]) / "metrics.jsonl")][1:]
r = [x["reward/score_mean"] for x in rows]
ev = [x["value/explained_variance"] for x in rows]
ak = [x.get("policy/approx_kl", 0) for x in rows]
n = len(r)
f = lambda xs: sum(xs) / len(xs)
print(f"{name}: {time.time()-t:.0f}s reward first5 {f(r[:5]):.2f} last5 {f(r[-5:]):.2f} | EV first5 {f(ev[:5]):.2f} last5 {f(ev[-5:]):.2f} | approx_kl max {max(ak):.1e} | kl last {rows[-1]['objective/kl']:.2f}")
print("  reward:", " ".join(f"{x:.2f}" for x in r))
print("  EV:    ", " ".join(f"{x:.2f}" for x in ev))
