"""scripts/publish_checkpoint.py: a kept PPO checkpoint becomes a policy version with the run's provenance."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.publish_checkpoint import checkpoint_card, main, publish_checkpoint  # noqa: E402

RUN_CARD = {"kind": "policy", "name": "rlhf-run20", "parent": "dpo-v1", "reward_model": "reward-v2",
            "reward_model_sha256": "ab" * 32, "best_step": 10, "metrics": {"best": {"step": 10}},
            "validation": {"x": 1}, "files": {"adapter_model.safetensors": "cd" * 32}, "created": "then",
            "command": "python -m training.ppo ...", "config": {"iterations": 30}}


def fake_run(tmp_path: Path, step: int) -> tuple[Path, dict]:
    ck = tmp_path / "run" / "checkpoints" / f"step-{step:07d}"
    ck.mkdir(parents=True)
    tensors = {"base_model.model.model.layers.22.mlp.down_proj.lora_A.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, str(ck / "adapter-policy.safetensors"))
    (ck / "adapter-policy.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    return tmp_path / "run", tensors


def test_card_is_the_runs_card_pointed_at_the_step(tmp_path):
    card = checkpoint_card(RUN_CARD, 8, tmp_path / "ck")
    assert card["parent"] == "dpo-v1" and card["reward_model"] == "reward-v2"
    assert card["reward_model_sha256"] == "ab" * 32 and card["command"] == RUN_CARD["command"]
    assert card["checkpoint_step"] == 8 and card["checkpoint_of"] == "rlhf-run20"
    for dropped in ("best_step", "metrics", "validation", "files", "created", "name"):
        assert dropped not in card  # they describe the run's best iteration, not this one


def test_publishes_the_checkpoint_adapter_unchanged(tmp_path):
    run_dir, tensors = fake_run(tmp_path, 8)
    v = publish_checkpoint(run_dir, RUN_CARD, 8, "rlhf-v9", tmp_path / "versions")
    assert v.name == "rlhf-v9" and v.path == tmp_path / "versions" / "rlhf-v9"
    got = load_file(str(v.path / "adapter_model.safetensors"))
    assert torch.equal(got["base_model.model.model.layers.22.mlp.down_proj.lora_A.weight"],
                       tensors["base_model.model.model.layers.22.mlp.down_proj.lora_A.weight"])
    card = json.loads((v.path / "card.json").read_text())
    assert card["checkpoint_step"] == 8 and card["parent"] == "dpo-v1" and card["name"] == "rlhf-v9"
    assert set(card["files"]) == {"adapter_model.safetensors", "adapter_config.json"}


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    run_dir, _ = fake_run(tmp_path, 8)
    card = tmp_path / "card.json"
    card.write_text(json.dumps(RUN_CARD))
    with pytest.raises(FileNotFoundError, match="step-0000006.*keep-checkpoints 0"):
        publish_checkpoint(run_dir, RUN_CARD, 6, "rlhf-v9", tmp_path / "versions")
    rc = main(["--run-dir", str(run_dir), "--card", str(card), "--step", "6", "--name", "rlhf-v9",
               "--publish-dir", str(tmp_path / "shipped")])
    assert rc == 2 and "step-0000006" in capsys.readouterr().err
    assert not (tmp_path / "shipped" / "rlhf-v9").exists()


def test_publish_dir_and_replace(tmp_path):
    run_dir, _ = fake_run(tmp_path, 8)
    card = tmp_path / "card.json"
    card.write_text(json.dumps(RUN_CARD))
    args = ["--run-dir", str(run_dir), "--card", str(card), "--step", "8", "--name", "rlhf-v9",
            "--publish-dir", str(tmp_path / "shipped")]
    assert main(args) == 0 and (tmp_path / "shipped" / "rlhf-v9" / "card.json").is_file()
    assert main(args) == 2  # the name exists: refused without --replace
    assert main(args + ["--replace", "--note", "again"]) == 0
    assert json.loads((tmp_path / "shipped" / "rlhf-v9" / "card.json").read_text())["note"] == "again"
