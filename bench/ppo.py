"""PPO speed and memory: ours (``training.ppo``, PPO-max on one base) against TRL's last PPO trainer.

    # trl 1.12.0 is the last release with PPO (``trl.experimental.ppo.PPOTrainer``); it goes into its
    # own directory so .venv's trl (1.16.0, used by bench/reward_model.py) stays as it is. The script
    # runs this itself when the directory is missing:
    .venv/bin/pip install --no-deps --target .cache/bench/trl-1.12.0 trl==1.12.0
    .venv/bin/python bench/ppo.py --data-dir .cache/test-data          # [--iterations 3] [--trl full,lora]

(trl 1.12.0's own dependencies — accelerate, datasets, transformers, peft, pandas … — are already in
the venv, hence ``--no-deps``.)

Each trainer runs in its own subprocess (``--worker``), so each one's peak RSS is its own:
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end, and the resident set right after its
models are loaded ("models-loaded RSS": weights only, before any optimizer state or activations).
One run uses the SAME base model (embedded SmolLM2-135M-Instruct, base weights in ``--dtype``), the
same training prompts (the seed PPO prompts minus ours' held-out validation prompts), the same reward
model, rollout batch size, mini-batch size, PPO epochs, response length, sampling temperature, KL
coefficient/estimator, clip ranges, GAE and threads. The defaults are the shipped ``rlhf-v0`` recipe
(``PPO_V0_ARGS`` in the Makefile), minus the critic warm-up and the SFT (ptx) loss, which TRL does not
have: every timed iteration of both is a full rollout + policy and critic update.

* **ours**: ``training.ppo.train`` — one base model; policy and critic are LoRA adapters on the top
  ``--lora-layers`` layers, the reference is the base with adapters disabled, the reward model is
  the ``reward-v0`` adapter + score head. Seconds per iteration are ``time/iteration_s`` from its
  ``metrics.jsonl`` (rollout + experience + update; validation and checkpoints excluded); CPU seconds
  per phase come from timers wrapped around ``training.ppo``'s ``rollout`` (of which ``decode_batch``),
  ``make_experience`` and ``ppo_update`` (observe only).
* **TRL full**: ``PPOTrainer`` as TRL documents it — four separate models: a trainable policy, a
  frozen reference copy, a reward model and a trainable value model, each an
  ``AutoModelFor…`` of the base in ``--dtype``.
* **TRL + LoRA**: the same with ``peft_config`` (TRL's LoRA option: the same rank/alpha/targets/layers
  as ours) — the policy is LoRA, the reference is the policy with its adapter disabled; the reward
  and value models stay separate full models (TRL's API has no LoRA for them).
  Seconds per iteration come from a ``TrainerCallback`` (time between ``on_step_end`` calls).

Reward model for TRL: the ``reward-v0`` LoRA adapter merged into a copy of the base as an
``AutoModelForSequenceClassification`` whose ``score`` is our score head (weight AND bias: the
``Linear`` is replaced by one with a bias). The script checks that it gives the same scores as ours
on seed conversations before timing anything. TRL's value model starts from the same merged model
(TRL's examples initialise it from the reward model; PPO-max does the same for our critic).

Honest-setting notes (also written to bench/RESULTS.md): SmolLM2's tokenizer uses ``<|im_end|>`` as
both EOS and pad, and TRL's PPO finds padding by comparing token ids with the pad id — so, as in
TRL's own ``examples/scripts/ppo/ppo.py``, the TRL side gets a separate ``[PAD]`` token (TRL masks
padding before every forward, so the embedding matrix needs no new row). TRL's
``gradient_checkpointing=True`` default is never applied by ``PPOTrainer`` (it does not call
``Trainer.__init__``); the table records what was in effect. Timing: the median of ``--iterations``
iterations after ``--warmup`` warm-up iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import installed_trl_version  # noqa: E402

TRL_VERSION = "1.12.0"
DEFAULT_TRL_PATH = ROOT / ".cache" / "bench" / f"trl-{TRL_VERSION}"
TRL_VARIANTS = ("full", "lora")
# training.ppo's phases, timed (CPU seconds) per iteration in ours' worker: the rollout (of which decoding the answers
# is decode_batch), the experience (reward scores, old/reference log-probs, values, GAE) and the PPO update
PHASES = ("rollout", "decode_batch", "make_experience", "ppo_update")


def build_parser() -> argparse.ArgumentParser:
    from rlhf_demo.config import add_settings_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=5,
                   help="timed PPO iterations per trainer; the median is reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before them (default: %(default)s)")
    p.add_argument("--rollout-batch-size", type=int, default=8, help="prompts per iteration (default: %(default)s)")
    p.add_argument("--mini-batch-size", type=int, default=4, help="rollouts per gradient step (default: %(default)s)")
    p.add_argument("--ppo-epochs", type=int, default=2, help="epochs over the rollouts per iteration (default: %(default)s)")
    p.add_argument("--response-length", type=int, default=48, help="longest sampled answer, tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature (default: %(default)s)")
    p.add_argument("--kl-coef", type=float, default=0.05, help="per-token KL penalty (default: %(default)s)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank, ours and TRL+LoRA (default: %(default)s)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default: %(default)s)")
    p.add_argument("--lora-layers", type=int, default=8,
                   help="LoRA on the top N decoder layers, ours and TRL+LoRA (0 = all) (default: %(default)s)")
    p.add_argument("--reward-model", default="reward-v0", help="reward version both optimise (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per trainer (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--trl", default="full,lora",
                   help="TRL rows, comma-separated: full (4 full models), lora (peft_config on the policy), "
                        "or none (default: %(default)s)")
    p.add_argument("--trl-path", type=Path, default=DEFAULT_TRL_PATH,
                   help=f"directory holding trl=={TRL_VERSION} (pip --target); installed there if missing "
                        "(default: %(default)s)")
    p.add_argument("--skip-ours", action="store_true", help="only run the TRL rows")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not update bench/RESULTS.md")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep the workers' logs, metrics and the merged reward model here (default: a temp dir, removed)")
    p.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    add_settings_args(p)
    p.set_defaults(data_dir=Path(".cache/test-data"), dtype="bfloat16", device="cpu")
    return p


def parse_trl_variants(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in TRL_VARIANTS]
    if bad or not names:
        raise SystemExit(f"error: --trl {text!r}: use a comma-separated subset of {', '.join(TRL_VARIANTS)}, or none")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set of this process (VmRSS), MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


# ---------------------------------------------------------------------------------------------
# trl 1.12.0 in its own directory
# ---------------------------------------------------------------------------------------------
def ensure_trl(path: Path) -> None:
    version = installed_trl_version(path)
    if version == TRL_VERSION and (path / "trl" / "experimental" / "ppo" / "ppo_trainer.py").is_file():
        return
    if version is not None:
        what = f"trl {version}, not {TRL_VERSION}" if version != TRL_VERSION else "an incomplete trl (no PPOTrainer)"
        raise SystemExit(f"error: {path} holds {what}; remove it or pass another --trl-path")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(path), f"trl=={TRL_VERSION}"]
    print(f"[bench/ppo] trl=={TRL_VERSION} (the last release with PPOTrainer) is not in {path}; installing it there "
          f"(.venv's own trl is left alone):\n  {' '.join(cmd)}", file=sys.stderr, flush=True)
    if subprocess.call(cmd) != 0:
        raise SystemExit(f"error: could not install trl=={TRL_VERSION}; run the command above by hand, or pass "
                         "--trl none to time ours only")


# ---------------------------------------------------------------------------------------------
# the reward model for TRL: reward-v0 merged into an AutoModelForSequenceClassification
# ---------------------------------------------------------------------------------------------
def export_reward_model(settings, reward_name: str, out_dir: Path) -> dict:
    """Merge the reward adapter into a copy of the base (fp32) and save it as a sequence classifier.

    The score head's bias goes to ``score_bias.json`` (transformers' ``score`` Linear has none; the
    TRL worker puts a biased Linear in its place). Returns the check against ours' scorer."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from rlhf_demo.base_model import load_tokenizer, resolve_base_model
    from training.data import encode_conversation, load_pairs
    from training.roles import HEAD_FILE, resolve_reward_version

    version = resolve_reward_version(settings, reward_name)
    base_dir = resolve_base_model(settings)
    tokenizer = load_tokenizer(settings)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(version.path)).merge_and_unload()
    head = load_file(str(version.path / HEAD_FILE))
    with torch.no_grad():
        model.score.weight.copy_(head["weight"])
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    bias = float(head["bias"][0])
    (out_dir / "score_bias.json").write_text(json.dumps({"bias": bias, "reward_model": version.name}))

    # same scores as ours? (fp32, a few seed conversations, scored at their last token)
    from training.roles import load_reward_scorer

    convs = [p.conversation(w) for p in load_pairs(["seed"])[:4] for w in ("chosen", "rejected")]
    ours = load_reward_scorer(settings, version.name).score(convs)
    theirs = []
    with torch.no_grad():
        for c in convs:
            ids = torch.tensor([encode_conversation(tokenizer, c)])
            hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
            theirs.append(float(model.score(hidden)) + bias)
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    del model, ours
    import gc

    gc.collect()
    return {"reward_model": version.name, "max_abs_score_diff": diff, "n": len(convs)}


