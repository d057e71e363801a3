"""The reward-model trainer on a tiny random model: loss falls, kill + --resume continues the same run,
checkpoints detect corruption, --eval-only prints its report, QLoRA runs on CPU (slow)."""

from __future__ import annotations

import io
import json
import logging
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from rlhf_demo.registry import Registry
from training import checkpoint as ckpt
from training.reward_model import RewardConfig, build_parser, calibration, lr_lambda, main, train

FAST = dict(lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], max_length=128, progress=False,
            publish=False, logging_steps=1)


class Stop(Exception):
    pass


def cfg(tmp_path: Path, **kw) -> RewardConfig:
    values = dict(FAST, run_dir=tmp_path / "run")
    values.update(kw)
    return RewardConfig(**values)


def state_of(result) -> dict[str, torch.Tensor]:
    rm = result.reward_model
    return {n: p.detach().clone() for n, p in rm.trainable_parameters()}


def test_a_few_steps_make_the_loss_fall(tiny_settings, tmp_path):
    losses = []
    # one batch of 8 pairs, seen at every step: its loss must fall
    result = train(cfg(tmp_path, data=["seed:8"], validation_fraction=0.0, batch_size=8, max_steps=8,
                       learning_rate=5e-3, warmup_ratio=0.0, lr_scheduler="constant"),
                   tiny_settings, on_step=lambda step, info: losses.append(info["loss"]))
    assert len(losses) == 8 and result.step == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"train/loss", "train/accuracy", "train/margin", "train/lr", "perf/pairs_per_s"} <= set(rows[0])
    assert {"adapter_config.json", "adapter_model.safetensors", "score_head.safetensors", "card.json"} <= {
        p.name for p in result.model_dir.iterdir()}


def test_kill_and_resume_continue_from_the_same_state(tiny_settings, tmp_path):
    common = dict(data=["seed:24"], batch_size=2, grad_accumulation=2, max_steps=6, save_steps=2, lora_dropout=0.1,
                  validation_fraction=0.2, learning_rate=1e-3)
    full = train(cfg(tmp_path / "a", **common), tiny_settings)

    def kill_after_step_3(step, info):
        if step == 3:  # after the step-2 checkpoint and one more (lost) step
            raise Stop

    with pytest.raises(Stop):
        train(cfg(tmp_path / "b", **common), tiny_settings, on_step=kill_after_step_3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "b" / "run")] == [2]
    resumed_steps = []
    resumed = train(cfg(tmp_path / "b", resume=True, **common), tiny_settings,
                    on_step=lambda step, info: resumed_steps.append(step))
    assert resumed_steps == [3, 4, 5, 6]
    a, b = state_of(full), state_of(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert full.metrics["validation"]["all"]["accuracy"] == resumed.metrics["validation"]["all"]["accuracy"]
    # the metrics of the replayed step are the same as in the uninterrupted run
    rows_a = {r["step"]: r for r in map(json.loads, (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines())
              if "train/loss" in r}
    rows_b = [r for r in map(json.loads, (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines())
              if "train/loss" in r]
    assert rows_b[-1]["train/loss"] == pytest.approx(rows_a[6]["train/loss"], abs=1e-6)
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]  # the replayed step 3 is logged once


def test_frozen_layer_cache_trains_exactly_like_the_full_forward(tiny_settings, tmp_path):
    common = dict(data=["seed:12"], batch_size=4, max_steps=3, lora_layers=1, learning_rate=1e-3,
                  lora_target_modules=["q_proj", "v_proj", "down_proj"])
    cached = train(cfg(tmp_path / "a", cache_frozen_layers=True, **common), tiny_settings)
    plain = train(cfg(tmp_path / "b", cache_frozen_layers=False, **common), tiny_settings)
    a, b = state_of(cached), state_of(plain)
    assert all(".layers.1." in n for n in a if "lora_" in n)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_every_loss_option_runs_and_publishes(tiny_settings, tmp_path):
    pairs = tmp_path / "margins.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A good answer {i}.",
                                         "rejected": "No.", "margin": float(i % 3)}) + "\n" for i in range(12)))
    result = train(cfg(tmp_path, data=[f"m={pairs}", "seed:8"], batch_size=4, max_steps=2, use_margin=True,
                       label_smoothing=0.1, lm_loss_coef=0.5, center_rewards_coef=0.01, publish=True,
                       report_to=["jsonl", "tensorboard"], validation_fraction=0.3, eval_steps=1),
                   tiny_settings, command="make train-reward")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/lm_loss" in r for r in rows) and any(k.startswith("eval/") for r in rows for k in r)
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    v = Registry(tiny_settings.versions_dir, package_dir=None).get(result.version.name, kind="reward")
    card = v.card
    assert card["kind"] == "reward" and card["command"] == "make train-reward"
    assert card["base_model"] == tiny_settings.base_model and card["config"]["lm_loss_coef"] == 0.5
    assert {d["name"] for d in card["data"]} == {"m", "seed"} and "validation" in card["metrics"]


