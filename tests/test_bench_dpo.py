"""bench/dpo.py: argument parsing and the pieces that need no model (the benchmark itself is run by hand)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_dpo", ROOT / "bench" / "dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPEC = dict(pairs=60, batch_size=8, eval_batch_size=16, max_length=256, beta=0.1, learning_rate=2e-4, lora_r=16,
            lora_alpha=32, lora_layers=8, seed=0, threads=1, bf16=True)


def test_help_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "dpo.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--pairs", "--eval-pairs", "--trl-path", "--trl-gradient-checkpointing", "--no-trl-group-by-length",
                 "--no-trl-precompute-ref", "--rounds", "--threads", "--data-dir", "--skip-trl"):
        assert flag in out.stdout
    assert ".cache/bench/trl-1.16.0" in out.stdout
    assert "[--worker" not in out.stdout  # internal flag, hidden from the usage line


def test_ours_config_matches_the_spec_and_builds_a_dpo_config(tmp_path):
    from training.dpo import DPOConfig

    bench = load_bench()
    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    kw = bench.ours_config_kwargs(SPEC, fields, "train.jsonl", "held.jsonl", str(tmp_path / "run"))
    cfg = DPOConfig(**kw)
    assert cfg.max_steps == math.ceil(60 / 8) == 8
    assert (cfg.batch_size, cfg.lora_r, cfg.lora_alpha, cfg.lora_layers, cfg.beta) == (8, 16, 32, 8, 0.1)
    assert cfg.validation_fraction == 0.0 and cfg.eval_data == ["heldout=held.jsonl"]
    assert cfg.warmup_ratio == 0.0 and cfg.lr_scheduler == "cosine"  # transformers' warm-up starts at lr 0
    assert not cfg.publish and not cfg.eval_at_start and cfg.save_steps == 0 and not cfg.gradient_checkpointing
    threads = bench.config_field(fields, "threads", "num_threads")
    assert getattr(cfg, threads) == 1
    assert bench.ours_config_kwargs(dict(SPEC, lora_layers=0), fields, "a", "b", "c")["lora_layers"] is None


def test_config_field_and_unknown_fields_fail_loudly():
    bench = load_bench()
    assert bench.config_field({"num_threads", "beta"}, "threads", "num_threads") == "num_threads"
    with pytest.raises(SystemExit, match="none of the fields"):
        bench.config_field({"beta"}, "threads", "num_threads")
    with pytest.raises(SystemExit, match="no fields"):
        bench.ours_config_kwargs(SPEC, {"threads"}, "a", "b", "c")


def test_trl_length_and_take_pairs():
    bench = load_bench()
    assert bench.trl_length(10, 3, 7) == 17  # prompt + the longer answer: TRL pads chosen and rejected together
    assert bench.take_pairs(list(range(5)), list(range(4)), 3, 2) == ([0, 1, 2], [0, 1])
    with pytest.raises(SystemExit, match="only 5 training / 4 held-out"):
        bench.take_pairs(list(range(5)), list(range(4)), 6, 2)


def run(wall, cpu, peak, pairs=64, acc=None):
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "models_rss_mb": peak / 2, "pairs": pairs,
            "steps": 8, "own_accuracy": acc}


def test_summary_ratios_and_verdict():
    bench = load_bench()
    runs = {bench.TRL: [run(64.0, 60.0, 2000.0), run(32.0, 30.0, 2200.0)],
            bench.OURS: [run(16.0, 16.0, 1000.0, acc=0.75), run(32.0, 32.0, 1100.0, acc=0.7)]}
    rows = bench.summarize(runs)
    # medians of pairs/s over rounds: TRL (1, 2) -> 1.5; ours (4, 2) -> 3; peak = the largest
    assert rows[bench.TRL]["pairs_per_s"] == 1.5 and rows[bench.OURS]["pairs_per_s"] == 3.0
    assert rows[bench.OURS]["peak_rss_mb"] == 1100.0 and rows[bench.OURS]["own_accuracy"] == 0.7
    r = bench.ratios(rows)
    assert r["speed"] == 2.0 and r["memory"] == pytest.approx(0.5)
    line = bench.verdict(r, 0.70, 0.70, 48)
    assert "2.00× pairs/s (target ≥ 1.5×: met" in line and "0.50× peak RSS (target ≤ 0.7×: met)" in line
    assert "intervals overlap: equal" in line and "+0.0 of 48 pairs" in line
    assert "[0.568, 0.818]" in line  # Wilson 95% for 34/48 (0.70 * 48 = 33.6 -> 34): 0.6929 ± 0.1247 by hand
    slow = bench.verdict({"speed": 1.2, "cpu_speed": 1.3, "memory": 0.8}, 0.5, 0.9, 48)
    assert "1.5×: MISSED" in slow and "0.7×: MISSED" in slow and "do not overlap: ours LOWER" in slow
    near = bench.verdict(r, 47 / 48, 1.0, 48)  # one pair apart at the ceiling: not a difference
    assert "intervals overlap" in near and "-1.0 of 48 pairs" in near
    assert bench.ratios({bench.OURS: rows[bench.OURS]}) is None
    text = bench.table(rows, {bench.OURS: 0.75, bench.TRL: 0.7}, 48)
    assert "| ours (training.dpo) | 3.00 |" in text and "0.750 (n=48)" in text and "| 16, 32 |" in text


def test_shared_trl_installer_refuses_a_wrong_or_broken_directory(tmp_path):
    from bench.results import ensure_trl

    (tmp_path / "trl-1.12.0.dist-info").mkdir()
    with pytest.raises(SystemExit, match="holds trl 1.12.0, not 1.16.0"):
        ensure_trl(tmp_path, "1.16.0", "bench/dpo", "pass --skip-trl")
    with pytest.raises(SystemExit, match="no trl package"):  # the version is right but the package is missing
        ensure_trl(tmp_path, "1.12.0", "bench/dpo", "pass --skip-trl")


def test_results_body_names_the_command_settings_and_load():
    import argparse

    bench = load_bench()
    args = argparse.Namespace(threads=1, rounds=1, batch_size=8, max_length=256, beta=0.1, learning_rate=2e-4,
                              lora_r=16, lora_alpha=32, lora_layers=8, bf16=True)
    trl_run = dict(run(64.0, 60.0, 2000.0), precompute_s=12.0, settings={
        "gradient_checkpointing": False, "train_sampling_strategy": "group_by_length", "sampler": "LengthGroupedSampler",
        "length_column": True, "precompute_ref_log_probs": True, "precompute_ref_batch_size": 16,
        "reference": "the base with the adapter disabled", "bf16": True, "base_dtype": "bfloat16",
        "lora_dtype": "float32", "optim": "adamw_torch", "disable_dropout": True, "loss_type": ["sigmoid"],
        "beta": 0.1, "trainable_params": 1302528, "threads": 1})
    runs = {bench.TRL: [trl_run], bench.OURS: [run(16.0, 16.0, 1000.0, acc=0.75)]}
    rows = bench.summarize(runs)
    evals = {n: {"eval/margin": 0.5, "eval/kl_token": 0.01, "eval/accuracy": 0.7} for n in runs}
    body = bench.results_body(args, cmd=".venv/bin/python bench/dpo.py --threads 1", started="2026-11-29 20:30 UTC",
                              machine_line="CPU, 2 cores", sources=["seed"], n_train=64, n_tokens=9442, n_eval=48,
                              runs=runs, rows=rows, evals=evals, text="TABLE", line="VERDICT", load=(6.1, 7.2))
    assert body.startswith("## DPO: ours vs TRL DPOTrainer (`bench/dpo.py`)")
    for part in ("`.venv/bin/python bench/dpo.py --threads 1`", "gradient checkpointing **off**", "LengthGroupedSampler",
                 "`precompute_ref_log_probs=True`", "reference precompute (12 s)", "1,302,528 trainable",
                 "Load average (1 min) 6.1 before and 7.2 after", "TABLE", "VERDICT", "9,442 tokens"):
        assert part in body, part
