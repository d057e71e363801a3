"""--kl-reference: the KL penalty's reference is SFT (every adapter off) or a frozen copy of --init-policy."""

import json

import pytest
import torch

from training.ppo import PPOConfig, train

from tests.test_ppo import tiny_cfg, tiny_reward  # noqa: F401  (fixture)
from tests.test_prompt_baseline import spy_experiences


def test_kl_reference_flags_that_need_each_other_are_refused_before_loading():
    with pytest.raises(ValueError, match="--kl-reference init needs --init-policy"):
        PPOConfig(kl_reference="init").check_combinations()
    with pytest.raises(ValueError, match="'sft' or 'init'"):
        PPOConfig(kl_reference="dpo", init_policy="rlhf-v7").check_combinations()
    PPOConfig(kl_reference="init", init_policy="rlhf-v7").check_combinations()  # fine
    assert PPOConfig().kl_reference == "sft"


def _first_experience(monkeypatch, cfg, settings):
    seen = spy_experiences(monkeypatch)
    train(cfg, settings)
    roles, ro, ex = seen[0]
    return roles.kl_reference, ro, ex


def test_the_penalty_starts_at_zero_against_the_starting_policy_and_validation_still_measures_sft(
        tiny_settings, tiny_reward, tmp_path, monkeypatch):
    # a policy that has moved away from SFT: 2 iterations (1 policy update) at a large learning rate
    train(tiny_cfg(tmp_path, policy_lr=5e-2, run_dir=str(tmp_path / "start")), tiny_settings)
    common = dict(init_policy="rlhf-v7", publish=False, iterations=1, critic_warmup=0, eval_every=1)

    role, ro, ex = _first_experience(monkeypatch, tiny_cfg(tmp_path, kl_reference="init", run_dir=str(tmp_path / "a"),
                                                           **common), tiny_settings)
    mask = ro.response_mask.bool()
    assert role == "reference"
    assert torch.equal(ex.ref_logp[mask], ex.old_logp[mask])  # the frozen copy of the start: KL exactly 0
    assert float(ex.kl[mask].abs().max()) == 0.0
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["val/kl_exact"] > 1e-4  # validation's exact KL is to SFT, which the start is not

    role, ro, ex = _first_experience(monkeypatch, tiny_cfg(tmp_path, run_dir=str(tmp_path / "b"), **common),
                                     tiny_settings)
    mask = ro.response_mask.bool()
    assert role is None  # SFT
    assert float((ex.old_logp - ex.ref_logp)[mask].abs().max()) > 1e-4
