"""training/actor_critic.py: the speed helpers give the numbers of the plain forwards."""

from __future__ import annotations

import pytest
import torch

from rlhf_demo.generation import build_prompt_ids
from rlhf_demo.registry import Registry
from training import losses as L
from training import roles as R
from training.actor_critic import ActorCriticRoles, continuation_cap, reward_continuations, suffix_batch
from training.ppo import PPOConfig, pack


def test_reward_continuations_share_the_longest_common_prefix():
    rollout = [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5], [6, 7], [6]]
    reward = [[1, 2, 3, 9, 10],  # the rollout + end-of-turn tokens: read the rollout, then [9, 10]
              [1, 2, 7, 9],      # re-encoding changed the third token: read [1, 2], then [7, 9]
              [4, 5],            # exactly the rollout: re-read its last token to score there
              [4, 5, 1, 2, 3, 4],  # a continuation longer than allowed: text path
              [8, 7, 9],         # nothing shared (e.g. a truncated prompt): text path
              [6, 9]]
    assert reward_continuations(rollout, reward, max_len=3) == [(3, [9, 10]), (2, [7, 9]), (1, [5]), None, None,
                                                                (1, [9])]
    with pytest.raises(ValueError):
        reward_continuations(rollout, reward[:2])


def test_continuation_cap_scores_the_few_long_ones_from_text():
    # SmolLM2 in the bench: 22 frozen + 8 top layers, rollouts 97 wide, conversations ~95 tokens
    width, frozen, top = 97, 22, 8
    assert continuation_cap([2, 2, 27, 36, 2, 1, 2, 2], [95] * 8, width, frozen, top) == 2  # two rows from text
    assert continuation_cap([2] * 8, [95] * 8, width, frozen, top) == 2
    assert continuation_cap([40] * 8, [95] * 8, width, frozen, top) == 40  # all long: still cheaper than text
    # a single row: 22·40 + 8·137 = 1976 token-layers from the trunk vs 30·30 = 900 from a 30-token text
    assert continuation_cap([40], [30], width, frozen, top) == 0
    assert continuation_cap([], [], width, frozen, top) == 0


def test_suffix_batch_left_aligns_the_tokens():
    ids, mask = suffix_batch([[9, 10], [11]], pad_id=0)
    assert ids.tolist() == [[9, 10], [11, 0]] and mask.tolist() == [[1, 1], [1, 0]]


@pytest.fixture()
def roles(tiny_settings, tmp_path):
    """Policy, critic and reward adapters on the top layer of the tiny base (a shared one-layer trunk)."""
    from rlhf_demo.base_model import load_base_model

    base, _ = load_base_model(tiny_settings)
    torch.manual_seed(0)
    rm = R.RewardModel.create(base, R.lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj"], layers=1,
                                                  num_layers=R.num_layers(base)))
    with torch.no_grad():
        rm.head.linear.weight.normal_(0, 1.0)
        for n, p in rm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    out = rm.save(tmp_path / "rm")
    Registry(tiny_settings.versions_dir).publish(out, {"kind": "reward", "config": {"max_length": 256}},
                                                 name="reward-v4")
    cfg = PPOConfig(reward_model="reward-v4", lora_r=4, lora_alpha=8, lora_layers=1, critic_from_reward=False)
    roles = ActorCriticRoles.build(tiny_settings, Registry(tiny_settings.versions_dir), cfg)
    with torch.no_grad():
        for p in roles.params("policy"):
            p.normal_(0, 0.2)
    return roles


def rollout_batch(tok):
    prompts = [[{"role": "user", "content": "How do I boil an egg?"}],
               [{"role": "user", "content": "Say hi."}],
               [{"role": "user", "content": "Name a colour."}]]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    answers = [tok.encode(" Put it in boiling water for nine minutes.", add_special_tokens=False) + [eos],
               tok.encode("Hello there", add_special_tokens=False),  # cut at the length limit: no <|im_end|>
               # a tokenisation that decoding and re-encoding does not reproduce ("R e d" -> "Red")
               [tok.convert_tokens_to_ids(c) for c in ["R", "e", "d"]] + [eos]]
    texts = [tok.decode([t for t in a if t != eos]) for a in answers]
    ids, attn, resp = pack([build_prompt_ids(tok, m) for m in prompts], answers, tok.pad_token_id)
    convs = [p + [{"role": "assistant", "content": t}] for p, t in zip(prompts, texts)]
    return ids, attn, resp, convs


