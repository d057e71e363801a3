"""Reward-model training speed: ours (``training.reward_model``) against TRL's ``RewardTrainer``.

    .venv/bin/python bench/reward_model.py --num-threads 1 --rounds 2   # [--pairs 240] [--ablation]

trl 1.16.0 is a bench-only dependency (NOT in requirements.txt): the script installs it, if missing,
into its own directory (``--trl-path``, default ``.cache/bench/trl-1.16.0``) with
``pip install --no-deps --target``, and puts that directory first on ``sys.path`` — .venv is left
alone (trl's own dependencies — accelerate, datasets, transformers, … — are in requirements.txt).

TRL runs with its gradient checkpointing OFF (RewardConfig's default is ON, which recomputes every
forward in the backward pass: slower, lighter) and with length-grouped batches ON
(``train_sampling_strategy="group_by_length"``, lengths given in a ``length`` column), since ours
groups by length too; ``--trl-gradient-checkpointing`` / ``--no-trl-group-by-length`` restore TRL's
defaults. The settings TRL actually ran with are read back from the trainer and printed in the table.
With ``--rounds N`` the two trainers alternate (TRL, ours, ours, TRL, …) so that load from other jobs
on the machine hits both alike; the table gives medians over rounds.

One run trains both on the SAME data (seed pairs + HH-RLHF harmless pairs whose conversations fit
``--max-length``, so TRL's length filter drops nothing), the same base model (embedded
SmolLM2-135M-Instruct, weights in bfloat16 + bfloat16 autocast for both), the same batch size,
sequence length, LoRA config (rank, alpha, target modules, layers), learning rate, schedule and seed,
for one epoch; then scores a held-out set with each model. It prints training pairs/s (wall clock
and CPU time) of both, the ratio, and both held-out accuracies, and writes the table to
``bench/RESULTS.md`` (section ``reward_model``).

Where the speed comes from (ours): each pair is one packed row ``[prompt | chosen | rejected]``
(TRL runs the prompt twice, once per answer), batches are grouped by length (as TRL's here, by
default in this bench), and with LoRA on the top layers only, the frozen bottom layers are computed once per pair
without autograd. Timing covers the training loop only (model loading and tokenising excluded for
both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import ensure_trl as install_trl, load_note, machine, update_section  # noqa: E402

TRL_VERSION = "1.16.0"
DEFAULT_TRL_PATH = ROOT / ".cache" / "bench" / f"trl-{TRL_VERSION}"
from rlhf_demo.base_model import load_tokenizer, resolve_base_model  # noqa: E402
from rlhf_demo.config import add_settings_args, settings_from_args  # noqa: E402
from training.data import encode_conversation, encode_pair, load_pairs, split_by_prompt  # noqa: E402
from training.losses import pairwise_accuracy  # noqa: E402
from training.roles import DEFAULT_TARGETS  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-part.jsonl.gz"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=240, help="training pairs, one epoch (default: %(default)s)")
    p.add_argument("--eval-pairs", type=int, default=120, help="held-out pairs for the accuracy check (default: %(default)s)")
    p.add_argument("--hh", type=Path, default=HH, help="HH-RLHF JSONL(.gz) mixed with the seed pairs (default: %(default)s)")
    p.add_argument("--hh-share", type=float, default=0.6, help="share of HH pairs in the mix (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per batch (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per conversation (default: %(default)s)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: %(default)s)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default: %(default)s)")
    p.add_argument("--lora-layers", type=int, default=8,
                   help="LoRA on the last N decoder layers (0 = all) (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="float32 weights and compute for both (default: bfloat16 weights + autocast)")
    p.add_argument("--trl-group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="give TRL length-grouped batches (train_sampling_strategy='group_by_length'), as ours "
                        "has (default: on; --no-trl-group-by-length for TRL's default, random batches)")
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="run TRL with gradient checkpointing ON, RewardConfig's own default (default: off, as ours)")
    p.add_argument("--trl-path", type=Path, default=DEFAULT_TRL_PATH,
                   help=f"directory holding trl=={TRL_VERSION} (pip --target); installed there if missing "
                        "(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the trainers this many rounds (TRL, ours, ours, TRL, …); medians reported "
                        "(default: %(default)s)")
    p.add_argument("--num-threads", type=int, default=0,
                   help="torch CPU threads for both runs (0: torch's default) (default: %(default)s)")
    p.add_argument("--ablation", action="store_true",
                   help="also run ours without the frozen-layer cache (packing + length grouping only)")
    p.add_argument("--skip-trl", action="store_true", help="only run ours (e.g. without trl installed)")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not update bench/RESULTS.md")
    add_settings_args(p)
    return p


def select_pairs(args, tokenizer):
    """Seed + HH pairs whose two conversations both fit --max-length; split by prompt."""
    pairs = load_pairs(["seed"] + ([f"hh={args.hh}"] if args.hh and Path(args.hh).exists() else []))
    fits = [p for p in pairs if p.chosen.strip() and p.rejected.strip()  # (a few HH answers are empty)
            and max(len(encode_conversation(tokenizer, p.conversation(w))) for w in ("chosen", "rejected"))
            <= args.max_length]
    train, held = split_by_prompt(fits, 0.3, args.seed)

    def mix(rows, n):
        hh = [p for p in rows if p.source == "hh"]
        seed = [p for p in rows if p.source != "hh"]
        k = min(len(hh), round(n * args.hh_share)) if hh else 0
        return hh[:k] + seed[:n - k]

    return mix(train, args.pairs), mix(held, args.eval_pairs)


def write_jsonl(pairs, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({**p.to_trl(), "source": p.source}) + "\n")
    return path


def lora_layers(args, n_layers: int) -> list[int] | None:
    return list(range(n_layers - args.lora_layers, n_layers)) if args.lora_layers else None


# ---------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------
def run_trl(args, settings, train_pairs, eval_pairs, tokenizer, out_dir: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(resolve_base_model(settings), num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    n_layers = model.config.num_hidden_layers
    steps = math.ceil(len(train_pairs) / args.batch_size)
    rows = [p.to_trl() for p in train_pairs]
    ds = Dataset.from_list(rows)
    if args.trl_group_by_length:
        lengths = [max(len(encode_conversation(tokenizer, p.conversation(w))) for w in ("chosen", "rejected"))
                   for p in train_pairs]
        ds = ds.add_column("length", lengths)
    config = RewardConfig(
        output_dir=str(out_dir / "trl"), per_device_train_batch_size=args.batch_size, max_steps=steps,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=round(0.1 * steps),
        bf16=args.bf16, use_cpu=settings.resolved_device() == "cpu", report_to="none", save_strategy="no",
        logging_steps=max(1, steps), disable_dropout=True, dataloader_num_workers=0, max_length=args.max_length,
        seed=args.seed, data_seed=args.seed, max_grad_norm=1.0, weight_decay=0.0, remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if args.trl_group_by_length else "random",
        gradient_checkpointing=args.trl_gradient_checkpointing)
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                             target_modules=list(DEFAULT_TARGETS), layers_to_transform=lora_layers(args, n_layers),
                             modules_to_save=["score"], task_type="SEQ_CLS")
    trainer = RewardTrainer(model=model, args=config, train_dataset=ds, processing_class=tokenizer,
                            peft_config=peft_config)
    # what TRL actually runs with, read back from the trainer
    sampler = type(trainer._get_train_sampler(trainer.train_dataset)).__name__
    settings_used = {
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "model_gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "train_sampling_strategy": trainer.args.train_sampling_strategy,
        "sampler": sampler,
        "length_column": trainer.args.length_column_name in trainer.train_dataset.column_names,
    }
    if args.trl_group_by_length and not (sampler == "LengthGroupedSampler" and settings_used["length_column"]):
        raise SystemExit(f"error: TRL was asked for length-grouped batches but runs {settings_used}")
    print(f"TRL settings: {settings_used}", flush=True)
    t, c = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    model = trainer.model.eval()
    scores = {"chosen": [], "rejected": []}
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        for which in scores:
            for k in range(0, len(eval_pairs), 16):
                seqs = [encode_conversation(tokenizer, p.conversation(which)) for p in eval_pairs[k:k + 16]]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for i, s in enumerate(seqs):
                    ids[i, :len(s)] = torch.tensor(s)
                    mask[i, :len(s)] = 1
                scores[which] += model(input_ids=ids, attention_mask=mask).logits.float().squeeze(-1).tolist()
    acc = pairwise_accuracy(torch.tensor(scores["chosen"]), torch.tensor(scores["rejected"]))
    return {"wall_s": wall, "cpu_s": cpu, "pairs": len(train_pairs), "steps": steps, "accuracy": acc,
            "settings": settings_used}


# ---------------------------------------------------------------------------------------------
# ours
# ---------------------------------------------------------------------------------------------
def run_ours(args, settings, train_pairs, eval_pairs, tokenizer, out_dir: Path, cache: bool = True) -> dict:
    from training.reward_model import RewardConfig, encode_all, score_encoded, train

    data = write_jsonl(train_pairs, out_dir / "train.jsonl")
    steps = math.ceil(len(train_pairs) / args.batch_size)
    config = RewardConfig(data=[f"bench={data}"], validation_fraction=0.0, max_length=args.max_length,
                          lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                          lora_layers=args.lora_layers or None, bf16=args.bf16, learning_rate=args.learning_rate,
                          lr_scheduler="cosine", warmup_ratio=0.1, max_steps=steps, batch_size=args.batch_size,
                          seed=args.seed, run_dir=out_dir / f"ours-{cache}", save_steps=0,
                          logging_steps=max(1, steps), progress=False, publish=False, cache_frozen_layers=cache)
    c = time.process_time()
    result = train(config, settings)
    cpu = time.process_time() - c  # includes loading and tokenising (a little): an upper bound
    rm = result.reward_model
    enc = encode_all(tokenizer, eval_pairs, args.max_length)
    ch, rj = score_encoded(rm, enc, tokenizer.pad_token_id, 16, args.bf16)
    acc = pairwise_accuracy(torch.tensor(ch), torch.tensor(rj))
    return {"wall_s": result.metrics["train_loop_s"], "cpu_s": cpu, "pairs": len(train_pairs), "steps": steps,
            "accuracy": acc}


def ensure_trl(path: Path) -> None:
    """trl==TRL_VERSION in ``path`` (installed there if missing), first on sys.path; .venv is left alone."""
    install_trl(path, TRL_VERSION, "bench/reward_model", "pass --skip-trl to time ours only")
    sys.path.insert(0, str(path))
    import trl

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"error: imported trl {trl.__version__} from {trl.__file__}, expected {TRL_VERSION}")


def _median(values):
    import statistics

    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    if args.bf16 and settings.dtype == "auto":
        import dataclasses

        settings = dataclasses.replace(settings, dtype="bfloat16")
    if not args.skip_trl:
        ensure_trl(args.trl_path)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    tokenizer = load_tokenizer(settings)
    train_pairs, eval_pairs = select_pairs(args, tokenizer)
    n_tokens = sum(encode_pair(tokenizer, p, args.max_length).length for p in train_pairs)
    print(f"{len(train_pairs)} training pairs ({sum(p.source == 'hh' for p in train_pairs)} HH), "
          f"{len(eval_pairs)} held out; batch {args.batch_size}, max length {args.max_length}, LoRA r={args.lora_r} "
          f"on {'the last ' + str(args.lora_layers) if args.lora_layers else 'all'} layers, "
          f"{'bf16' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads", flush=True)
    trl_name, ours_name, plain_name = (f"TRL RewardTrainer (trl {TRL_VERSION})", "ours (training.reward_model)",
                                       "ours without the frozen-layer cache")
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = []
        if not args.skip_trl:
            jobs.append((trl_name, lambda: run_trl(args, settings, train_pairs, eval_pairs, tokenizer, tmp)))
        jobs.append((ours_name, lambda: run_ours(args, settings, train_pairs, eval_pairs, tokenizer, tmp)))
        if args.ablation and args.lora_layers:
            jobs.append((plain_name, lambda: run_ours(args, settings, train_pairs, eval_pairs, tokenizer, tmp,
                                                      cache=False)))
        for r in range(args.rounds):
            for name, job in (jobs if r % 2 == 0 else jobs[::-1]):
                print(f"round {r + 1}/{args.rounds}: training with {name} …", flush=True)
                runs.setdefault(name, []).append(job())
                print(f"  {runs[name][-1]['pairs'] / runs[name][-1]['wall_s']:.2f} pairs/s (wall)", flush=True)
    load_after = os.getloadavg()
    threads = torch.get_num_threads()
    results = {name: {"pairs": rs[0]["pairs"], "wall_s": _median([x["wall_s"] for x in rs]),
                      "cpu_s": _median([x["cpu_s"] for x in rs]), "accuracy": rs[0]["accuracy"],
                      "walls": [x["wall_s"] for x in rs]} for name, rs in runs.items()}
    lines = ["| trainer | pairs/s (wall) | pairs/s (CPU time / threads) | held-out accuracy "
             "| training-loop s per round |",
             "|---|---:|---:|---:|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['pairs'] / r['wall_s']:.2f} | {r['pairs'] / (r['cpu_s'] / threads):.2f} | "
                     f"{r['accuracy']:.3f} (n={len(eval_pairs)}) | {', '.join(f'{w:.0f}' for w in r['walls'])} |")
    ratio_line = ""
    if trl_name in results:
        trl, ours = results[trl_name], results[ours_name]
        ratio = (ours["pairs"] / ours["wall_s"]) / (trl["pairs"] / trl["wall_s"])
        cpu_ratio = (ours["pairs"] / ours["cpu_s"]) / (trl["pairs"] / trl["cpu_s"])
        per_round = [t["wall_s"] / o["wall_s"] for t, o in zip(runs[trl_name], runs[ours_name])]
        ratio_line = (f"**ours / TRL = {ratio:.2f}x** (wall clock, medians; per round: "
                      f"{', '.join(f'{x:.2f}x' for x in per_round)}; {cpu_ratio:.2f}x by CPU time)")
        if plain_name in results:
            plain = results[plain_name]
            ratio_line += (f"; without the frozen-layer cache (packing + length grouping only): "
                           f"{(plain['pairs'] / plain['wall_s']) / (trl['pairs'] / trl['wall_s']):.2f}x")
    trl_settings = ""
    if trl_name in runs:
        used = runs[trl_name][0]["settings"]
        trl_settings = (f"TRL's settings, read back from its trainer: gradient checkpointing "
                        f"**{'on' if used['gradient_checkpointing'] else 'off'}** (RewardConfig's default is on; "
                        f"ours never checkpoints), `train_sampling_strategy={used['train_sampling_strategy']!r}` "
                        f"→ {used['sampler']}"
                        + (" over the `length` column (the longer conversation of each pair, in tokens)"
                           if used["length_column"] else "")
                        + ", LoRA and the `score` head trainable (`modules_to_save`), `bf16` autocast, "
                          "`disable_dropout=True`. TRL encodes prompt+chosen and prompt+rejected as two rows; "
                          "ours packs each pair into one row and caches the frozen bottom layers.\n\n")
    table = "\n".join(lines)
    print(table)
    if ratio_line:
        print(ratio_line)
    if args.write:
        cmd = ".venv/bin/python bench/reward_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
        body = (f"## Reward-model training: ours vs TRL RewardTrainer\n\n"
                f"Command: `{cmd.strip()}` — run started {started}; {machine()}, {threads} torch thread(s) for both. "
                f"{load_note(load_before[0], load_after[0], threads)}; {args.rounds} round(s), trainers alternating "
                f"(TRL, ours, ours, TRL, …), medians over rounds.\n\n"
                f"{len(train_pairs)} training pairs ({n_tokens:,} tokens packed; seed + HH-RLHF harmless), one epoch, "
                f"batch {args.batch_size}, max length {args.max_length}, LoRA r={args.lora_r}/alpha={args.lora_alpha} "
                f"on attention+MLP of {'the last ' + str(args.lora_layers) if args.lora_layers else 'all'} layers, "
                f"{'bf16 weights + autocast' if args.bf16 else 'fp32'}, same lr/schedule/seed; accuracy on "
                f"{len(eval_pairs)} held-out pairs. Timing: the training loop only.\n\n{trl_settings}"
                f"{table}\n\n{ratio_line}\n")
        update_section("reward_model", body)
        print("updated bench/RESULTS.md (section reward_model)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
