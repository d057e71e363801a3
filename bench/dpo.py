"""DPO training speed and memory: ours (``training.dpo``) against TRL's ``DPOTrainer`` (trl 1.16.0).

    .venv/bin/python bench/dpo.py --data-dir .cache/test-data --threads 1     # [--pairs 64] [--rounds 2]

trl 1.16.0 is a bench-only dependency (NOT in requirements.txt): like bench/reward_model.py, the script
installs it, if missing, into ``--trl-path`` (default ``.cache/bench/trl-1.16.0``, the directory that
bench/reward_model.py uses) with ``pip install --no-deps --target``; the TRL worker process puts that
directory first on its path. .venv is left alone.

One run, both trainers on the SAME base (embedded SmolLM2-135M-Instruct, bfloat16 weights + bfloat16
autocast, LoRA weights float32 on both sides), the same training pairs (``--data``, default the seed
pairs; pairs whose longer conversation exceeds ``--max-length`` are left out, so neither side truncates
anything), the same held-out pairs (split by prompt), the same batch size, LoRA (rank, alpha, target
modules, layers), learning rate, cosine schedule, AdamW (``optim="adamw_torch"``),
gradient clip 1.0, beta, sigmoid loss, seed and torch threads, for one epoch. The cosine schedule has no
warm-up on either side, so the learning rate is the same at every step (transformers' warm-up starts
at lr 0, ours' at lr/warm-up steps: with warm-up, TRL's first step would not move the weights). Reference policy on both
sides: the base with the adapter disabled (ours always; TRL when the model is a peft model and
``ref_model`` is None) — neither keeps a second copy of the model.

TRL's settings that differ from its defaults, chosen to match ours (each has a flag that restores TRL's
default; the values in effect are read back from the trainer and written to the table):

* gradient checkpointing OFF (DPOConfig's default is ON: slower, lighter); ``--trl-gradient-checkpointing``.
* length-grouped batches (``train_sampling_strategy="group_by_length"`` over a ``length`` column: prompt +
  longer answer, in tokens), as ours groups by length; ``--no-trl-group-by-length`` for random batches.
* ``precompute_ref_log_probs=True`` (batch ``--eval-batch-size``), as ours computes the reference
  log-probs once per pair before training; ``--no-trl-precompute-ref`` for TRL's default (a reference
  forward pass in every step).

Each trainer runs in its own subprocess (``--worker``), so each one's peak RSS is its own
(``ru_maxrss`` of that process, model loading included). With ``--rounds N`` the trainers alternate
(TRL, ours, ours, TRL, …) so that load from other jobs hits both alike; pairs/s are medians, peak RSS
the largest over rounds. Timing covers training only — ours: from its first frozen-layer/reference pass
to its last optimizer step (``training.dpo.train``'s own loop, observed by wrapping its helpers);
TRL: its reference-log-prob precompute (run inside ``DPOTrainer.__init__``) plus ``trainer.train()``.
Model loading and tokenising are excluded on both sides.

Held-out implicit-reward accuracy is measured ONCE for both, by the same code (``training.dpo_logps.
evaluate``, ties count one half) in the parent process: the base with each side's trained adapter
loaded (TRL's saved with ``save_pretrained``), on the same held-out pairs with the same beta. Each
side's own number (ours' end-of-run validation; TRL's ``eval_rewards/accuracies``, ties count zero) is
printed next to it as a cross-check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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

TRL_VERSION = "1.16.0"
DEFAULT_TRL_PATH = ROOT / ".cache" / "bench" / f"trl-{TRL_VERSION}"
OURS = "ours (training.dpo)"
TRL = f"TRL DPOTrainer (trl {TRL_VERSION})"


def build_parser() -> argparse.ArgumentParser:
    from rlhf_demo.config import add_settings_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", metavar="SOURCE",
                   help="preference source, repeatable, as training.dpo's --data (default: seed)")
    p.add_argument("--pairs", type=int, default=64, help="training pairs, one epoch (default: %(default)s)")
    p.add_argument("--eval-pairs", type=int, default=48,
                   help="held-out pairs (prompts never trained on) for the accuracy check (default: %(default)s)")
    p.add_argument("--holdout-fraction", type=float, default=0.3,
                   help="share of prompts held out before taking --pairs/--eval-pairs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step, both (default: %(default)s)")
    p.add_argument("--eval-batch-size", type=int, default=16,
                   help="pairs per reference/evaluation batch, both (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=256,
                   help="tokens per conversation; longer pairs are left out (default: %(default)s)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta, training and held-out (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, default=2e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: %(default)s)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default: %(default)s)")
    p.add_argument("--lora-layers", type=int, default=8,
                   help="LoRA on the last N decoder layers (0 = all) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per trainer (default: %(default)s)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="float32 weights and compute for both (default: bfloat16 weights + autocast)")
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="run TRL with gradient checkpointing ON, DPOConfig's own default (default: off, as ours)")
    p.add_argument("--trl-group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="give TRL length-grouped batches, as ours has (default: on; --no-trl-group-by-length for "
                        "TRL's default, random batches)")
    p.add_argument("--trl-precompute-ref", action=argparse.BooleanOptionalAction, default=True,
                   help="TRL's precompute_ref_log_probs, as ours does (default: on; --no-trl-precompute-ref for "
                        "TRL's default, a reference forward pass every step)")
    p.add_argument("--trl-path", type=Path, default=DEFAULT_TRL_PATH,
                   help=f"directory holding trl=={TRL_VERSION} (pip --target); installed there if missing "
                        "(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the trainers this many rounds (TRL, ours, ours, TRL, …) (default: %(default)s)")
    p.add_argument("--skip-trl", action="store_true", help="only run ours (e.g. without trl installed)")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not update bench/RESULTS.md")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep the workers' logs, data files and adapters here (default: a temp dir, removed)")
    p.add_argument("--worker", choices=("ours", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    add_settings_args(p)
    p.set_defaults(data_dir=Path(".cache/test-data"), device="cpu")
    return p


# ---------------------------------------------------------------------------------------------
# pure parts
# ---------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def trl_length(prefix: int, chosen: int, rejected: int) -> int:
    """TRL's padded width of a pair (prompt + the longer answer): the length TRL's batches are grouped by."""
    return prefix + max(chosen, rejected)


def take_pairs(train, held, n_train: int, n_eval: int):
    """The first ``n_train`` training and ``n_eval`` held-out pairs; an error when there are too few."""
    if len(train) < n_train or len(held) < n_eval:
        raise SystemExit(f"error: only {len(train)} training / {len(held)} held-out pairs fit --max-length; "
                         f"asked for {n_train} / {n_eval}")
    return train[:n_train], held[:n_eval]


def config_field(fields: set[str], *names: str) -> str:
    """The first of ``names`` that training.dpo.DPOConfig has (its field names may change)."""
    for n in names:
        if n in fields:
            return n
    raise SystemExit(f"error: training.dpo.DPOConfig has none of the fields {names}")


def ours_config_kwargs(spec: dict, fields: set[str], train_file: str, eval_file: str, run_dir: str) -> dict:
    """training.dpo.DPOConfig arguments matching the TRL run of ``spec`` (no publishing, no checkpoints)."""
    steps = math.ceil(spec["pairs"] / spec["batch_size"])
    kw = dict(data=[f"bench={train_file}"], eval_data=[f"heldout={eval_file}"], validation_fraction=0.0,
              max_length=spec["max_length"], loss_type="sigmoid", beta=spec["beta"], label_smoothing=0.0,
              lora_r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
              lora_layers=spec["lora_layers"] or None, cache_frozen_layers=True, gradient_checkpointing=False,
              bf16=spec["bf16"], learning_rate=spec["learning_rate"], weight_decay=0.0, lr_scheduler="cosine",
              warmup_ratio=0.0, max_steps=steps, batch_size=spec["batch_size"], grad_accumulation=1,
              max_grad_norm=1.0, group_by_length=True, seed=spec["seed"], run_dir=Path(run_dir), save_steps=0,
              logging_steps=steps, eval_steps=0, eval_at_start=False, eval_batch_size=spec["eval_batch_size"],
              report_to=["jsonl"], progress=False, publish=False)
    kw[config_field(fields, "threads", "num_threads")] = spec["threads"]
    unknown = set(kw) - fields
    if unknown:
        raise SystemExit(f"error: training.dpo.DPOConfig has no fields {sorted(unknown)}; update bench/dpo.py")
    return kw


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per trainer: pairs/s (wall and CPU, medians over rounds), the largest peak RSS, wall seconds per round."""
    out = {}
    for name, rs in runs.items():
        out[name] = {"pairs_per_s": statistics.median(r["pairs"] / r["wall_s"] for r in rs),
                     "cpu_pairs_per_s": statistics.median(r["pairs"] / r["cpu_s"] for r in rs),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                     "models_rss_mb": max(r["models_rss_mb"] for r in rs),
                     "walls": [r["wall_s"] for r in rs], "pairs": rs[0]["pairs"], "steps": rs[0]["steps"],
                     "own_accuracy": rs[-1].get("own_accuracy")}
    return out


