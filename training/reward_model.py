"""Train (or evaluate) a reward model: ``python -m training.reward_model``.

A reward model is a LoRA adapter plus a scalar head on the shared base (``training/roles.py``),
trained with the Bradley–Terry loss on preference pairs (``training/data.py``) and published to the
registry as the next ``reward-vN``. Recipe options follow "Secrets of RLHF Part II" and TRL's
RewardTrainer: margin, label smoothing, an LM loss on the chosen answer, reward centering.

    # train on the seed pairs plus HH-RLHF, hold out 20% of the prompts, publish reward-vN
    python -m training.reward_model --data seed --data hh=../shared/data/hh-rlhf/harmless-base-test-part.jsonl.gz

    # evaluate a published reward model on a file; the last line is `accuracy=<float> n=<int>`
    python -m training.reward_model --eval-only --reward-model reward-v0 --data pairs.jsonl

Speed: each pair is ONE packed row ``[prompt | chosen | rejected]`` (the prompt is computed once;
an attention mask hides the chosen answer from the rejected one), batches are grouped by length,
and the LM head is skipped unless the LM loss is on. Checkpoints (``--save-steps``) make a killed
run resumable with ``--resume``; metrics go to ``<run dir>/metrics.jsonl`` and TensorBoard
(``--report-to tensorboard``).

Data parallel under ``accelerate launch`` (docs/scale-out.md): each process takes every N-th
micro-batch, gradients and logged metrics are averaged across processes (training/distributed.py),
and only the main process evaluates, writes checkpoints and publishes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rlhf_demo.config import Settings, settings_from_args
from rlhf_demo.flags import ConfigParser, config_from_args
from rlhf_demo.metrics_log import MetricsLog, truncate_metrics
from rlhf_demo.registry import publish_to, software_versions
from training import checkpoint as ckpt
from training import distributed as dist
from training.data import (DataError, batch_order, collate_pairs, load_pairs,
                           parse_source, split_by_prompt)
from training.losses import bradley_terry_loss, pairwise_accuracy, ptx_loss, reward_centering_loss
from training.reward_config import RewardConfig  # noqa: F401 - the trainer's config (re-exported)
from training.reward_eval import (autocast, build_frozen_cache, calibration, check_frozen_split,  # noqa: F401
                                  encode_all, evaluate_only, pad_cached, score_encoded, summarize)
from training.roles import DEFAULT_TARGETS, RewardModel, lora_config, num_layers
from training.scaffold import default_run_dir, load_pair_model, lr_lambda, newest_run, seed_everything

log = logging.getLogger("training.reward_model")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def build_parser() -> ConfigParser:
    return ConfigParser(RewardConfig, "reward model", prog="python -m training.reward_model",
                        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict
    model_dir: Path | None = None
    version: object = None
    reward_model: RewardModel | None = None


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(config: RewardConfig, settings: Settings, on_step: Callable[[int, dict], None] | None = None,
          command: str | None = None, model=None, tokenizer=None) -> TrainResult:
    """Train a reward model; returns where it went and its held-out metrics.

    ``on_step(step, info)`` is called after every optimizer step (after a checkpoint is written),
    e.g. to stop a run in tests. ``model``/``tokenizer``: an already loaded base to train on.
    """
    t_start = time.time()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    settings = dist.init(settings)  # under accelerate launch: join the other processes (else a no-op)
    rank, world = dist.rank(), dist.world_size()
    if config.resume:
        run_dir = config.run_dir or newest_run(settings, "reward")
        if run_dir is None:
            raise ckpt.CheckpointError(f"--resume: no reward run with checkpoints under {settings.data_dir / 'runs'}")
    else:
        run_dir = config.run_dir or default_run_dir(settings, "reward")
    run_dir = Path(dist.broadcast_object(run_dir))  # one run dir for all ranks (named by the main rank's clock)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    # -- data -----------------------------------------------------------------------------
    pairs = load_pairs(config.data, settings, skip_invalid=config.skip_invalid)
    train_pairs, val_pairs = split_by_prompt(pairs, config.validation_fraction, config.seed)
    if not train_pairs:
        raise DataError("no training pairs left after the validation split")
    sources = [parse_source(s) for s in config.data]
    data_card = [{"spec": s, "name": src.name, "sha256": source_sha256(src),
                  "pairs": sum(p.source == src.name for p in pairs),
                  "train": sum(p.source == src.name for p in train_pairs),
                  "validation": sum(p.source == src.name for p in val_pairs)} for s, src in zip(config.data, sources)]

    # -- model ----------------------------------------------------------------------------
    settings, model, tokenizer = load_pair_model(settings, config.bf16, model, tokenizer)
    train_enc = encode_all(tokenizer, train_pairs, config.max_length)
    val_enc = encode_all(tokenizer, val_pairs, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    torch.manual_seed(config.seed)
    if config.reward_model:
        from training.roles import resolve_reward_version

        parent = resolve_reward_version(settings, config.reward_model)
        if settings.load_in_4bit:  # before the adapter goes on: it freezes every parameter it finds
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
        rm = RewardModel.from_dir(model, parent.path, trainable=True)
    else:
        parent = None
        lcfg = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules,
                           config.lora_layers or None, num_layers(model))
        rm = RewardModel.create(model, lcfg, kbit_training=settings.load_in_4bit,
                                gradient_checkpointing=config.gradient_checkpointing)
    rm.train()
    if config.bf16:  # under autocast peft's cast of each LoRA input to float32 only adds copies (same results)
        for module in rm.model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    params = rm.trainable_parameters()
    dist.broadcast_params_([p for _, p in params])  # data parallel: the same start on every rank
    if rank:
        seed_everything(config.seed + rank)  # data parallel: this rank's own dropout masks
    lora_params = [p for n, p in params if not n.startswith("head.")]
    head_params = [p for n, p in params if n.startswith("head.")]
    optimizer = torch.optim.AdamW([
        {"params": lora_params, "lr": config.learning_rate},
        {"params": head_params, "lr": config.head_learning_rate or config.learning_rate},
    ], weight_decay=config.weight_decay)

    lengths = [e.length for e in train_enc]
    micro_per_epoch = len(batch_order(lengths, config.batch_size, config.seed, 0, config.group_by_length))
    steps_per_epoch = max(1, micro_per_epoch // (config.grad_accumulation * world))  # world: ranks share an epoch
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = int(round(config.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.lr_scheduler, warmup, total_steps))

    step = 0
    if config.resume:
        state = ckpt.load_checkpoint(run_dir, model=rm.model, modules={"head": rm.head}, optimizer=optimizer,
                                     scheduler=scheduler, restore_rng=not rank)  # other ranks: their own seed
        step = state.step
        for msg in state.skipped:
            print(f"[reward] {msg}", file=sys.stderr)
        print(f"[reward] resumed {run_dir} at step {step}/{total_steps}", file=sys.stderr)
        if dist.is_main():
            truncate_metrics(run_dir / "metrics.jsonl", step)  # the lost steps are replayed and logged again
    t_loop = time.time()  # training proper starts here (after loading and tokenising)
    start_layer = rm.lora_start_layer() if config.cache_frozen_layers else 0
    train_cache = val_cache = None
    if start_layer > 0:
        diff = check_frozen_split(rm, train_enc, pad_id, start_layer, config.bf16)
        if diff > (5e-2 if config.bf16 else 1e-3):
            log.warning("the frozen-layer cache does not reproduce a full forward pass of this model (max reward "
                        "difference %.2g); training without it", diff)
            start_layer = 0
        else:
            n_tok = sum(e.length for e in train_enc + val_enc)
            print(f"[reward] caching the output of frozen layers 0-{start_layer - 1} for {n_tok:,} tokens "
                  f"({n_tok * (2 if config.bf16 else 4) * rm.head.hidden_size / 2**20:.0f} MiB)",
                  file=sys.stderr)
            train_cache = build_frozen_cache(rm, train_enc, pad_id, start_layer, config.eval_batch_size, config.bf16,
                                             config.progress)
            val_cache = build_frozen_cache(rm, val_enc, pad_id, start_layer, config.eval_batch_size, config.bf16,
                                           config.progress) if val_enc else None
    truncated = sum(e.truncated for e in train_enc + val_enc)
    print(f"[reward] {len(train_pairs)} training pairs, {len(val_pairs)} held out ({truncated} truncated to "
          f"{config.max_length} tokens); {total_steps} steps of {config.batch_size}x{config.grad_accumulation} "
          f"pairs; {sum(p.numel() for _, p in params):,} trainable parameters; run dir {run_dir}", file=sys.stderr)

    # -- loop -----------------------------------------------------------------------------
    writer = MetricsLog(run_dir, config.report_to if dist.is_main() else [], timestamp=True)
    device = rm.device
    bar = None
    if config.progress and dist.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="reward model", unit="step", dynamic_ncols=True)
    window: dict[str, float] = defaultdict(float)
    window_t = time.time()
    order_cache: dict[int, list[list[int]]] = {}

    def micro_batch(m: int) -> list[int]:
        epoch, k = divmod(m, micro_per_epoch)
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = batch_order(lengths, config.batch_size, config.seed, epoch, config.group_by_length)
        return order_cache[epoch][k]

    val_metrics: dict = {}
    try:
        while step < total_steps:
            optimizer.zero_grad(set_to_none=True)
            for a in range(config.grad_accumulation):
                idx = micro_batch((step * config.grad_accumulation + a) * world + rank)  # every world-th: this rank's
                batch = collate_pairs([train_enc[i] for i in idx], pad_id).to(device)
                embeds = pad_cached(train_cache, idx, batch.input_ids.shape[1], device) if train_cache else None
                with autocast(device, config.bf16):
                    chosen, rejected, logits = rm.pair_rewards(batch, lm_loss=config.lm_loss_coef > 0,
                                                               inputs_embeds=embeds, start_layer=start_layer)
                    margin = batch.margin if config.use_margin else None
                    bt = bradley_terry_loss(chosen, rejected, margin, config.label_smoothing)
                    loss = bt
                    if config.center_rewards_coef:
                        loss = loss + reward_centering_loss(chosen, rejected, config.center_rewards_coef)
                    if logits is not None:
                        lm = ptx_loss(logits, batch.lm_labels)
                        loss = loss + config.lm_loss_coef * lm
                        window["train/lm_loss"] += lm.item() / config.grad_accumulation
                (loss / config.grad_accumulation).backward()
                window["train/loss"] += loss.item() / config.grad_accumulation
                window["train/bt_loss"] += bt.item() / config.grad_accumulation
                window["train/accuracy"] += pairwise_accuracy(chosen.detach(), rejected.detach()) / config.grad_accumulation
                window["train/margin"] += float((chosen - rejected).detach().mean()) / config.grad_accumulation
                window["train/reward_mean"] += float((chosen + rejected).detach().mean() / 2) / config.grad_accumulation
                window["perf/pairs"] += len(batch)
                window["perf/tokens"] += batch.n_tokens
            dist.all_reduce_mean_([p for _, p in params])  # data parallel: average gradients across ranks
            if config.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], config.max_grad_norm)
                window["train/grad_norm"] += float(norm)
            window["train/lr"] += scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1
            window["n"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{window['train/loss'] / window['n']:.3f}",
                                acc=f"{window['train/accuracy'] / window['n']:.2f}")
            if step % max(1, config.logging_steps) == 0 or step == total_steps:
                dt = max(1e-9, time.time() - window_t)
                n = window.pop("n")
                row = {k: round(v / n, 6) for k, v in window.items() if not k.startswith("perf/")}
                row.update({"perf/pairs_per_s": round(window["perf/pairs"] / dt, 3),
                            "perf/tokens_per_s": round(window["perf/tokens"] / dt, 1),
                            "epoch": round(step / steps_per_epoch, 4)})
                if world > 1:  # data parallel: averaged over the ranks; throughput of all ranks together
                    row = dist.all_reduce_mean(row)
                    row.update({k: round(v * world, 3) for k, v in row.items() if k.startswith("perf/")})
                if dist.is_main():
                    writer.write(step, row)
                window.clear()
                window_t = time.time()
            if (config.eval_steps and step % config.eval_steps == 0 and val_enc and step < total_steps
                    and dist.is_main()):
                c, r = score_encoded(rm, val_enc, pad_id, config.eval_batch_size, config.bf16, val_cache, start_layer)
                val_metrics = summarize(val_enc, c, r)
                writer.write(step, {f"eval/{k}/accuracy": v["accuracy"] for k, v in val_metrics.items()})
            if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                dist.check_in_sync([p for _, p in params])  # what the main rank saves is every rank's
                if dist.is_main():
                    ckpt.save_checkpoint(run_dir, step, model=rm.model, adapters=[rm.adapter_name],
                                         modules={"head": rm.head}, optimizer=optimizer, scheduler=scheduler,
                                         extra={"config": json.loads(json.dumps(dataclasses.asdict(config),
                                                                                default=str))},
                                         keep_last=config.save_total_limit)
            if on_step is not None:
                on_step(step, {"loss": loss.item(), "optimizer": optimizer, "reward_model": rm,
                               "total_steps": total_steps})
    finally:
        if bar is not None:
            bar.close()
    loop_time = time.time() - t_loop
    train_time = time.time() - t_start

    # -- evaluation and publishing --------------------------------------------------------
    metrics: dict = {"train_time_s": round(train_time, 1), "train_loop_s": round(loop_time, 1), "steps": step,
                     "train_pairs": len(train_pairs), "validation_pairs": len(val_pairs)}
    if world > 1:  # --batch-size was per process
        metrics["data_parallel"] = {"processes": world,
                                    "fingerprints": dist.check_in_sync([p for _, p in params])}
    if not dist.is_main():  # evaluation, the final model and publishing are the main rank's: wait for it
        dist.barrier()
        return TrainResult(run_dir, step, metrics, reward_model=rm)
    if val_enc:
        c, r = score_encoded(rm, val_enc, pad_id, config.eval_batch_size, config.bf16, val_cache, start_layer)
        val_metrics = summarize(val_enc, c, r)
        metrics["validation"] = val_metrics
        metrics["calibration"] = calibration(c, r)
        writer.write(step, {f"eval/{k}/accuracy": v["accuracy"] for k, v in val_metrics.items()})
    writer.close()
    model_dir = rm.save(run_dir / "final")
    # continuing a composed version (reward head + safety term, rlhf_demo.safety_term): the term goes with it
    carried = carry_safety_term(parent.path, model_dir) if parent else None
    card = {
        "kind": "reward",
        "role": config.role,
        "base_model": settings.base_model,
        "parent": parent.name if parent else None,
        "description": config.description or "Bradley-Terry reward model (LoRA + scalar head on the SFT base)",
        "command": command or "python -m training.reward_model " + " ".join(map(shlex.quote, sys.argv[1:])),
        "data": data_card,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "settings": {"load_in_4bit": settings.load_in_4bit, "dtype": settings.dtype, "device": str(device),
                     "threads": torch.get_num_threads()},
        "metrics": metrics,
        "software": software_versions(),
        **({"composed": {"safety_term_from": parent.name, "safety_term": carried}} if carried else {}),
    }
    (model_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    _print_summary(val_metrics, train_time, step)
    result = TrainResult(run_dir, step, metrics, model_dir, reward_model=rm)
    if config.publish:
        result.version = publish_to(model_dir, card, settings.versions_dir, name=config.name,
                                    publish_dir=config.publish_dir, replace=config.replace)
        print(f"[reward] published {result.version.name} at {result.version.path}", file=sys.stderr)
    dist.barrier()  # release the other ranks
    return result


def carry_safety_term(parent_dir: Path, model_dir: Path) -> dict | None:
    """Copy a composed parent's safety-term files next to the new adapter and head; returns the term's card.
    (The term reads the frozen base, not the head, so it stays valid; its ``v`` was fitted against the
    parent head's margins — refit with ``python -m training.safety_reward`` for a new base reward.)"""
    from rlhf_demo.safety_term import TERM_CARD, TERM_FILE

    if not (Path(parent_dir) / TERM_FILE).exists():
        return None
    for name in (TERM_FILE, TERM_CARD):
        shutil.copyfile(Path(parent_dir) / name, Path(model_dir) / name)
    return json.loads((Path(model_dir) / TERM_CARD).read_text())


def source_sha256(src) -> dict | None:
    """sha256 of the files behind one ``--data`` source (for the card): the file itself, or every seed file."""
    from rlhf_demo.registry import sha256_file
    from training.data import SEED_PAIRS_DIR

    if src.kind == "file" and Path(src.target).is_file():
        return {Path(src.target).name: sha256_file(Path(src.target))}
    if src.kind == "seed":
        return {f.name: sha256_file(f) for f in sorted(SEED_PAIRS_DIR.glob("*.jsonl"))}
    return None


def _print_summary(val_metrics: dict, train_time: float, step: int) -> None:
    print(f"[reward] trained {step} steps in {train_time / 60:.1f} min", file=sys.stderr)
    for name, m in sorted(val_metrics.items()):
        print(f"[reward] held-out {name:<24} accuracy {m['accuracy']:.3f}  mean margin {m['mean_margin']:+.3f}  "
              f"n={m['n']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(RewardConfig, args)
    settings = settings_from_args(args)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if config.eval_only:
            if not config.reward_model:
                parser.error("--eval-only needs --reward-model NAME")
            evaluate_only(config, settings)
        else:
            argv_text = " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
            train(config, settings, command=f"python -m training.reward_model {argv_text}".strip())
    except (DataError, ckpt.CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
