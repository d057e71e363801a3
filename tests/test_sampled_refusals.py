"""scripts/sampled_refusals.py: a PPO checkpoint or a published version becomes a PEFT adapter folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("sampled_refusals", ROOT / "scripts" / "sampled_refusals.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_adapter_dir_reads_checkpoints_and_versions(tmp_path):
    mod = _script()
    ck, tmp = tmp_path / "step-0000055", tmp_path / "tmp"
    ck.mkdir(), tmp.mkdir()
    (ck / "adapter-policy.json").write_text('{"r": 16}')
    (ck / "adapter-policy.safetensors").write_bytes(b"weights")
    (ck / "adapter-critic.json").write_text('{"r": 4}')  # the critic's adapter is not the policy
    out = mod.adapter_dir(ck, tmp)
    assert out == tmp and (tmp / "adapter_config.json").read_text() == '{"r": 16}'
    assert (tmp / "adapter_model.safetensors").read_bytes() == b"weights"
    version = tmp_path / "rlhf-v1"
    version.mkdir()
    (version / "adapter_config.json").write_text("{}")
    assert mod.adapter_dir(version, tmp) == version
    with pytest.raises(SystemExit, match="neither adapter_config.json nor adapter-policy.json"):
        mod.adapter_dir(tmp_path / "missing", tmp)


def test_policy_needs_a_checkpoint():
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        _script().main(["--policies", "policy"])