def ratios(rows: dict[str, dict]) -> dict[str, float] | None:
    """ours / TRL: pairs/s (wall, CPU) and peak RSS; None without both rows."""
    if OURS not in rows or TRL not in rows:
        return None
    o, t = rows[OURS], rows[TRL]
    return {"speed": o["pairs_per_s"] / t["pairs_per_s"], "cpu_speed": o["cpu_pairs_per_s"] / t["cpu_pairs_per_s"],
            "memory": o["peak_rss_mb"] / t["peak_rss_mb"]}


def verdict(r: dict[str, float], acc_ours: float, acc_trl: float, n: int) -> str:
    """One line against the issue's targets (≥ 1.5× pairs/s, ≤ 0.7× peak memory, equal held-out accuracy).

    "Equal" accuracy: the two 95% Wilson intervals (n held-out pairs) overlap."""
    from rlhf_demo.stats import wilson_interval

    speed = "met" if r["speed"] >= 1.5 else "MISSED"
    mem = "met" if r["memory"] <= 0.7 else "MISSED"
    lo_o, hi_o = wilson_interval(round(acc_ours * n), n)
    lo_t, hi_t = wilson_interval(round(acc_trl * n), n)
    diff = acc_ours - acc_trl
    if lo_o <= hi_t and lo_t <= hi_o:
        acc = "the 95% Wilson intervals overlap: equal within the noise of this sample"
    else:
        acc = "the 95% Wilson intervals do not overlap: " + ("ours higher" if diff > 0 else "ours LOWER")
    return (f"**ours / TRL: {r['speed']:.2f}× pairs/s (target ≥ 1.5×: {speed}; {r['cpu_speed']:.2f}× by CPU time), "
            f"{r['memory']:.2f}× peak RSS (target ≤ 0.7×: {mem}); held-out accuracy {acc_ours:.3f} "
            f"[{lo_o:.3f}, {hi_o:.3f}] vs {acc_trl:.3f} [{lo_t:.3f}, {hi_t:.3f}] (difference {diff:+.3f} ≈ "
            f"{diff * n:+.1f} of {n} pairs; {acc})**")


