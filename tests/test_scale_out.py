"""Scale-out configs: the accelerate/DeepSpeed YAML files parse, and (slow) a 2-process DDP run on CPU with
the ddp_cpu config trains a LoRA adapter on the tiny model with gradients averaged across the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"

SCRIPT = r'''
import json, sys, torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

acc = Accelerator()  # the config decides: gloo on CPU here, NCCL on GPUs
torch.manual_seed(0)  # same init on every rank
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
model, opt = acc.prepare(model, opt)
g = torch.Generator().manual_seed(100 + acc.process_index)  # different data on every rank
ids = torch.randint(0, 1000, (2, 12), generator=g)
loss = model(input_ids=ids, labels=ids).loss
acc.backward(loss)
opt.step()
w = acc.unwrap_model(model)
lora = torch.cat([p.detach().flatten() for n, p in w.named_parameters() if "lora_" in n])
out = {"rank": acc.process_index, "world": acc.num_processes, "loss": loss.item(), "lora_sum": lora.sum().item(),
       "lora_norm": lora.norm().item()}
open(sys.argv[2] + f"/rank{acc.process_index}.json", "w").write(json.dumps(out))
acc.wait_for_everyone()
acc.end_training()  # destroys the gloo process group; without it a rank can abort at exit ("terminate called ...")
'''


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(CONFIGS / "ddp_cpu.yaml"))
    assert str(ddp.distributed_type).endswith("MULTI_GPU") and ddp.num_processes == 2
    ds = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert str(ds.distributed_type).endswith("DEEPSPEED") and ds.deepspeed_config["zero_stage"] == 2
    assert ds.mixed_precision == "bf16"
    doc = (ROOT / "docs" / "scale-out.md").read_text()
    for needle in ("ddp_cpu.yaml", "deepspeed_zero2.yaml", "--backend openai", "--lora-modules", "transformers serve"):
        assert needle in doc


@pytest.mark.slow
def test_ddp_on_cpu_averages_lora_gradients(tiny_model_dir, tmp_path):
    from test_app import free_port

    script = tmp_path / "ddp_smoke.py"
    script.write_text(SCRIPT)
    accelerate = Path(sys.executable).parent / "accelerate"
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([str(accelerate), "launch", "--config_file", str(CONFIGS / "ddp_cpu.yaml"),
                          "--main_process_port", str(free_port()), str(script), str(tiny_model_dir), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["loss"] != ranks[1]["loss"]  # different data …
    assert ranks[0]["lora_sum"] == pytest.approx(ranks[1]["lora_sum"], rel=1e-5, abs=1e-6)  # … same update