def test_reward_reads_the_rollout_tokens_it_shares(tokenizer):
    tok = tokenizer
    ids, attn, _, convs = rollout_batch(tok)
    rows = [ids[i][attn[i].bool()].tolist() for i in range(3)]
    encoded = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in convs]
    plan = reward_continuations(rows, encoded)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    newline = tok.encode("\n", add_special_tokens=False)
    assert plan[0] == (len(rows[0]), newline)          # ended with <|im_end|>: only the newline follows
    assert plan[1] == (len(rows[1]), [end] + newline)  # cut at the limit: <|im_end|> and the newline
    k, rest = plan[2]                                   # "R e d" re-encodes as "Red": the rest is read again
    assert k < len(rows[2]) and rows[2][:k] == list(encoded[2][:k]) and rest[-2:] == [end] + newline


def test_score_and_trunk_equal_the_text_path_and_the_trunk(roles):
    assert roles.reward_shares_trunk and roles.split_layer == 1
    ids, attn, _, convs = rollout_batch(roles.tokenizer)
    scores, trunk = roles.score_and_trunk(convs, ids, attn)
    assert roles.last_shared_scores == 3
    assert torch.equal(trunk, roles.trunk(ids, attn))  # bitwise: policy, reference and critic see the same trunk
    torch.testing.assert_close(scores, roles.score(convs), rtol=1e-4, atol=1e-4)
    assert scores.std() > 0.01  # the rows do get different scores
    # a conversation that shares too little with its rollout is scored from its text
    convs[1] = [{"role": "system", "content": "Be terse. " * 40}] + convs[1]
    scores, trunk = roles.score_and_trunk(convs, ids, attn)
    assert roles.last_shared_scores == 2 and torch.equal(trunk, roles.trunk(ids, attn))
    torch.testing.assert_close(scores, roles.score(convs), rtol=1e-4, atol=1e-4)


def test_token_logprobs_equal_the_logits_path(roles):
    ids, attn, mask, _ = rollout_batch(roles.tokenizer)
    trunk = roles.trunk(ids, attn)
    valid = mask.bool()
    for role in ("policy", None):
        logits = roles.logits(role, ids, attn, trunk=trunk)[:, :-1]
        with R.float32_attention(roles.model):  # roles' forwards use it on CPU
            logits32 = roles.logits(role, ids, attn, trunk=trunk)[:, :-1]
        logp, ent = roles.token_logprobs(role, ids, attn, mask, trunk=trunk, entropy=True)
        assert torch.equal(logp[valid], L.logprobs_from_logits(logits32, ids[:, 1:])[valid])
        assert torch.equal(ent[valid], L.entropy_from_logits(logits32)[valid])
        assert (logp[~valid] == 0).all() and (ent[~valid] == 0).all()
        # and float32 attention is SDPA's function, up to rounding
        torch.testing.assert_close(logp[valid], L.logprobs_from_logits(logits, ids[:, 1:])[valid], rtol=1e-4,
                                   atol=1e-4)
    logp, _ = roles.token_logprobs("policy", ids, attn, mask, trunk=trunk, grad=True)
    logp.sum().backward()
    assert all(p.grad is not None for p in roles.params("policy"))
    assert all(p.grad is None for p in roles.params("critic"))


def test_token_logprobs_at_a_sampling_temperature_are_the_tempered_distribution(roles):
    """--temperature T: PPO scores answers under softmax(logits / T), the distribution they were sampled from."""
    ids, attn, mask, _ = rollout_batch(roles.tokenizer)
    trunk = roles.trunk(ids, attn)
    valid = mask.bool()
    with R.float32_attention(roles.model):
        logits32 = roles.logits("policy", ids, attn, trunk=trunk)[:, :-1]
    roles.logit_temperature = 0.7
    try:
        logp, _ = roles.token_logprobs("policy", ids, attn, mask, trunk=trunk)
    finally:
        roles.logit_temperature = 1.0
    torch.testing.assert_close(logp[valid], L.logprobs_from_logits(logits32 / 0.7, ids[:, 1:])[valid], rtol=1e-5,
                               atol=1e-5)
    plain, _ = roles.token_logprobs("policy", ids, attn, mask, trunk=trunk)
    assert not torch.allclose(plain[valid], logp[valid])  # and it is not the untempered one


def test_role_switching_leaves_trainable_flags_alone(roles):
    flags = {n: p.requires_grad for n, p in roles.model.named_parameters()}
    ids, attn, mask, convs = rollout_batch(roles.tokenizer)
    roles.score_and_trunk(convs, ids, attn)
    roles.values(ids, attn)
    roles.token_logprobs(None, ids, attn, mask)
    assert {n: p.requires_grad for n, p in roles.model.named_parameters()} == flags
    assert roles.params("policy") and all(p.requires_grad for p in roles.params("policy") + roles.params("critic"))