def table(rows: dict[str, dict], acc: dict[str, float], n_eval: int) -> str:
    lines = ["| trainer | pairs/s (wall) | pairs/s (CPU time) | held-out accuracy (same evaluator) | "
             "own held-out accuracy | peak RSS MB | models-loaded RSS MB | training s per round |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        own = f"{r['own_accuracy']:.3f}" if r.get("own_accuracy") is not None else "–"
        a = f"{acc[name]:.3f} (n={n_eval})" if name in acc else "–"
        lines.append(f"| {name} | {r['pairs_per_s']:.2f} | {r['cpu_pairs_per_s']:.2f} | {a} | {own} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['models_rss_mb']:,.0f} | "
                     f"{', '.join(f'{w:.0f}' for w in r['walls'])} |")
    return "\n".join(lines)


def trl_settings_line(s: dict) -> str:
    return (f"TRL's settings, read back from its trainer: gradient checkpointing **{'on' if s['gradient_checkpointing'] else 'off'}** "
            f"(DPOConfig's default is on; ours does not checkpoint), `train_sampling_strategy={s['train_sampling_strategy']!r}` "
            f"→ {s['sampler']}{' over the `length` column (prompt + longer answer, tokens)' if s['length_column'] else ''}, "
            f"`precompute_ref_log_probs={s['precompute_ref_log_probs']}` (batch {s['precompute_ref_batch_size']}; ours "
            f"precomputes), reference: {s['reference']}, `bf16={s['bf16']}` with base weights {s['base_dtype']} and LoRA "
            f"weights {s['lora_dtype']}, `optim={s['optim']!r}`, `disable_dropout={s['disable_dropout']}`, "
            f"`loss_type={s['loss_type']}`, beta {s['beta']}, {s['trainable_params']:,} trainable parameters, "
            f"{s['threads']} torch thread(s). TRL runs each pair as two rows (prompt+chosen, prompt+rejected) through "
            f"the whole model; ours packs a pair into one row and runs the frozen bottom layers once per pair.")


def results_body(args, *, cmd: str, started: str, machine_line: str, sources: list[str], n_train: int,
                 n_tokens: int, n_eval: int, runs: dict, rows: dict, evals: dict, text: str, line: str,
                 load: tuple[float, float]) -> str:
    """The bench/RESULTS.md section ``dpo`` (markdown)."""
    margins = ", ".join(f"{n.split(' (')[0]} {e['eval/margin']:+.3f}" for n, e in evals.items())
    precompute = ", ".join(f"{x['precompute_s']:.0f}" for x in runs.get(TRL, []))
    kls = ", ".join(f"{n.split(' (')[0]} {e['eval/kl_token']:.4f}" for n, e in evals.items())
    notes = [
        trl_settings_line(runs[TRL][0]["settings"]) if TRL in runs else "",
        f"Timing: training only (ours: frozen-layer cache + reference log-probs + {rows[OURS]['steps']} steps; TRL: "
        f"its reference precompute ({precompute} s) + `trainer.train()`)."
        if TRL in runs else "",
        "Peak RSS = `ru_maxrss` of each trainer's own process (model loading and each side's own held-out "
        "evaluation included); models-loaded = its RSS right after the base model is loaded.",
        "Held-out accuracy (same evaluator): `training.dpo_logps.evaluate` on the base + each trained adapter, same "
        f"pairs, beta {args.beta}, ties count one half. Held-out implicit-reward margin: {margins}; exact token KL "
        f"to the reference: {kls}. 'Own' accuracy: each trainer's own number (TRL's `eval_rewards/accuracies` "
        "counts ties as wrong). The shared evaluator scores each answer after the longest common token prefix of "
        "the two conversations (ours' packing): where both answers begin with the same tokens, those are not "
        "scored, while TRL trains and scores the whole assistant turn; TRL's own number also compares with "
        "reference log-probs precomputed in other batches. Either may be why TRL's two numbers differ.",
        f"Load average (1 min) {load[0]:.1f} before and {load[1]:.1f} after the run: the machine was not quiet "
        "(other jobs shared its cores), so each trainer got a varying share of a core and wall-clock times are noisy. "
        "'pairs/s (CPU time)' divides by the CPU seconds the trainer's process used in the same window: the "
        "steadier measure on a shared machine.",
    ]
    body = (f"## DPO: ours vs TRL DPOTrainer (`bench/dpo.py`)\n\n"
            f"Command: `{cmd}` — run started {started}; {machine_line}, {args.threads} torch thread(s) per "
            f"trainer; {args.rounds} round(s), trainers alternating (TRL, ours, ours, TRL, …).\n\n"
            f"{n_train} training pairs ({', '.join(sources)}; {n_tokens:,} tokens packed), one epoch "
            f"({rows[OURS]['steps']} steps of {args.batch_size}), max length {args.max_length}, sigmoid DPO loss, "
            f"beta {args.beta}, lr {args.learning_rate} (cosine without warm-up, the same at every step on both sides), LoRA r={args.lora_r}/alpha={args.lora_alpha} "
            f"on attention+MLP of {'the last ' + str(args.lora_layers) if args.lora_layers else 'all'} layers, "
            f"{'bf16 weights + autocast' if args.bf16 else 'fp32'}; {n_eval} held-out pairs (prompts not "
            f"trained on). Reference on both sides: the base with the adapter disabled.\n\n{text}\n\n{line}\n\n"
            + "\n".join(f"- {n}" for n in notes if n) + "\n")
    return body


# ---------------------------------------------------------------------------------------------
# workers (each in its own process)
# ---------------------------------------------------------------------------------------------
def worker_ours(spec: dict, out: Path) -> dict:
    import torch

    import training.dpo as dpo
    from rlhf_demo.config import Settings

    torch.set_num_threads(spec["threads"])
    settings = Settings(**spec["settings"])
    stamps: dict[str, tuple[float, float]] = {}
    loaded: dict[str, float] = {}

    def first_stamp(fn):  # observe only: the time of the first frozen-layer / reference pass
        def wrapped(*a, **kw):
            stamps.setdefault("start", (time.perf_counter(), time.process_time()))
            return fn(*a, **kw)
        return wrapped

    real_load = dpo.load_pair_model

    def load_and_measure(*a, **kw):
        got = real_load(*a, **kw)
        loaded.update(models_rss_mb=rss_mb())
        return got

    dpo.load_pair_model = load_and_measure
    dpo.frozen_cache = first_stamp(dpo.frozen_cache)
    dpo.all_logps = first_stamp(dpo.all_logps)

    def on_step(step, info):
        if step == info["total_steps"]:
            stamps["end"] = (time.perf_counter(), time.process_time())

    fields = {f.name for f in dataclasses.fields(dpo.DPOConfig)}
    config = dpo.DPOConfig(**ours_config_kwargs(spec, fields, spec["train_file"], spec["eval_file"],
                                                str(out / "ours-run")))
    result = dpo.train(config, settings, on_step=on_step, command="bench/dpo.py (ours worker)")
    (s_wall, s_cpu), (e_wall, e_cpu) = stamps["start"], stamps["end"]
    return {"wall_s": e_wall - s_wall, "cpu_s": e_cpu - s_cpu, "train_loop_s": result.metrics.get("train_loop_s"),
            "pairs": result.metrics["train_pairs"], "steps": result.step, "peak_rss_mb": peak_rss_mb(), **loaded,
            "own_accuracy": result.metrics.get("validation", {}).get("eval/accuracy"),
            "adapter_dir": str(result.model_dir)}


def worker_trl(spec: dict, out: Path) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if trl.__version__ != TRL_VERSION:
        raise RuntimeError(f"the TRL worker imported trl {trl.__version__} from {trl.__file__}, not {TRL_VERSION}")
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    dtype = torch.bfloat16 if spec["bf16"] else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(spec["base_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["base_dir"], dtype=dtype)
    models_rss = rss_mb()
    n_layers = model.config.num_hidden_layers
    rows = [json.loads(line) for line in Path(spec["train_file"]).read_text().splitlines() if line.strip()]
    held = [json.loads(line) for line in Path(spec["eval_file"]).read_text().splitlines() if line.strip()]
    keep = ("prompt", "chosen", "rejected")
    ds = Dataset.from_list([{k: r[k] for k in keep} for r in rows])
    if spec["trl_group_by_length"]:
        ds = ds.add_column("length", spec["trl_lengths"])
    eval_ds = Dataset.from_list([{k: r[k] for k in keep} for r in held])
    if spec["trl_group_by_length"]:  # transformers groups the evaluation batches by length too
        eval_ds = eval_ds.add_column("length", spec["trl_eval_lengths"])
    steps = math.ceil(len(rows) / spec["batch_size"])
    config = DPOConfig(
        output_dir=str(out / "trl-run"), per_device_train_batch_size=spec["batch_size"],
        per_device_eval_batch_size=spec["eval_batch_size"], gradient_accumulation_steps=1, max_steps=steps,
        learning_rate=spec["learning_rate"], lr_scheduler_type="cosine", warmup_steps=0,
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, bf16=spec["bf16"], use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=steps, disable_tqdm=True, dataloader_num_workers=0,
        seed=spec["seed"], data_seed=spec["seed"], max_length=spec["max_length"], beta=spec["beta"],
        loss_type=["sigmoid"], label_smoothing=0.0, disable_dropout=True, remove_unused_columns=False,
        precompute_ref_log_probs=spec["trl_precompute_ref"], precompute_ref_batch_size=spec["eval_batch_size"],
        train_sampling_strategy="group_by_length" if spec["trl_group_by_length"] else "random",
        gradient_checkpointing=spec["trl_gradient_checkpointing"])
    layers = list(range(n_layers - spec["lora_layers"], n_layers)) if spec["lora_layers"] else None
    peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0, bias="none",
                             target_modules=list(spec["lora_targets"]), layers_to_transform=layers,
                             task_type="CAUSAL_LM")
    # observe only: time the reference-log-prob precompute of the training set (it runs inside __init__)
    timed: dict[str, float] = {"wall": 0.0, "cpu": 0.0}
    real_precompute = DPOTrainer._precompute_ref_logps

    def precompute(self, dataset, name, batch_size):
        t, c = time.perf_counter(), time.process_time()
        try:
            return real_precompute(self, dataset, name, batch_size)
        finally:
            if name == "train":
                timed["wall"] += time.perf_counter() - t
                timed["cpu"] += time.process_time() - c

    DPOTrainer._precompute_ref_logps = precompute
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=ds, processing_class=tokenizer,
                         peft_config=peft_config)
    sampler = type(trainer._get_train_sampler(trainer.train_dataset)).__name__
    lora = [p for n, p in trainer.model.named_parameters() if "lora_" in n and p.requires_grad]
    used = {
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "model_gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "train_sampling_strategy": trainer.args.train_sampling_strategy, "sampler": sampler,
        "length_column": trainer.args.length_column_name in trainer.train_dataset.column_names,
        "precompute_ref_log_probs": bool(trainer.precompute_ref_logps),
        "precompute_ref_batch_size": trainer.args.precompute_ref_batch_size,
        "reference": ("the base with the adapter disabled (peft model, ref_model=None)" if trainer.ref_model is None
                      else f"a separate {type(trainer.ref_model).__name__}"),
        "bf16": bool(trainer.args.bf16), "base_dtype": str(dtype).removeprefix("torch."),
        "lora_dtype": str(lora[0].dtype).removeprefix("torch.") if lora else "–",
        "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "disable_dropout": bool(trainer.args.disable_dropout), "loss_type": list(trainer.args.loss_type),
        "beta": trainer.args.beta, "trainable_params": sum(p.numel() for p in trainer.model.parameters()
                                                           if p.requires_grad),
        "threads": torch.get_num_threads(), "train_rows_after_trl_filter": len(trainer.train_dataset),
    }
    if spec["trl_group_by_length"] and not (sampler == "LengthGroupedSampler" and used["length_column"]):
        raise RuntimeError(f"TRL was asked for length-grouped batches but runs {used}")
    if used["train_rows_after_trl_filter"] != len(rows):
        raise RuntimeError(f"TRL dropped pairs: {len(rows)} given, {used['train_rows_after_trl_filter']} kept")
    print(f"TRL settings: {used}", flush=True)
    t, c = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - t + timed["wall"], time.process_time() - c + timed["cpu"]
    own = trainer.evaluate(eval_dataset=eval_ds).get("eval_rewards/accuracies")
    peak = peak_rss_mb()  # after TRL's own evaluation, as ours' peak includes its end-of-run validation
    adapter_dir = out / "trl-adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    return {"wall_s": wall, "cpu_s": cpu, "precompute_s": timed["wall"], "pairs": len(rows),
            "steps": int(trainer.state.global_step), "peak_rss_mb": peak, "models_rss_mb": models_rss,
            "own_accuracy": own, "adapter_dir": str(adapter_dir), "settings": used, "trl_version": trl.__version__}


