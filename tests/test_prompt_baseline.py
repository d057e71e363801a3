"""Grouped rollouts with a per-prompt reward baseline (--samples-per-prompt K, --prompt-baseline):
the pure math against hand-computed values, and its place in PPO's experience."""

import json

import pytest
import torch

from training import ppo
from training import prompt_baseline as PB
from training.ppo import train

from tests.test_ppo import tiny_cfg, tiny_reward  # noqa: F401  (fixture)


def test_leave_one_out_baseline_groups_of_two_and_three():
    # groups of 2: [1, 3] [10, 4] -> each answer's baseline is the other answer's score
    s2 = torch.tensor([1.0, 3.0, 10.0, 4.0])
    assert PB.prompt_baseline(s2, 2, "loo").tolist() == [3.0, 1.0, 4.0, 10.0]
    assert (s2 - PB.prompt_baseline(s2, 2, "loo")).tolist() == [-2.0, 2.0, 6.0, -6.0]
    # groups of 3: [1, 2, 6] [0, 0, 3] -> the mean of the two others
    s3 = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert PB.prompt_baseline(s3, 3, "loo").tolist() == [4.0, 3.5, 1.5, 1.5, 1.5, 0.0]
    assert (s3 - PB.prompt_baseline(s3, 3, "loo")).tolist() == [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]


def test_group_mean_baseline_and_its_relation_to_leave_one_out():
    s3 = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert PB.prompt_baseline(s3, 3, "mean").tolist() == [3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    assert PB.prompt_baseline(torch.tensor([1.0, 3.0, 10.0, 4.0]), 2, "mean").tolist() == [2.0, 2.0, 7.0, 7.0]
    # r - mean = (K-1)/K · (r - LOO): the same direction, shrunk
    loo, mean = s3 - PB.prompt_baseline(s3, 3, "loo"), s3 - PB.prompt_baseline(s3, 3, "mean")
    assert torch.allclose(mean, loo * 2 / 3)


def test_no_baseline_for_one_sample_or_none_and_bad_input_is_refused():
    s = torch.tensor([1.0, 2.0, 6.0, 0.0])
    assert PB.prompt_baseline(s, 1, "loo").tolist() == [0.0] * 4
    assert PB.prompt_baseline(s, 2, "none").tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="multiple"):
        PB.prompt_baseline(s, 3)
    with pytest.raises(ValueError, match="at least 1"):
        PB.check_groups(4, 0)
    with pytest.raises(ValueError, match="choose one of"):
        PB.prompt_baseline(s, 2, "median")


def test_group_stats_and_repeat_prompts():
    # group means 2 and 7 -> population std 2.5; within-group stds 1 and 3 -> mean 2
    stats = PB.group_stats(torch.tensor([1.0, 3.0, 10.0, 4.0]), 2)
    assert stats == {"reward/prompt_baseline_std": pytest.approx(2.5), "reward/within_prompt_std": pytest.approx(2.0)}
    assert PB.repeat_prompts(["a", "b"], 2) == ["a", "a", "b", "b"]
    assert PB.repeat_prompts(["a", "b"], 1) == ["a", "b"]


def spy_experiences(monkeypatch) -> list:
    """Wrap ``ppo.make_experience`` so that each call's ``(roles, rollout, experience)`` is kept; returns the list."""
    seen = []
    real = ppo.make_experience

    def spy(roles, ro, cfg, *moments):
        ex = real(roles, ro, cfg, *moments)
        seen.append((roles, ro, ex))
        return ex

    monkeypatch.setattr(ppo, "make_experience", spy)
    return seen


def test_grouped_rollouts_answer_each_prompt_k_times_and_the_score_loses_the_loo_mean(tiny_settings, tiny_reward,
                                                                                      tmp_path, monkeypatch):
    """K=2: rows 2i and 2i+1 answer the same prompt with different seeds; with no normalisation, clipping, EOS
    penalty or KL, each answer's summed reward is its score minus the other answer's score."""
    seen = spy_experiences(monkeypatch)
    cfg = tiny_cfg(tmp_path, publish=False, samples_per_prompt=2, rollout_batch_size=4, reward_normalize=False,
                   reward_clip=0.0, eos_penalty=0.0, kl_coef=0.0)
    train(cfg, tiny_settings)
    for _, ro, ex in seen:
        assert ro.prompts[0] == ro.prompts[1] and ro.prompts[2] == ro.prompts[3]
        summed = (ex.rewards * ro.response_mask).sum(1)
        s = ex.scores
        want = torch.stack([s[0] - s[1], s[1] - s[0], s[2] - s[3], s[3] - s[2]])
        assert torch.allclose(summed, want, atol=1e-5), (summed, want)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    assert {"reward/prompt_baseline_std", "reward/within_prompt_std"} <= set(rows[0])


