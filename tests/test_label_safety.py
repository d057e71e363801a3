"""--label-safety: the safety term from the training prompts' data-set kinds and rules-v2's explicit declines."""

import json
from types import SimpleNamespace

import pytest
import torch

from training import label_safety as LS
from training.actor_critic import ActorCriticRoles
from training.ppo import PPOConfig, train
from training.ppo_data import labelled_pool, prompt_pool
from tests.test_ppo import tiny_cfg, tiny_reward  # noqa: F401  (fixture: a random reward-v5 on the tiny base)


def conv(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_prompt_sign_from_the_data_set_kind():
    assert [LS.prompt_sign(c) for c in ("harmful", "Unsafe", "harmless", "sensitive", "ordinary", "helpful")] == \
        [1, 1, 1, -1, -1, -1]
    assert LS.prompt_sign(None) == 0 and LS.prompt_sign("") == 0


def test_label_term_hand_computed():
    signs = [1, 1, -1, -1, 0, 1, -1]
    verdicts = ["refusal", "other", "refusal", "other", "refusal", "empty", "empty"]
    # harmful: refusal +s, answer -s; safe: refusal -s, answer +s; unlabelled 0; empty -s on either kind
    assert LS.label_term(signs, verdicts, 2.0).tolist() == [2.0, -2.0, -2.0, 2.0, 0.0, -2.0, -2.0]


def test_answer_verdicts():
    assert LS.answer_verdict("I'm sorry, but I can't help with that request.", "How do I make a pipe bomb?") == \
        "refusal"
    assert LS.answer_verdict("   ", "anything") == "empty"
    assert LS.answer_verdict("Put the egg in boiling water for 9 minutes, then cool it in cold water.",
                             "How do I boil an egg?") == "other"


def test_from_pool_drops_requests_labelled_both_ways_and_scores_conversations():
    pool = [[{"role": "user", "content": p}] for p in ("bomb", "egg", "twice", "twice", "nolabel")]
    term = LS.LabelSafety.from_pool(pool, ["harmful", "ordinary", "harmful", "sensitive", None], 3.0)
    assert term.labels == {"bomb": 1, "egg": -1}
    scores = term.score([conv("bomb", "I can't help with that."), conv("bomb", "Mix these: ..."),
                         conv("egg", "I can't help with that."), conv("egg", "Boil it for 9 minutes."),
                         conv("twice", "I can't help with that."), conv("not in the pool", "")])
    assert scores.tolist() == [3.0, -3.0, -3.0, 3.0, 0.0, 0.0]
    assert term.stats() == {"reward/label_explicit_refusals": pytest.approx(2 / 4),
                            "reward/label_coverage": pytest.approx(4 / 6),
                            "reward/label_explicit_refusals_harmful": pytest.approx(1 / 2),
                            "reward/label_explicit_refusals_safe": pytest.approx(1 / 2)}
    term.score([conv("bomb", "I can't help with that."), conv("nolabel", "I can't help with that.")])
    assert term.stats() == {"reward/label_explicit_refusals": 1.0, "reward/label_coverage": 0.5,
                            "reward/label_explicit_refusals_harmful": 1.0}  # no safe prompt in the batch
    with pytest.raises(ValueError, match="no training prompt has a known kind"):
        LS.LabelSafety.from_pool(pool[:1], [None], 3.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        LS.LabelSafety({"x": 1}, 0.0)


def test_the_term_adds_to_the_reward_and_is_kept_as_the_safety_part():
    roles = SimpleNamespace(scorer=SimpleNamespace(safety=None), label_safety=None, last_safety=None)
    raw = torch.tensor([0.5, -1.0])
    convs = [conv("bomb", "I can't help with that."), conv("egg", "I can't help with that.")]
    assert torch.equal(ActorCriticRoles._finish(roles, convs, raw), raw) and roles.last_safety is None
    roles.label_safety = LS.LabelSafety({"bomb": 1, "egg": -1}, 2.0)
    total = ActorCriticRoles._finish(roles, convs, raw)
    assert total.tolist() == [2.5, -3.0] and roles.last_safety.tolist() == [2.0, -2.0]


def test_attach_refuses_a_toy_or_a_composed_reward():
    pool, kinds = [[{"role": "user", "content": "bomb"}]], ["harmful"]
    with pytest.raises(ValueError, match="toy"):
        LS.attach(SimpleNamespace(scorer=SimpleNamespace(), reward_name="toy:yes"), pool, kinds, 1.0)
    composed = SimpleNamespace(scorer=SimpleNamespace(reward_model=object(), safety=object()), reward_name="reward-v2")
    with pytest.raises(ValueError, match="composed reward"):
        LS.attach(composed, pool, kinds, 1.0)
    plain = SimpleNamespace(scorer=SimpleNamespace(reward_model=object(), safety=None), reward_name="reward-v0")
    LS.attach(plain, pool, kinds, 1.0)
    assert plain.label_safety.labels == {"bomb": 1}
    with pytest.raises(ValueError, match="--label-safety"):
        PPOConfig(label_safety=-1.0).check_combinations()


def test_labelled_pool_gives_each_training_prompt_its_kind_and_keeps_validation_out(tiny_settings):
    from training.data import load_prompts

    cfg = PPOConfig(prompts=["seed"], val_prompts=6, seed=1)
    train_prompts, val, kinds = labelled_pool(cfg, tiny_settings)
    assert (train_prompts, [v.messages for v in val]) == tuple(
        [x if i == 0 else [v.messages for v in x] for i, x in enumerate(prompt_pool(cfg, tiny_settings))])
    kind_of = {it.messages[-1]["content"]: it.category for it in load_prompts(["seed"], settings=tiny_settings)}
    assert kinds == [kind_of[m[-1]["content"]] for m in train_prompts] and set(kinds) >= {"harmful", "ordinary"}
    term = LS.LabelSafety.from_pool(train_prompts, kinds, 1.0)
    assert not {v.messages[-1]["content"] for v in val} & set(term.labels)  # validation labels stay out


def test_ppo_run_with_label_safety_logs_the_term(tiny_settings, tiny_reward, tmp_path, monkeypatch):
    monkeypatch.setattr(LS, "answer_verdict", lambda answer, prompt: "refusal")  # every answer an explicit decline
    summary = train(tiny_cfg(tmp_path, label_safety=3.0, publish=False, iterations=2,
                             prompts=["seed"]), tiny_settings)
    assert summary["iterations"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    for r in rows:
        assert r["reward/label_coverage"] == 1.0 and r["reward/label_explicit_refusals"] == 1.0
        # 4 rollouts, each +3 (harmful prompt) or -3 (another kind): the mean is 3 * (an even count - 4) / 4
        k = r["reward/safety_mean"] * 4 / 3
        assert abs(k - round(k)) < 1e-5 and round(k) % 2 == 0 and abs(k) <= 4
        assert r["reward/rm_mean"] == pytest.approx(r["reward/score_mean"] - r["reward/safety_mean"])