# ---------------------------------------------------------------------------------------------
# worker: ours
# ---------------------------------------------------------------------------------------------
def ours_config(spec: dict, run_dir: Path):
    from training.ppo import PPOConfig

    total = spec["warmup"] + spec["iterations"]
    return PPOConfig(
        prompts=["seed"], reward_model=spec["reward_model"], publish=False, run_dir=str(run_dir),
        iterations=total + 1, rollout_batch_size=spec["rollout_batch_size"], mini_batch_size=spec["mini_batch_size"],
        ppo_epochs=spec["ppo_epochs"], response_length=spec["response_length"], temperature=spec["temperature"],
        kl_coef=spec["kl_coef"], lora_r=spec["lora_r"], lora_alpha=spec["lora_alpha"],
        lora_layers=spec["lora_layers"], lora_dropout=0.0,
        critic_warmup=0, ptx_coef=0.0,            # TRL has neither: every timed iteration updates policy and critic
        eval_every=10**9, checkpoint_every=10**9, val_prompts=spec["val_prompts"],
        threads=spec["threads"], seed=spec["seed"], report_to="jsonl")


def worker_ours(spec: dict, out: Path) -> dict:
    import torch

    from rlhf_demo.config import Settings
    from rlhf_demo.metrics_log import read_metrics
    from training import actor_critic, ppo

    torch.set_num_threads(spec["threads"])
    settings = Settings(**spec["settings"])
    loaded = {}
    build = actor_critic.ActorCriticRoles.build.__func__

    def build_and_measure(cls, *a, **kw):  # observe only: RSS once the one base + adapters are loaded
        roles = build(cls, *a, **kw)
        loaded.update(models_rss_mb=rss_mb(), peak_at_load_mb=peak_rss_mb())
        return roles

    actor_critic.ActorCriticRoles.build = classmethod(build_and_measure)
    cpu_stamps: list[float] = []  # process CPU time whenever a step's metrics are logged (step 0 = before the loop)
    phase_cpu: dict[str, float] = {}  # CPU seconds per phase of the iteration being run (observe only)
    phases: list[dict[str, float]] = []  # one entry per logged iteration
    for name in PHASES:
        real = getattr(ppo, name, None)
        if real is None:
            continue

        def timed(*a, _real=real, _name=name, **kw):
            t = time.process_time()
            try:
                return _real(*a, **kw)
            finally:
                phase_cpu[_name] = phase_cpu.get(_name, 0.0) + time.process_time() - t

        setattr(ppo, name, timed)
    log = getattr(getattr(ppo, "MetricsLog", None), "log", None)
    if log is not None:
        def log_and_stamp(self, step, metrics):
            cpu_stamps.append(time.process_time())
            if step > 0:  # step 0 is the validation of the starting policy, before the loop
                phases.append(dict(phase_cpu))
            phase_cpu.clear()
            return log(self, step, metrics)

        ppo.MetricsLog.log = log_and_stamp
    run_dir = out / "ours-run"
    if run_dir.exists():  # a kept --work-dir: start afresh (metrics.jsonl is appended to)
        import shutil

        shutil.rmtree(run_dir)
    cfg = ours_config(spec, run_dir)
    total = spec["warmup"] + spec["iterations"]
    # cfg.iterations is one more than this: the run stops (as after a crash) once `total` iterations are logged,
    # before the end-of-run validation, checkpoint and plots, none of which TRL does here either
    ppo.train(cfg, settings, stop_after=total)
    rows = read_metrics(run_dir / "metrics.jsonl")
    times = [r["time/iteration_s"] for r in rows if "time/iteration_s" in r]
    if len(times) != total:
        raise RuntimeError(f"expected {total} iterations in metrics.jsonl, found {len(times)}")
    cpu = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])] if len(cpu_stamps) == total + 1 else None
    return {"iteration_s": times, "iteration_cpu_s": cpu, "phase_cpu_s": phases, "peak_rss_mb": peak_rss_mb(),
            **loaded,
            "score_mean": [r.get("reward/score_mean") for r in rows if "time/iteration_s" in r],
            "response_length": [r.get("response/length") for r in rows if "time/iteration_s" in r]}