def test_under_rloo_the_critic_learns_the_score_itself_while_the_policy_sees_the_baselined_one(
        tiny_settings, tiny_reward, tmp_path, monkeypatch):
    """--advantage rloo: the critic is a monitor. Its target is the Monte-Carlo return of the score *without* the
    prompt baseline (the other answers' scores are not in its input, so it could explain nothing of the baselined
    one), while the advantages (before whitening) keep the leave-one-out-centred return at every answer token."""
    seen = spy_experiences(monkeypatch)
    cfg = tiny_cfg(tmp_path, publish=False, samples_per_prompt=2, rollout_batch_size=4, reward_normalize=False,
                   reward_clip=0.0, eos_penalty=0.0, kl_coef=0.0, advantage="rloo", whiten_advantages=False)
    train(cfg, tiny_settings)
    assert seen
    for _, ro, ex in seen:
        m = ro.response_mask.bool()
        s = ex.scores
        centred = torch.stack([s[0] - s[1], s[1] - s[0], s[2] - s[3], s[3] - s[2]])
        for i in range(4):
            # every answer token: the critic's target is the raw score (no bootstrap from its own values) ...
            assert torch.allclose(ex.returns[i][m[i]], s[i].expand(int(m[i].sum())), atol=1e-5), (i, ex.returns[i])
            # ... and the policy's advantage the centred one
            assert torch.allclose(ex.advantages[i][m[i]], centred[i].expand(int(m[i].sum())), atol=1e-5)
        assert (ex.returns[~m] == 0).all()


def test_rloo_critic_targets_use_their_own_running_moments(tiny_settings, tiny_reward, tmp_path, monkeypatch):
    """With reward normalisation, the baselined scores and the critic's raw scores are normalised on separate
    running moments: the critic's target is (score - μ_raw) / σ_raw, clipped, whatever the baseline's moments are."""
    seen = []
    real = ppo.make_experience

    def spy(roles, ro, cfg, moments, value_moments):
        before = value_moments.state_dict()
        ex = real(roles, ro, cfg, moments, value_moments)
        seen.append((ro, ex, before, value_moments.state_dict(), moments.state_dict()))
        return ex

    monkeypatch.setattr(ppo, "make_experience", spy)
    cfg = tiny_cfg(tmp_path, publish=False, samples_per_prompt=2, rollout_batch_size=4, eos_penalty=0.0,
                   kl_coef=0.0, advantage="rloo", reward_clip=5.0)
    train(cfg, tiny_settings)
    for ro, ex, _before, after, base_moments in seen:
        assert after != base_moments  # two running moments, not one
        mom = ppo.L.RunningMoments()
        mom.load_state_dict(after)
        want = ((ex.scores - mom.mean) / mom.std).clamp(-5.0, 5.0)
        m = ro.response_mask.bool()
        for i in range(4):
            assert torch.allclose(ex.returns[i][m[i]], want[i].expand(int(m[i].sum())), atol=1e-5)
    assert seen[-1][3]["count"] == 4 * len(seen)  # every raw score counted once


def test_one_sample_per_prompt_never_touches_the_baseline(tiny_settings, tiny_reward, tmp_path, monkeypatch):
    """K=1 (the default) is the old path: no baseline computed, no group metrics, one prompt per answer."""
    monkeypatch.setattr(PB, "prompt_baseline", lambda *a, **k: (_ for _ in ()).throw(AssertionError("called")))
    train(tiny_cfg(tmp_path, publish=False), tiny_settings)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    assert "reward/prompt_baseline_std" not in rows[0]
    assert ppo.PPOConfig().samples_per_prompt == 1


def test_a_batch_that_does_not_split_into_groups_is_an_error_line(tiny_settings, capsys):
    assert ppo.main(["--samples-per-prompt", "3", "--rollout-batch-size", "16", "--reward-model", "toy:blue",
                     "--no-publish", "--data-dir", str(tiny_settings.data_dir),
                     "--base-model", tiny_settings.base_model]) == 2
    assert "multiple" in capsys.readouterr().err


