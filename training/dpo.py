"""Direct preference optimisation from the same votes: ``python -m training.dpo``.

DPO (sigmoid) or IPO on preference pairs (the reward model's sources: ``--data seed|arena|FILE``, TRL and
HH-RLHF rows, ``training/data.py``), a LoRA adapter on the shared base, published as the next ``dpo-vN``
policy version (served in the arena and evaluated by ``python -m eval`` like any ``rlhf-vN``).

    # the shipped dpo-v0 recipe: make train-dpo
    python -m training.dpo --data seed --data rlhf_demo/data/pairs/train.jsonl --lora-layers 8 --bf16

The reference policy is the SAME base with the adapter disabled (no second copy of the model); its
log-probabilities are computed once per pair before training (as TRL's ``precompute_ref_log_probs``).
Each pair is ONE packed row ``[prompt | chosen | rejected]`` (``training/batching.py``); the LM head
runs only where an answer token is predicted. With ``--lora-layers N`` the frozen bottom layers run
once per pair (``--cache-frozen-layers``). Math: ``training/dpo_losses.py``. Checkpoints (``--save-steps``)
make a killed run resumable with ``--resume``; metrics go to ``<run dir>/metrics.jsonl`` (TensorBoard with
``--report-to tensorboard``) and ``<run dir>/curves.png``: loss, implicit-reward margin and accuracy on
the held-out pairs, and the exact token KL to the reference on their answers. Under ``accelerate launch``
each process takes every N-th micro-batch and gradients are averaged (``training/distributed.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhf_demo.adapters import add_adapter, lora_config, num_layers, save_adapter, set_active_adapter
from rlhf_demo.config import Settings, settings_from_args
from rlhf_demo.flags import ConfigParser, config_from_args
from rlhf_demo.metrics_log import MetricsLog, read_metrics, truncate_metrics
from rlhf_demo.model_patches import causal_lm
from rlhf_demo.registry import Registry, publish_to, software_versions
from training import checkpoint as ckpt
from training import distributed as dist
from training.data import DataError, batch_order, load_pairs, parse_source, prompt_key, split_by_prompt
from training.dpo_logps import (all_logps, answer_logps, answer_targets, eval_mode, evaluate, frozen_cache,  # noqa: F401
                                pair_inputs, plot_curves)
from training.dpo_losses import chosen_nll, dpo_loss, implicit_rewards, reward_accuracy
from training.reward_eval import autocast, encode_all
from training.scaffold import default_run_dir, load_pair_model, lr_lambda, newest_run, seed_everything
from training.dpo_config import DPOConfig  # noqa: F401 - the config of this trainer (python -m training.dpo --help)

ADAPTER = "policy"


def build_parser() -> ConfigParser:
    return ConfigParser(DPOConfig, "DPO", prog="python -m training.dpo", description=__doc__.split("\n\n")[0],
                        epilog=__doc__.split("\n\n", 1)[1])


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict
    model_dir: Path | None = None
    version: object = None
    model: object = None


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(config: DPOConfig, settings: Settings, on_step: Callable[[int, dict], None] | None = None,
          command: str | None = None, model=None, tokenizer=None) -> TrainResult:
    """Train a DPO/IPO adapter; ``on_step(step, info)`` runs after every optimizer step (and its checkpoint)."""
    t_start = time.time()
    if config.rpo_alpha < 0:
        raise ValueError(f"--rpo-alpha must be >= 0, got {config.rpo_alpha}")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    settings = dist.init(settings)
    rank, world = dist.rank(), dist.world_size()
    if config.resume:
        run_dir = config.run_dir or newest_run(settings, "dpo")
        if run_dir is None:
            raise ckpt.CheckpointError(f"--resume: no dpo run with checkpoints under {settings.data_dir / 'runs'}")
    else:
        run_dir = config.run_dir or default_run_dir(settings, "dpo")
    run_dir = Path(dist.broadcast_object(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    target = Registry(Path(config.publish_dir), package_dir=None) if config.publish_dir else Registry(settings.versions_dir)
    name = config.name or target.next_name("policy", prefix="dpo")
    if config.publish and not (config.replace and config.publish_dir):
        target.check_new_name(name, hint="pass another --name or --no-publish")  # fail now, not after the run
    seed_everything(config.seed)

    pairs = load_pairs(config.data, settings, skip_invalid=config.skip_invalid)
    train_pairs, val_pairs = split_by_prompt(pairs, config.validation_fraction, config.seed)
    if not train_pairs:
        raise DataError("no training pairs left after the validation split")
    if config.eval_data:
        extra = load_pairs(config.eval_data, settings, skip_invalid=config.skip_invalid)
        trained = {prompt_key(p.prompt) for p in train_pairs}
        overlap = sum(prompt_key(p.prompt) in trained for p in extra)
        if overlap:
            raise DataError(f"--eval-data: {overlap} held-out pairs have a prompt that is also a training prompt")
        val_pairs = val_pairs + extra
    from training.reward_model import source_sha256

    data_card = [{"spec": s, "name": src.name, "sha256": source_sha256(src),
                  "pairs": sum(p.source == src.name for p in pairs),
                  "train": sum(p.source == src.name for p in train_pairs),
                  "validation": sum(p.source == src.name for p in val_pairs)}
                 for s, src in zip(config.data, map(parse_source, config.data))]
    data_card += [{"spec": s, "name": src.name, "sha256": source_sha256(src), "held_out_only": True,
                   "validation": sum(p.source == src.name for p in val_pairs)}
                  for s, src in zip(config.eval_data, map(parse_source, config.eval_data))]

    settings, model, tokenizer = load_pair_model(settings, config.bf16, model, tokenizer)
    train_enc = encode_all(tokenizer, train_pairs, config.max_length)
    val_enc = encode_all(tokenizer, val_pairs, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    torch.manual_seed(config.seed)
    if settings.load_in_4bit:  # QLoRA: before the adapter goes on
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        causal_lm(model).enable_input_require_grads()
    lcfg = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules,
                       config.lora_layers or None, num_layers(model))
    model = add_adapter(model, ADAPTER, lcfg)
    set_active_adapter(model, ADAPTER)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    dist.broadcast_params_(params)
    if rank:
        seed_everything(config.seed + rank)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lengths = [e.length for e in train_enc]
    micro_per_epoch = len(batch_order(lengths, config.batch_size, config.seed, 0, config.group_by_length))
    steps_per_epoch = max(1, micro_per_epoch // (config.grad_accumulation * world))
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = int(round(config.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.lr_scheduler, warmup, total_steps))
    device = next(p.device for p in params)

    step = 0
    if config.resume:
        state = ckpt.load_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                     restore_rng=not rank)
        step = state.step
        for msg in state.skipped:
            print(f"[dpo] {msg}", file=sys.stderr)
        print(f"[dpo] resumed {run_dir} at step {step}/{total_steps}", file=sys.stderr)
        if dist.is_main():
            truncate_metrics(run_dir / "metrics.jsonl", step)

    t_loop = time.time()
    start_layer = model.peft_config[ADAPTER].layers_to_transform
    start_layer = min(start_layer) if (config.cache_frozen_layers and start_layer) else 0
    train_cache = val_cache = None
    if start_layer > 0:
        train_cache = frozen_cache(model, train_enc, pad_id, start_layer, config.eval_batch_size, config.bf16, device)
        val_cache = frozen_cache(model, val_enc, pad_id, start_layer, config.eval_batch_size, config.bf16, device)
    eval_mode(model)  # no dropout in the reference pass; LoRA dropout (if any) is switched back on below
    ref_train = all_logps(model, train_enc, pad_id, device, config.eval_batch_size, config.bf16, train_cache,
                          start_layer, reference=True)
    model.train()
    print(f"[dpo] {len(train_pairs)} training pairs, {len(val_pairs)} held out; {total_steps} steps of "
          f"{config.batch_size}x{config.grad_accumulation} pairs; {sum(p.numel() for p in params):,} trainable "
          f"parameters; frozen layers cached: {start_layer}; reference log-probs in {time.time() - t_loop:.0f}s; "
          f"run dir {run_dir}", file=sys.stderr)

    writer = MetricsLog(run_dir, config.report_to if dist.is_main() else [], timestamp=True)
    if step == 0 and val_enc and config.eval_at_start and dist.is_main():
        writer.write(0, evaluate(model, val_enc, config, pad_id, device, val_cache, start_layer))
    bar = None
    if config.progress and dist.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="dpo", unit="step", dynamic_ncols=True)
    window: dict[str, float] = defaultdict(float)
    window_t = time.time()
    orders: dict[int, list[list[int]]] = {}

    def micro_batch(m: int) -> list[int]:
        epoch, k = divmod(m, micro_per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = batch_order(lengths, config.batch_size, config.seed, epoch, config.group_by_length)
        return orders[epoch][k]

    try:
        while step < total_steps:
            optimizer.zero_grad(set_to_none=True)
            for a in range(config.grad_accumulation):
                idx = micro_batch((step * config.grad_accumulation + a) * world + rank)
                with autocast(device, config.bf16):
                    lp = answer_logps(model, [train_enc[i] for i in idx], pad_id, device, train_cache, start_layer)
                ref = ref_train[idx].to(device)
                pc, pr = pair_inputs(lp, config.loss_type)
                qc, qr = pair_inputs(ref, config.loss_type)
                loss = dpo_loss(pc, pr, qc, qr, config.beta, config.loss_type, config.label_smoothing)
                if config.rpo_alpha:
                    nll = chosen_nll(lp[:, 0], lp[:, 2])
                    window["train/chosen_nll"] += nll.item() / config.grad_accumulation
                    loss = loss + config.rpo_alpha * nll
                (loss / config.grad_accumulation).backward()
                rc, rr = implicit_rewards(lp[:, 0].detach(), lp[:, 1].detach(), ref[:, 0], ref[:, 1], config.beta)
                g = config.grad_accumulation
                window["train/loss"] += loss.item() / g
                window["train/accuracy"] += reward_accuracy(rc, rr) / g
                window["train/margin"] += float((rc - rr).mean()) / g
                window["train/chosen_reward"] += float(rc.mean()) / g
                window["train/rejected_reward"] += float(rr.mean()) / g
                window["perf/pairs"] += len(idx)
            dist.all_reduce_mean_(params)
            if config.max_grad_norm > 0:
                window["train/grad_norm"] += float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            window["train/lr"] += scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1
            window["n"] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{window['train/loss'] / window['n']:.3f}")
            if step % max(1, config.logging_steps) == 0 or step == total_steps:
                n = window.pop("n")
                row = {k: round(v / n, 6) for k, v in window.items() if not k.startswith("perf/")}
                row.update({"perf/pairs_per_s": round(window["perf/pairs"] / max(1e-9, time.time() - window_t), 3),
                            "epoch": round(step / steps_per_epoch, 4)})
                if world > 1:
                    row = dist.all_reduce_mean(row)
                if dist.is_main():
                    writer.write(step, row)
                window.clear()
                window_t = time.time()
            if config.eval_steps and step % config.eval_steps == 0 and val_enc and step < total_steps and dist.is_main():
                writer.write(step, evaluate(model, val_enc, config, pad_id, device, val_cache, start_layer))
            if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                dist.check_in_sync(params)
                if dist.is_main():
                    ckpt.save_checkpoint(run_dir, step, model=model, adapters=[ADAPTER], optimizer=optimizer,
                                         scheduler=scheduler, keep_last=config.save_total_limit,
                                         extra={"config": json.loads(json.dumps(dataclasses.asdict(config), default=str))})
            if on_step is not None:
                on_step(step, {"loss": loss.item(), "model": model, "total_steps": total_steps})
    finally:
        if bar is not None:
            bar.close()

    metrics: dict = {"train_time_s": round(time.time() - t_start, 1), "train_loop_s": round(time.time() - t_loop, 1),
                     "steps": step, "train_pairs": len(train_pairs), "validation_pairs": len(val_pairs)}
    if not dist.is_main():
        dist.barrier()
        return TrainResult(run_dir, step, metrics, model=model)
    if val_enc:
        metrics["validation"] = evaluate(model, val_enc, config, pad_id, device, val_cache, start_layer)
        writer.write(step, metrics["validation"])
        first = next((r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("step") == 0), None)
        if first:
            metrics["validation_at_start"] = {k: v for k, v in first.items() if k.startswith("eval/")}
    writer.close()
    plot_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "curves.png")
    model_dir = run_dir / "final"
    save_adapter(model, ADAPTER, model_dir)
    card = {
        "kind": "policy", "parent": "sft", "base_model": settings.base_model, "trainer": f"training.dpo ({config.loss_type})",
        "description": config.description or f"{config.loss_type.upper() if config.loss_type == 'ipo' else 'DPO'} "
                                              f"policy (LoRA on the SFT base; reference = the base)",
        "command": command or "python -m training.dpo " + " ".join(map(shlex.quote, sys.argv[1:])),
        "data": data_card, "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
        "settings": {"load_in_4bit": settings.load_in_4bit, "dtype": settings.dtype, "device": str(device),
                     "threads": torch.get_num_threads()},
        "metrics": metrics, "software": software_versions(),
    }
    (model_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    v = metrics.get("validation", {})
    print(f"[dpo] trained {step} steps in {metrics['train_time_s'] / 60:.1f} min; held-out accuracy "
          f"{v.get('eval/accuracy', float('nan')):.3f} margin {v.get('eval/margin', float('nan')):+.3f} "
          f"token KL {v.get('eval/kl_token', float('nan')):.4f} (n={len(val_pairs)})", file=sys.stderr)
    result = TrainResult(run_dir, step, metrics, model_dir, model=model)
    if config.publish:
        result.version = publish_to(model_dir, card, settings.versions_dir, name=name,
                                    publish_dir=config.publish_dir, replace=config.replace)
        print(f"[dpo] published {result.version.name} at {result.version.path}", file=sys.stderr)
    dist.barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(DPOConfig, args)
    settings = settings_from_args(args)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        argv_text = " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
        train(config, settings, command=f"python -m training.dpo {argv_text}".strip())
    except (DataError, ckpt.CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
