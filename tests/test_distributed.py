"""Data-parallel training (training/distributed.py): the helpers on a real 2-process gloo group
(fast), and (slow) PPO, the reward model and DPO under `accelerate launch` with 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf_demo.registry import Registry
from training import distributed as dist
from test_app import free_port
from test_ppo import tiny_reward  # noqa: F401  (fixture: a random reward-v5 on the tiny base)

ROOT = Path(__file__).resolve().parents[1]
DDP_CONFIG = ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false")


def test_shard_splits_contiguously_and_covers_everything():
    items = list(range(10))
    parts = [dist.shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert dist.shard(items, 0, 1) == items
    assert [dist.shard([1], r, 2) for r in range(2)] == [[], [1]]


def test_single_process_is_a_no_op(monkeypatch):
    import torch

    from rlhf_demo.config import Settings

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    settings = Settings(device="auto")
    assert dist.init(settings) is settings and not dist.is_distributed()
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    dist.all_reduce_mean_([p])
    dist.broadcast_params_([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0] and p.tolist() == [1.0, 1.0, 1.0]
    m = {"a": 1.0}
    assert dist.all_reduce_mean(m) is m and dist.all_gather_object(5) == [5] and dist.broadcast_object(7) == 7
    assert dist.check_in_sync([p]) == []
    dist.barrier()


WORKER = r'''
import json, sys, torch
from rlhf_demo.config import Settings
from training import distributed as dist

torch.set_num_threads(1)
settings = dist.init(Settings(device="cpu"))
r, w = dist.rank(), dist.world_size()
out = {"rank": r, "world": w, "device": settings.device}
# gradients: rank r holds r+1 (and a second dtype group); the mean is 1.5 everywhere
a = torch.nn.Parameter(torch.zeros(2, 3))
b = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
c = torch.nn.Parameter(torch.zeros(1))  # no gradient: skipped
a.grad = torch.full((2, 3), float(r + 1))
b.grad = torch.arange(4, dtype=torch.float64) * (r + 1)
dist.all_reduce_mean_([a, b, c])
out["a_grad"], out["b_grad"], out["c_grad"] = a.grad.flatten().tolist(), b.grad.tolist(), c.grad
# broadcast: every rank ends with rank 0's values
p = torch.nn.Parameter(torch.full((3,), float(r)))
dist.broadcast_params_([p])
out["p"] = p.tolist()
out["metrics"] = dist.all_reduce_mean({"loss": float(r), "n": 10.0 * (r + 1)})
out["gathered"] = dist.all_gather(torch.arange(r + 1, dtype=torch.float32)).tolist()
out["run_dir"] = dist.broadcast_object(f"run-of-rank-{r}")
out["in_sync"] = dist.check_in_sync([p])
try:
    dist.check_in_sync([torch.full((2,), float(r))])
    out["diverged"] = None
except RuntimeError as exc:
    out["diverged"] = str(exc)
dist.barrier()
open(sys.argv[1] + f"/rank{r}.json", "w").write(json.dumps(out))
dist.cleanup()
'''


def test_collectives_on_a_two_process_gloo_group(tmp_path):
    # started the way torchrun / accelerate launch start a trainer: RANK, WORLD_SIZE, MASTER_* in the environment
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(ENV, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port, PYTHONPATH=str(ROOT)))
             for r in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    for out in (r0, r1):
        assert out["world"] == 2 and out["device"] == "cpu"
        assert out["a_grad"] == [1.5] * 6 and out["b_grad"] == [0.0, 1.5, 3.0, 4.5] and out["c_grad"] is None
        assert out["p"] == [0.0, 0.0, 0.0]
        assert out["metrics"] == {"loss": 0.5, "n": 15.0}
        assert out["gathered"] == [0.0, 0.0, 1.0]
        assert out["run_dir"] == "run-of-rank-0"
        assert len(out["in_sync"]) == 2 and len(set(out["in_sync"])) == 1
        assert "differ" in out["diverged"]
    assert (r0["rank"], r1["rank"]) == (0, 1)


def launch(module: str, args: dict, tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file ddp_cpu.yaml --num_processes 2 -m MODULE --flag value ...` on CPU."""
    accelerate = Path(sys.executable).parent / "accelerate"
    argv = [str(accelerate), "launch", "--config_file", str(DDP_CONFIG), "--num_processes", "2",
            "--main_process_port", str(free_port()), "-m", module]
    for key, value in args.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list):
            argv += [f"--{flag}", *map(str, value)]
        else:
            argv += [f"--{flag}", str(value)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(ENV, ACCELERATE_USE_CPU="true", PYTHONPATH=str(ROOT)))