def _toy_run(tmp_path, tokenizer, tmp_path_factory, **overrides) -> list[dict]:
    """The toy reward of tests/test_ppo_learning.py with that test's settings, 4 prompts × 4 answers per iteration and
    the leave-one-out baseline (plus ``overrides``); every metrics row, iteration 0 first."""
    from rlhf_demo.config import Settings
    from tests.test_ppo_learning import build_few_word_model

    model = build_few_word_model(tmp_path_factory.mktemp("few-word-model"), tokenizer)
    settings = Settings(data_dir=tmp_path, base_model=str(model), device="cpu", dtype="float32")
    cfg = ppo.PPOConfig(**{**dict(
        reward_model="toy:blue", iterations=36, rollout_batch_size=16, mini_batch_size=8, response_length=8, lora_r=4,
        lora_alpha=8, policy_lr=5e-4, critic_lr=5e-3, val_prompts=3, eval_every=1000, checkpoint_every=1000,
        kl_bound=1e9, publish=False, seed=0, run_dir=str(tmp_path / "run"), guard_patience=1000,
        max_repeated_ngrams=1.1, min_perplexity=0.0, max_length_pinned=1.1, samples_per_prompt=4,
        prompt_baseline="loo"), **overrides})
    train(cfg, settings)
    return [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ppo_learns_the_toy_reward_with_grouped_rollouts(tmp_path, tokenizer, tmp_path_factory):
    """--samples-per-prompt 4 (4 prompts × 4 answers per iteration, leave-one-out baseline) still learns the known
    toy reward of tests/test_ppo_learning.py, with that test's settings otherwise."""
    import statistics

    rows = _toy_run(tmp_path, tokenizer, tmp_path_factory)[1:]
    reward = [r["reward/score_mean"] for r in rows]
    first, last = reward[:8], reward[-8:]
    noise = max(statistics.stdev(first), statistics.stdev(last))
    assert statistics.mean(last) - statistics.mean(first) > 3 * noise, (reward, noise)
    assert statistics.mean(last) > 0.6, reward
    assert all("reward/within_prompt_std" in r for r in rows)


def test_the_rloo_advantage_is_the_rest_of_the_answer_s_return_by_hand():
    """--advantage rloo: GAE with no values and γ = λ = 1 is each token's sum of the rewards still to come."""
    from training import losses as L

    rewards = torch.tensor([[-0.1, -0.2, 3.0, 0.0], [0.5, -1.0, 0.0, 0.0]])  # KL penalties, then the score
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, _ = L.gae(rewards, torch.zeros_like(rewards), mask, 1.0, 1.0)
    assert adv.flatten().tolist() == pytest.approx([2.7, 2.8, 3.0, 0.0, -0.5, -1.0, 0.0, 0.0])


def test_rloo_advantage_needs_a_prompt_baseline(tiny_settings, capsys):
    base = ["--reward-model", "toy:blue", "--no-publish", "--data-dir", str(tiny_settings.data_dir),
            "--base-model", tiny_settings.base_model, "--advantage"]
    assert ppo.main(base + ["rloo"]) == 2  # one answer per prompt: nothing to leave out
    assert "--advantage rloo needs a prompt baseline" in capsys.readouterr().err
    assert ppo.main(base + ["vtrace"]) == 2
    assert "'gae' or 'rloo'" in capsys.readouterr().err
    assert ppo.main(base + ["gae", "--group-std-scale"]) == 2  # one answer per prompt: no group to scale by
    assert "--group-std-scale needs grouped rollouts" in capsys.readouterr().err


@pytest.mark.slow
def test_ppo_learns_the_toy_reward_with_the_rloo_advantage(tmp_path, tokenizer, tmp_path_factory):
    """--advantage rloo (no critic value in the advantage) learns the toy reward too, and the greedy readout on
    fixed training prompts rises with it."""
    import statistics

    all_rows = _toy_run(tmp_path, tokenizer, tmp_path_factory, advantage="rloo", critic_warmup=0)
    rows = all_rows[1:]
    reward = [r["reward/score_mean"] for r in rows]
    first, last = reward[:8], reward[-8:]
    noise = max(statistics.stdev(first), statistics.stdev(last))
    assert statistics.mean(last) - statistics.mean(first) > 3 * noise, (reward, noise)
    readout = [r["train/readout_score"] for r in all_rows if "train/readout_score" in r]
    assert len(readout) == 2 and readout[1] - readout[0] > 0.5, readout


def test_group_std_by_hand():
    # k=2: groups [1, 3] (population std 1) and [6, 6] (std 0, floored at 1e-6)
    s = torch.tensor([1.0, 3.0, 6.0, 6.0])
    assert torch.allclose(PB.group_std(s, 2), torch.tensor([1.0, 1.0, 1e-6, 1e-6]))
    # k=3: [0, 3, 6] -> std sqrt(6); [1, 1, 4] -> std sqrt(2)
    s3 = torch.tensor([0.0, 3.0, 6.0, 1.0, 1.0, 4.0])
    assert torch.allclose(PB.group_std(s3, 3), torch.tensor([6.0 ** 0.5] * 3 + [2.0 ** 0.5] * 3))
    # what --group-std-scale does to two prompts whose answers differ by 10 and by 2: the same advantages
    two = torch.tensor([10.0, 0.0, 2.0, 0.0])
    scaled = (two - PB.prompt_baseline(two, 2, "loo")) / PB.group_std(two, 2)
    assert scaled.tolist() == [2.0, -2.0, 2.0, -2.0]
    assert PB.group_std(s, 1).tolist() == [1.0] * 4
