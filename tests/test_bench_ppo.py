"""bench/ppo.py: argument parsing and the pieces that need no model (the benchmark itself is run by hand)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_ppo", ROOT / "bench" / "ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "ppo.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--iterations", "--trl-path", "--trl ", "--rollout-batch-size", "--data-dir"):
        assert flag in out.stdout
    assert "pip install --no-deps --target .cache/bench/trl-1.12.0 trl==1.12.0" in out.stdout
    assert "[--worker" not in out.stdout  # internal flag, hidden from the usage line


def test_defaults_match_the_shipped_recipe():
    bench = load_bench()
    args = bench.build_parser().parse_args([])
    assert (args.rollout_batch_size, args.mini_batch_size, args.ppo_epochs, args.response_length, args.lora_layers,
            args.threads, args.dtype) == (8, 4, 2, 48, 8, 1, "bfloat16")
    assert args.data_dir == Path(".cache/test-data")
    assert args.trl_path == ROOT / ".cache" / "bench" / "trl-1.12.0"


def test_trl_variants():
    bench = load_bench()
    assert bench.parse_trl_variants("full,lora") == ["full", "lora"]
    assert bench.parse_trl_variants("lora, lora") == ["lora"]
    assert bench.parse_trl_variants("none") == []
    with pytest.raises(SystemExit):
        bench.parse_trl_variants("deepspeed")


def test_ours_config_times_full_iterations(tmp_path):
    bench = load_bench()
    spec = dict(iterations=3, warmup=1, rollout_batch_size=8, mini_batch_size=4, ppo_epochs=2, response_length=48,
                temperature=1.0, kl_coef=0.05, lora_r=16, lora_alpha=32, lora_layers=8, reward_model="reward-v0",
                threads=1, seed=0, val_prompts=16)
    cfg = bench.ours_config(spec, tmp_path)
    assert cfg.iterations == 5  # one more than run: stop_after ends the run before the end-of-run validation
    assert cfg.critic_warmup == 0 and cfg.ptx_coef == 0 and not cfg.publish
    assert (cfg.rollout_batch_size, cfg.mini_batch_size, cfg.ppo_epochs, cfg.lora_layers) == (8, 4, 2, 8)


def test_summary_drops_warmup_and_takes_the_median():
    bench = load_bench()
    s = bench.summarize({"iteration_s": [30.0, 2.0, 4.0, 3.0], "iteration_cpu_s": [9.0, 1.0, 1.0, 5.0],
                         "peak_rss_mb": 100.0, "models_rss_mb": 50.0}, warmup=1)
    assert (s["s_per_it"], s["min"], s["max"], s["cpu_per_it"]) == (3.0, 2.0, 4.0, 1.0)


def test_installed_trl_version(tmp_path):
    bench = load_bench()
    assert bench.installed_trl_version(tmp_path) is None
    (tmp_path / "trl-1.12.0.dist-info").mkdir()
    assert bench.installed_trl_version(tmp_path) == "1.12.0"
    with pytest.raises(SystemExit):
        bench.ensure_trl(tmp_path)  # the version is right but the package is missing: refuse, do not install


def test_summary_takes_the_median_of_each_phase():
    bench = load_bench()
    phases = [{"rollout": 9.0, "decode_batch": 8.0, "make_experience": 9.0, "ppo_update": 9.0},
              {"rollout": 2.0, "decode_batch": 1.5, "make_experience": 1.0, "ppo_update": 3.0},
              {"rollout": 2.2, "decode_batch": 1.7, "make_experience": 1.2, "ppo_update": 2.8},
              {"rollout": 2.4, "decode_batch": 1.9, "make_experience": 1.4, "ppo_update": 2.6}]
    s = bench.summarize({"iteration_s": [30.0, 6.0, 7.0, 8.0], "iteration_cpu_s": None, "phase_cpu_s": phases,
                         "peak_rss_mb": 1.0, "models_rss_mb": 1.0}, warmup=1)
    assert s["phases"] == {"rollout": 2.2, "decode_batch": 1.7, "make_experience": 1.2, "ppo_update": 2.8}
    assert bench.phase_line(s["phases"]) == "rollout 2.20 (decoding 1.70), experience 1.20, update 2.80"
    assert bench.phase_line(None) == ""