def ppo_args(settings, reward: str, run_dir: Path, **kw) -> dict:
    args = dict(data_dir=settings.data_dir, base_model=settings.base_model, device="cpu", dtype="float32",
                reward_model=reward, iterations=3, rollout_batch_size=2, mini_batch_size=2, response_length=6,
                val_prompts=2, max_prompts=12, eval_every=2, checkpoint_every=1, critic_warmup=1, lora_r=4,
                lora_alpha=8, kl_bound=1e9, run_dir=run_dir, seed=3, guard_patience=100, max_repeated_ngrams=1.1,
                min_perplexity=0.0, max_length_pinned=1.1, threads=1)
    return {**args, **kw}


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ppo_under_accelerate_launch_with_two_cpu_processes(tiny_settings, tiny_reward, tmp_path):  # noqa: F811
    straight = tmp_path / "straight"
    res = launch("training.ppo", ppo_args(tiny_settings, tiny_reward, straight, name="rlhf-v7"), tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    summary = json.loads((straight / "summary.json").read_text())
    # one version, published once, by the main process
    assert summary["published"] == "rlhf-v7"
    registry = Registry(tiny_settings.versions_dir)
    assert registry.names("policy") == ["sft", "rlhf-v7"]
    # both processes trained on their own rollouts and ended with the same adapter weights (bitwise; the
    # trainer also checks this at every checkpoint and fails if they differ)
    prints = summary["data_parallel"]["policy_fingerprints"]
    assert summary["data_parallel"]["processes"] == 2 and len(prints) == 2 and prints[0] == prints[1]
    assert registry.get("rlhf-v7").card["data_parallel"]["processes"] == 2
    # metrics logged once per iteration (by the main process only)
    rows = metric_rows(straight)
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}) and rows[-1]["step"] == 3
    assert (straight / "curves.png").is_file()

    # kill/resume: 2 iterations, then --resume to 3 (every rank loads the main rank's checkpoint) = the straight run
    resumed = tmp_path / "resumed"
    res = launch("training.ppo", ppo_args(tiny_settings, tiny_reward, resumed, iterations=2, publish=False), tmp_path)
    assert res.returncode == 0, res.stderr[-6000:]
    res = launch("training.ppo", ppo_args(tiny_settings, tiny_reward, resumed, resume=True, name="rlhf-v8"),
                 tmp_path)
    assert res.returncode == 0, res.stderr[-6000:]
    assert "resumed from iteration 2" in res.stderr
    again = json.loads((resumed / "summary.json").read_text())
    assert again["published"] == "rlhf-v8" and registry.names("policy") == ["sft", "rlhf-v7", "rlhf-v8"]
    assert again["data_parallel"]["policy_fingerprints"] == prints
    rows_resumed = metric_rows(resumed)
    assert [r["step"] for r in rows_resumed] == [r["step"] for r in rows]
    for a, b in zip(rows, rows_resumed):
        for key in ("reward/score_mean", "objective/kl", "value/loss", "val/score"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


@pytest.mark.slow
def test_reward_model_two_processes_equal_one_process_with_gradient_accumulation(tiny_settings, tmp_path):
    """2 ranks x 1 micro-batch per step = 1 process x 2 accumulated micro-batches: rank r takes every
    2nd micro-batch of the same order, and the averaged gradient is the accumulated one."""
    from safetensors.torch import load_file

    from training.reward_model import RewardConfig, train

    common = dict(data=["seed:24"], batch_size=2, max_steps=4, save_steps=2, validation_fraction=0.2, lora_r=4,
                  lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], max_length=128, learning_rate=1e-3,
                  logging_steps=1, progress=False, seed=1)
    single = train(RewardConfig(**common, grad_accumulation=2, run_dir=tmp_path / "single", publish=False),
                   tiny_settings)
    run_dir = tmp_path / "ddp"
    res = launch("training.reward_model", dict(
        data_dir=tiny_settings.data_dir, base_model=tiny_settings.base_model, device="cpu", dtype="float32",
        **common, grad_accumulation=1, run_dir=run_dir, name="reward-v9", threads=1), tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    # published once, by the main process; both ranks ended with the same weights
    registry = Registry(tiny_settings.versions_dir)
    assert registry.names("reward") == ["reward-v9"]
    dp = registry.get("reward-v9").card["metrics"]["data_parallel"]
    assert dp["processes"] == 2 and len(set(dp["fingerprints"])) == 1
    # one metrics row per step, the same losses as the single process
    rows = [r for r in metric_rows(run_dir) if "train/loss" in r]
    rows_single = [r for r in metric_rows(tmp_path / "single") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] == [r["step"] for r in rows_single]
    for a, b in zip(rows, rows_single):
        for key in ("train/loss", "train/accuracy", "train/grad_norm", "train/lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert len(list((run_dir / "checkpoints").iterdir())) == 1  # step 2, written once
    # … and the same trained weights
    path = registry.get("reward-v9").path
    for name in ("adapter_model.safetensors", "score_head.safetensors"):
        mine, ref = load_file(str(path / name)), load_file(str(single.model_dir / name))
        assert mine.keys() == ref.keys()
        for k in mine:
            assert torch.allclose(mine[k], ref[k], rtol=1e-4, atol=1e-6), (name, k)


@pytest.mark.slow
def test_dpo_two_processes_equal_one_process_with_gradient_accumulation(tiny_settings, tmp_path):
    """DPO under `accelerate launch` (issue #16): 2 ranks x 1 micro-batch per step = 1 process x 2 accumulated
    micro-batches — the same losses, one published dpo-vN, the same trained adapter."""
    from safetensors.torch import load_file

    from training.dpo import DPOConfig, train

    common = dict(data=["seed:24"], batch_size=2, max_steps=4, save_steps=2, validation_fraction=0.2, lora_r=4,
                  lora_alpha=8, lora_target_modules=["q_proj", "v_proj"], max_length=128, learning_rate=1e-3,
                  logging_steps=1, progress=False, seed=1, eval_at_start=False)
    single = train(DPOConfig(**common, grad_accumulation=2, run_dir=str(tmp_path / "single"), publish=False),
                   tiny_settings)
    run_dir = tmp_path / "ddp"
    res = launch("training.dpo", dict(
        data_dir=tiny_settings.data_dir, base_model=tiny_settings.base_model, device="cpu", dtype="float32",
        **common, grad_accumulation=1, run_dir=run_dir, name="dpo-v9", threads=1), tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    registry = Registry(tiny_settings.versions_dir)
    assert registry.names("policy") == ["sft", "dpo-v9"]  # published once, by the main process
    rows = [r for r in metric_rows(run_dir) if "train/loss" in r]
    rows_single = [r for r in metric_rows(tmp_path / "single") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] == [r["step"] for r in rows_single]
    for a, b in zip(rows, rows_single):
        for key in ("train/loss", "train/accuracy", "train/margin"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    mine = load_file(str(registry.get("dpo-v9").path / "adapter_model.safetensors"))
    ref = load_file(str(single.model_dir / "adapter_model.safetensors"))
    assert mine.keys() == ref.keys() and mine
    for k in mine:
        assert torch.allclose(mine[k], ref[k], rtol=1e-4, atol=1e-6), k