# ---------------------------------------------------------------------------------------------
# worker: TRL (runs with trl 1.12.0 first on sys.path)
# ---------------------------------------------------------------------------------------------
def worker_trl(spec: dict, out: Path) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"the TRL worker imported trl {trl.__version__} from {trl.__file__}, not {TRL_VERSION}")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    variant = spec["variant"]
    dtype = getattr(torch, spec["dtype"])
    base_dir, reward_dir = spec["base_dir"], spec["reward_dir"]

    # As TRL's examples/scripts/ppo/ppo.py: left padding and a pad token distinct from EOS.
    tokenizer = AutoTokenizer.from_pretrained(base_dir, padding_side="left")
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})

    def scalar_model():
        model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, dtype=dtype)
        bias = json.loads((Path(reward_dir) / "score_bias.json").read_text())["bias"]
        head = torch.nn.Linear(model.score.in_features, 1, bias=True, dtype=dtype)
        with torch.no_grad():
            head.weight.copy_(model.score.weight)
            head.bias.fill_(bias)
        model.score = head
        return model

    policy = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    ref_policy = None if variant == "lora" else AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    reward_model = scalar_model().requires_grad_(False)
    value_model = scalar_model()
    models_rss, peak_at_load = rss_mb(), peak_rss_mb()

    peft_config = None
    if variant == "lora":
        from peft import LoraConfig

        n = policy.config.num_hidden_layers
        layers = list(range(n - spec["lora_layers"], n)) if spec["lora_layers"] else None
        peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                                 target_modules=list(spec["lora_targets"]), layers_to_transform=layers,
                                 bias="none", task_type="CAUSAL_LM")
    data = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    total = spec["warmup"] + spec["iterations"]
    bs = spec["rollout_batch_size"]
    if bs % spec["mini_batch_size"]:
        raise ValueError("--rollout-batch-size must be a multiple of --mini-batch-size")
    config = PPOConfig(
        output_dir=str(out / "trl-run"), report_to="none", save_strategy="no", use_cpu=spec["device"] == "cpu",
        # one rollout batch per iteration, split into mini-batches; one optimizer step per mini-batch
        per_device_train_batch_size=bs, gradient_accumulation_steps=1, num_mini_batches=bs // spec["mini_batch_size"],
        num_ppo_epochs=spec["ppo_epochs"], total_episodes=bs * total, local_rollout_forward_batch_size=bs,
        response_length=spec["response_length"], temperature=spec["temperature"], stop_token="eos",
        missing_eos_penalty=1.0, kl_coef=spec["kl_coef"], kl_estimator="k1", cliprange=0.2, cliprange_value=0.2,
        gamma=1.0, lam=0.95, learning_rate=2e-4 if variant == "lora" else 3e-6,
        bf16=spec["dtype"] == "bfloat16", num_sample_generations=0, logging_steps=1, disable_tqdm=True,
        seed=spec["seed"], data_seed=spec["seed"], dataloader_num_workers=0)

    stamps: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kw):  # once per PPO iteration (rollout + update)
            stamps.append((time.perf_counter(), time.process_time()))

    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=data, value_model=value_model,
                         eval_dataset=data, callbacks=[Timer()], peft_config=peft_config)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    gc_on = bool(getattr(trainer.policy_model, "is_gradient_checkpointing", False))
    trainer.train()
    times = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    if len(times) != total:
        raise RuntimeError(f"expected {total} PPO iterations, timed {len(times)}")
    scores = [h.get("objective/scores") for h in trainer.state.log_history if "objective/scores" in h]
    return {"iteration_s": times, "iteration_cpu_s": cpu, "peak_rss_mb": peak_rss_mb(), "models_rss_mb": models_rss,
            "peak_at_load_mb": peak_at_load, "trainable_params": trainable, "gradient_checkpointing": gc_on,
            "score_mean": scores, "trl_version": trl.__version__}


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------
def run_worker(kind: str, spec: dict, tmp: Path, label: str, threads: int, trl_path: Path | None = None) -> dict:
    work = tmp / label.replace(" ", "-").replace("+", "")
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRL_EXPERIMENTAL_SILENCE="1", PYTHONUNBUFFERED="1")
    paths = ([str(trl_path)] if trl_path else []) + [str(ROOT)]  # trl 1.12.0 shadows .venv's trl, in that process only
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    log = work / "worker.log"
    print(f"[bench/ppo] {label}: {spec['warmup']} warm-up + {spec['iterations']} timed iterations "
          f"(log: {log}) …", file=sys.stderr, flush=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path)],
                             stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    result_path = work / "result.json"
    if rc != 0 or not result_path.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"error: the {label} worker failed (exit {rc}); last lines of {log}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["wall_s"] = time.perf_counter() - t
    print(f"[bench/ppo] {label}: done in {result['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return result


def worker_main(args) -> int:
    spec = json.loads(args.spec.read_text())
    out = args.spec.parent
    result = worker_ours(spec, out) if args.worker == "ours" else worker_trl(spec, out)
    (out / "result.json").write_text(json.dumps(result))
    return 0


def summarize(result: dict, warmup: int) -> dict:
    timed = result["iteration_s"][warmup:]
    cpu = (result.get("iteration_cpu_s") or [])[warmup:]
    phases = (result.get("phase_cpu_s") or [])[warmup:]
    return {"s_per_it": statistics.median(timed), "min": min(timed), "max": max(timed),
            "cpu_per_it": statistics.median(cpu) if cpu else None,
            "phases": {k: statistics.median(p.get(k, 0.0) for p in phases) for k in PHASES} if phases else None,
            "peak": result["peak_rss_mb"], "models": result["models_rss_mb"]}


def phase_line(phases: dict[str, float] | None) -> str:
    """``rollout 2.3 (decoding 2.2), experience 1.4, update 2.2``: median CPU seconds per phase."""
    if not phases:
        return ""
    return (f"rollout {phases['rollout']:.2f} (decoding {phases['decode_batch']:.2f}), "
            f"experience {phases['make_experience']:.2f}, update {phases['ppo_update']:.2f}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.iterations < 1 or args.warmup < 0:
        raise SystemExit("error: --iterations must be >= 1 and --warmup >= 0")
    variants = parse_trl_variants(args.trl)
    if args.skip_ours and not variants:
        raise SystemExit("error: nothing to run (--skip-ours with --trl none)")
    if args.rollout_batch_size % args.mini_batch_size:
        raise SystemExit("error: --rollout-batch-size must be a multiple of --mini-batch-size (TRL needs it)")
    import dataclasses

    import torch

    from bench.results import load_note, machine, update_section
    from rlhf_demo.base_model import load_tokenizer, resolve_base_model
    from rlhf_demo.config import settings_from_args
    from rlhf_demo.generation import build_prompt_ids
    from training.ppo import prompt_pool
    from training.roles import DEFAULT_TARGETS

    settings = settings_from_args(args)
    if settings.resolved_device() != "cpu" or settings.load_in_4bit:
        raise SystemExit("error: bench/ppo.py measures CPU time and process RSS: run it with --device cpu and "
                         "without --load-in-4bit")
    torch.set_num_threads(args.threads)
    if variants:
        ensure_trl(args.trl_path)
    base_dir = Path(resolve_base_model(settings)).resolve()  # converts the embedded model once
    tokenizer = load_tokenizer(settings)
    common = {k: getattr(args, k) for k in ("iterations", "warmup", "rollout_batch_size", "mini_batch_size",
                                            "ppo_epochs", "response_length", "temperature", "kl_coef", "lora_r",
                                            "lora_alpha", "lora_layers", "reward_model", "threads", "seed")}
    common.update(val_prompts=16, dtype=str(settings.resolved_dtype()).removeprefix("torch."),
                  device=settings.resolved_device())
    # the same training pool for everyone: ours' pool (seed prompts minus its held-out validation prompts)
    ours_cfg = ours_config(common, Path("unused"))
    train_prompts, _ = prompt_pool(ours_cfg, settings)
    prompt_ids = [build_prompt_ids(tokenizer, m, max_prompt_tokens=256) for m in train_prompts]
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}
    check = None
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        tmp = Path(tmp)
        if args.work_dir:
            tmp = args.work_dir.resolve()
            tmp.mkdir(parents=True, exist_ok=True)
        if variants:
            reward_dir = tmp / "reward-merged"
            check = export_reward_model(dataclasses.replace(settings, dtype="float32"), args.reward_model, reward_dir)
            print(f"[bench/ppo] {check['reward_model']} merged for TRL: max |score difference| vs ours "
                  f"{check['max_abs_score_diff']:.2e} on {check['n']} seed conversations", file=sys.stderr)
            if check["max_abs_score_diff"] > 1e-3:
                raise SystemExit("error: the merged reward model does not reproduce ours' scores")
            for variant in variants:
                spec = dict(common, variant=variant, base_dir=str(base_dir), reward_dir=str(reward_dir),
                            prompt_ids=prompt_ids, lora_targets=list(DEFAULT_TARGETS))
                label = (f"TRL PPOTrainer full (trl {TRL_VERSION})" if variant == "full" else
                         f"TRL PPOTrainer + LoRA policy, full value model (trl {TRL_VERSION})")
                results[label] = run_worker("trl", spec, tmp, label, args.threads, trl_path=args.trl_path)
        if not args.skip_ours:
            spec = dict(common, settings={f.name: str(v.resolve()) if isinstance(v, Path) else v
                                          for f in dataclasses.fields(settings)
                                          for v in [getattr(settings, f.name)]})
            results["ours (training.ppo, PPO-max)"] = run_worker("ours", spec, tmp, "ours", args.threads)
    load_after = os.getloadavg()[0]

    rows = {name: summarize(r, args.warmup) for name, r in results.items()}
    lines = ["| trainer | s/iteration (median) | min–max | CPU s/iteration | peak RSS MB | models-loaded RSS MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in rows.items():
        cpu = f"{s['cpu_per_it']:.1f}" if s["cpu_per_it"] is not None else "–"
        lines.append(f"| {name} | {s['s_per_it']:.1f} | {s['min']:.1f}–{s['max']:.1f} | {cpu} | {s['peak']:,.0f} | "
                     f"{s['models']:,.0f} |")
    table = "\n".join(lines)
    ours_name = "ours (training.ppo, PPO-max)"
    ratio_lines = []
    if ours_name in rows:
        o = rows[ours_name]
        for name, s in rows.items():
            if name == ours_name:
                continue
            speed, mem = s["s_per_it"] / o["s_per_it"], o["peak"] / s["peak"]
            cpu = (f"; {s['cpu_per_it'] / o['cpu_per_it']:.2f}× by CPU time"
                   if s["cpu_per_it"] and o["cpu_per_it"] else "")
            ratio_lines.append(f"**vs {name}: ours is {speed:.2f}× faster per iteration{cpu} "
                               f"(target ≥ 2×) and uses {mem:.2f}× its peak memory (target ≤ 0.6×)**")
    print(table)
    for line in ratio_lines:
        print(line)
    ours_phases = phase_line(rows[ours_name]["phases"]) if ours_name in rows else ""
    if ours_phases:
        print(f"ours per phase, median CPU s/iteration: {ours_phases}")
    trl_notes, load_peaks, scores = [], [], []
    for name, r in results.items():
        if name.startswith("TRL"):
            trl_notes.append(f"{name}: {r['trainable_params'] / 1e6:.1f} M trainable parameters, gradient "
                             f"checkpointing {'on' if r['gradient_checkpointing'] else 'off (PPOTrainer never enables it)'}")
        load_peaks.append(f"{name.split(' (')[0]} {r['peak_at_load_mb']:,.0f}")
        got = [x for x in r.get("score_mean") or [] if x is not None]
        if got:
            scores.append(f"{name.split(' (')[0]} {statistics.mean(got):+.2f}")
    if args.write:
        cmd = "python bench/ppo.py " + " ".join(sys.argv[1:] if argv is None else argv)
        lora_where = f"the top {args.lora_layers}" if args.lora_layers else "all"
        settings_line = (
            f"{len(prompt_ids)} seed PPO prompts (the same pool for all), rollout batch {args.rollout_batch_size}, "
            f"mini-batch {args.mini_batch_size}, {args.ppo_epochs} PPO epochs, answers up to {args.response_length} "
            f"tokens sampled at temperature {args.temperature}, KL coef {args.kl_coef} (k1), base weights "
            f"{settings.dtype}, {args.threads} thread(s) per trainer, reward model {args.reward_model}. LoRA (ours and "
            f"TRL + LoRA): r={args.lora_r}/alpha={args.lora_alpha} on attention+MLP of {lora_where} layers. "
            f"Ours without critic warm-up and ptx, so every iteration updates policy and critic as TRL's do. "
            f"Median of {args.iterations} iterations after {args.warmup} warm-up; each trainer in its own process "
            f"(peak = `ru_maxrss` of that process; models-loaded = its RSS once its models are loaded).")
        notes = [
            f"TRL's reward and value models: {args.reward_model}'s adapter merged into a copy of the base as "
            f"`AutoModelForSequenceClassification` with our score head (weight and bias); its scores match ours to "
            f"{check['max_abs_score_diff']:.1e} (fp32)." if check else "",
            f"Every TRL model loads with {settings.dtype} weights like ours' base, with `bf16={settings.dtype == 'bfloat16'}` "
            "(TRL's PPO example loads float32 weights: this is its lighter and faster option). TRL + LoRA puts LoRA on "
            "the policy only (its reference is the policy with the adapter off); its value model stays a full trainable "
            "model, because `peft_config` covers the policy only. TRL's learning rate (3e-6 full, 2e-4 LoRA) does not "
            "change the cost per iteration.",
            "TRL gets a `[PAD]` token distinct from EOS, as in TRL's own PPO example (SmolLM2 pads with "
            "`<|im_end|>`, which TRL's PPO would mask inside the prompts). No other change to TRL.",
            "; ".join(trl_notes) + ".",
            f"Ours per phase (median CPU s per iteration): {ours_phases}." if ours_phases else "",
            "Peak RSS includes model loading (peak while loading, MB: " + ", ".join(load_peaks) + ") and, for ours, "
            "the validation of the starting policy on its 16 held-out prompts that `training.ppo` runs before "
            "iteration 1 (not timed; TRL does no validation here).",
            "Mean reward-model score per iteration: " + ", ".join(scores) + ". Same reward model, different input: "
            "TRL scores the raw token ids at the last generated token (mid-answer when an answer is cut at the "
            "length limit); ours scores the chat-templated conversation at its end-of-turn token, as the reward "
            "model was trained, reading it from the rollout's shared frozen layers plus a 1-2 token continuation "
            "(`ActorCriticRoles.score_and_trunk`; same scores as re-encoding the text, up to bf16 rounding).",
            load_note(load_before, load_after, args.threads) + ".",
        ]
        body = (f"## PPO: ours vs TRL PPOTrainer (`bench/ppo.py`)\n\n"
                f"`{cmd.strip()}` — {machine()}.\n\n{settings_line}\n\n{table}\n\n" + "\n\n".join(ratio_lines) +
                "\n\n" + "\n".join(f"- {n}" for n in notes if n) + "\n")
        update_section("ppo", body)
        print("updated bench/RESULTS.md (section ppo)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