def worker_main(args) -> int:
    spec = json.loads(args.spec.read_text())
    out = args.spec.parent
    result = worker_ours(spec, out) if args.worker == "ours" else worker_trl(spec, out)
    (out / "result.json").write_text(json.dumps(result))
    return 0


def run_worker(kind: str, spec: dict, work: Path, label: str, threads: int, trl_path: Path | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    (work / "result.json").unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    paths = ([str(trl_path)] if trl_path else []) + [str(ROOT)]  # trl 1.16.0 for the TRL worker only
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    log = work / "worker.log"
    print(f"[bench/dpo] {label} … (log: {log})", file=sys.stderr, flush=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path)],
                             stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    result_path = work / "result.json"
    if rc != 0 or not result_path.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"error: the {label} worker failed (exit {rc}); last lines of {log}:\n{tail}")
    result = json.loads(result_path.read_text())
    print(f"[bench/dpo] {label}: {result['pairs'] / result['wall_s']:.2f} pairs/s, peak RSS "
          f"{result['peak_rss_mb']:,.0f} MB (process {time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# held-out accuracy, one evaluator for both
# ---------------------------------------------------------------------------------------------
def held_out_accuracy(settings, args, adapters: dict[str, str], eval_pairs) -> dict[str, dict]:
    import torch

    from rlhf_demo.adapters import load_adapter, set_active_adapter
    from training.dpo import DPOConfig
    from training.dpo_logps import evaluate
    from training.reward_eval import encode_all
    from training.scaffold import load_pair_model

    settings, model, tokenizer = load_pair_model(settings, args.bf16)
    enc = encode_all(tokenizer, eval_pairs, args.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cfg = DPOConfig(beta=args.beta, loss_type="sigmoid", label_smoothing=0.0, bf16=args.bf16,
                    eval_batch_size=args.eval_batch_size)
    out = {}
    for k, (name, path) in enumerate(adapters.items()):
        model = load_adapter(model, Path(path), f"a{k}")
        set_active_adapter(model, f"a{k}")
        out[name] = evaluate(model, enc, cfg, pad_id, torch.device("cpu"))
    return out


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.rounds < 1 or args.pairs < 1 or args.eval_pairs < 1 or args.batch_size < 1:
        raise SystemExit("error: --rounds, --pairs, --eval-pairs and --batch-size must be >= 1")
    import torch

    from bench.results import ensure_trl, machine, update_section
    from rlhf_demo.adapters import DEFAULT_TARGETS
    from rlhf_demo.base_model import load_tokenizer, resolve_base_model
    from rlhf_demo.config import settings_from_args
    from rlhf_demo.generation import encode_conversation
    from training.data import encode_pair, load_pairs, split_by_prompt

    settings = settings_from_args(args)
    if settings.resolved_device() != "cpu" or settings.load_in_4bit:
        raise SystemExit("error: bench/dpo.py measures CPU time and process RSS: run it with --device cpu and "
                         "without --load-in-4bit")
    if args.bf16 and settings.dtype == "auto":
        settings = dataclasses.replace(settings, dtype="bfloat16")
    torch.set_num_threads(args.threads)
    if not args.skip_trl:
        ensure_trl(args.trl_path, TRL_VERSION, "bench/dpo", "pass --skip-trl to time ours only")
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    base_dir = Path(resolve_base_model(settings)).resolve()
    tokenizer = load_tokenizer(settings)
    sources = args.data or ["seed"]
    pairs = load_pairs(sources, settings)
    fits = [p for p in pairs if p.chosen.strip() and p.rejected.strip()
            and max(len(encode_conversation(tokenizer, p.conversation(w))) for w in ("chosen", "rejected"))
            <= args.max_length]
    train_all, held_all = split_by_prompt(fits, args.holdout_fraction, args.seed)
    train_pairs, eval_pairs = take_pairs(train_all, held_all, args.pairs, args.eval_pairs)
    encoded = [encode_pair(tokenizer, p, args.max_length) for p in train_pairs]
    n_tokens = sum(e.length for e in encoded)
    print(f"{len(train_pairs)} training pairs ({n_tokens:,} tokens packed), {len(eval_pairs)} held out "
          f"(of {len(fits)} that fit {args.max_length} tokens); batch {args.batch_size}, LoRA r={args.lora_r} on "
          f"{'the last ' + str(args.lora_layers) if args.lora_layers else 'all'} layers, "
          f"{'bf16' if args.bf16 else 'fp32'}, {args.threads} thread(s)", flush=True)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        tmp = Path(tmp)
        if args.work_dir:
            tmp = args.work_dir.resolve()
            tmp.mkdir(parents=True, exist_ok=True)
        train_file, eval_file = tmp / "train.jsonl", tmp / "heldout.jsonl"
        for path, rows in ((train_file, train_pairs), (eval_file, eval_pairs)):
            path.write_text("".join(json.dumps({k: v for k, v in p.to_trl().items()
                                                if k in ("prompt", "chosen", "rejected")}) + "\n" for p in rows))
        spec = {k: getattr(args, k) for k in ("batch_size", "eval_batch_size", "max_length", "beta", "learning_rate",
                                              "lora_r", "lora_alpha", "lora_layers", "seed", "threads", "bf16",
                                              "trl_gradient_checkpointing", "trl_group_by_length",
                                              "trl_precompute_ref")}
        spec.update(pairs=len(train_pairs), train_file=str(train_file), eval_file=str(eval_file),
                    base_dir=str(base_dir), lora_targets=list(DEFAULT_TARGETS),
                    trl_lengths=[trl_length(len(e.prefix), len(e.chosen), len(e.rejected)) for e in encoded],
                    trl_eval_lengths=[trl_length(len(e.prefix), len(e.chosen), len(e.rejected)) for e in
                                      (encode_pair(tokenizer, p, args.max_length) for p in eval_pairs)],
                    settings={f.name: str(v.resolve()) if isinstance(v, Path) else v
                              for f in dataclasses.fields(settings) for v in [getattr(settings, f.name)]})
        jobs = [] if args.skip_trl else [(TRL, "trl")]
        jobs.append((OURS, "ours"))
        for r in range(args.rounds):
            for name, kind in (jobs if r % 2 == 0 else jobs[::-1]):
                runs.setdefault(name, []).append(
                    run_worker(kind, spec, tmp / f"{kind}-{r}", f"round {r + 1}/{args.rounds}: {name}", args.threads,
                               trl_path=args.trl_path if kind == "trl" else None))
        load_after = os.getloadavg()
        print("[bench/dpo] held-out implicit-reward accuracy of both adapters (one evaluator) …", file=sys.stderr)
        evals = held_out_accuracy(settings, args, {n: rs[-1]["adapter_dir"] for n, rs in runs.items()}, eval_pairs)
    acc = {n: e["eval/accuracy"] for n, e in evals.items()}
    rows = summarize(runs)
    text = table(rows, acc, len(eval_pairs))
    r = ratios(rows)
    line = verdict(r, acc[OURS], acc[TRL], len(eval_pairs)) if r else ""
    print(text)
    if line:
        print(line)
    if not args.write:
        return 0
    cmd = ".venv/bin/python bench/dpo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    body = results_body(args, cmd=cmd.strip(), started=started, machine_line=machine(), sources=sources,
                        n_train=len(train_pairs), n_tokens=n_tokens, n_eval=len(eval_pairs), runs=runs, rows=rows,
                        evals=evals, text=text, line=line, load=(load_before[0], load_after[0]))
    update_section("dpo", body)
    print("updated bench/RESULTS.md (section dpo)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