def test_eval_only_prints_the_report_and_a_last_line(tiny_settings, tmp_path):
    train(cfg(tmp_path, data=["seed:16"], batch_size=4, max_steps=2, publish=True, name="reward-v4"), tiny_settings)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"Answer {i}", "rejected": "no"}) + "\n"
                            for i in range(7)))
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["--eval-only", "--reward-model", "reward-v4", "--data", str(data), "--base-model",
                   tiny_settings.base_model, "--data-dir", str(tiny_settings.data_dir), "--device", "cpu",
                   "--dtype", "float32", "--no-progress"])
    text = out.getvalue()
    assert rc == 0, text
    assert "calibration" in text and "mean margin" in text
    assert re.fullmatch(r"accuracy=[01]\.\d{4} n=7", text.strip().splitlines()[-1]), text
    with redirect_stdout(io.StringIO()):
        assert main(["--eval-only", "--reward-model", "reward-v4", "--data", str(tmp_path / "missing.jsonl"),
                     "--base-model", tiny_settings.base_model, "--data-dir", str(tiny_settings.data_dir)]) == 2
    # training can continue from a published reward model; the card names it as the parent
    more = train(cfg(tmp_path / "more", data=["seed:16"], batch_size=4, max_steps=1, publish=True,
                     reward_model="reward-v4"), tiny_settings)
    assert more.version.name == "reward-v5" and more.version.card["parent"] == "reward-v4"


def test_every_flag_has_help_and_the_shared_settings_are_there():
    parser = build_parser()
    flags = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}
    for needed in ["--data", "--lora-r", "--lora-alpha", "--lora-dropout", "--lora-target-modules", "--learning-rate",
                   "--warmup-ratio", "--lr-scheduler", "--epochs", "--max-steps", "--batch-size", "--grad-accumulation",
                   "--max-length", "--group-by-length", "--use-margin", "--label-smoothing", "--lm-loss-coef",
                   "--center-rewards-coef", "--load-in-4bit", "--seed", "--save-steps", "--resume", "--report-to",
                   "--eval-only", "--reward-model", "--name", "--base-model", "--data-dir"]:
        assert needed in flags, needed
    assert all(a.help and len(a.help) > 10 for a in flags.values()), [f for f, a in flags.items() if not a.help]
    args = parser.parse_args(["--data", "seed", "--data", "x.jsonl:5", "--lora-target-modules", "q_proj", "v_proj"])
    assert args.data == ["seed", "x.jsonl:5"] and args.lora_target_modules == ["q_proj", "v_proj"]
    assert parser.parse_args([]).data is None  # default (seed) is filled in by config_from_args


def test_schedule_and_calibration():
    f = lr_lambda("cosine", warmup=2, total=10)
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0 and f(10) == pytest.approx(0.0) and 0 < f(6) < 1
    assert lr_lambda("linear", 0, 10)(5) == pytest.approx(0.5) and lr_lambda("constant", 0, 10)(9) == 1.0
    rows = calibration([3.0, 2.0, 0.1, 2.0], [0.0, 2.05, 0.0, 0.0], buckets=2)  # margins 3, -0.05, 0.1, 2
    assert [r["n"] for r in rows] == [2, 2] and [r["accuracy"] for r in rows] == [0.5, 1.0]
    assert 0.5 < rows[0]["predicted"] < rows[1]["predicted"]


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def test_checkpoints_are_pruned_and_a_corrupt_one_falls_back(tiny_settings, tmp_path, caplog):
    from rlhf_demo.base_model import load_base_model
    from training.roles import RewardModel, ScalarHead, lora_config

    base, _ = load_base_model(tiny_settings)
    rm = RewardModel.create(base, lora_config(r=4, alpha=8, target_modules=["q_proj"]))
    opt = torch.optim.AdamW([p for _, p in rm.trainable_parameters()], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    saved = {}
    for step in (1, 2, 3, 4):
        with torch.no_grad():
            rm.head.linear.bias.fill_(float(step))
        ckpt.save_checkpoint(tmp_path, step, model=rm.model, adapters=["reward"], modules={"head": rm.head},
                             optimizer=opt, scheduler=sched, extra={"moments": {"count": step}}, keep_last=3)
        saved[step] = float(rm.head.linear.bias.detach())
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3, 4]
    newest = ckpt.list_checkpoints(tmp_path)[-1][1]
    data = (newest / "module-head.safetensors").read_bytes()
    (newest / "module-head.safetensors").write_bytes(data[: len(data) // 2])
    head = ScalarHead(32)
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        got = ckpt.load_checkpoint(tmp_path, model=rm.model, modules={"head": head}, optimizer=opt, scheduler=sched)
    assert got.step == 3 and got.extra == {"moments": {"count": 3}} and float(head.linear.bias.detach()) == saved[3]
    assert "step-0000004 is unusable" in caplog.text and "falling back to step-0000003" in caplog.text
    assert got.skipped and "SHA-256" in got.skipped[0]
    for _, path in ckpt.list_checkpoints(tmp_path):
        (path / "state.json").write_text("{")
    with pytest.raises(ckpt.CheckpointError, match="every checkpoint is corrupt"):
        ckpt.load_checkpoint(tmp_path, model=rm.model, modules={"head": head})
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "elsewhere")


def test_rng_state_round_trips():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a


# ---------------------------------------------------------------------------------------------
# QLoRA on CPU (bitsandbytes 0.50 runs NF4 there)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_qlora_path_trains_on_cpu(tiny_settings, tmp_path):
    import dataclasses

    settings = dataclasses.replace(tiny_settings, load_in_4bit=True)
    losses = []
    result = train(cfg(tmp_path, data=["seed:8"], batch_size=4, max_steps=3, validation_fraction=0.0,
                       learning_rate=5e-3), settings, on_step=lambda s, i: losses.append(i["loss"]))
    base = result.reward_model.model.get_base_model()
    assert getattr(base, "is_loaded_in_4bit", False)
    assert len(losses) == 3 and all(l == l for l in losses)  # finite
    assert (result.model_dir / "score_head.safetensors").is_file()
