"""PPO learns a reward whose answer is known: ``--reward-model toy:WORD`` on a tiny few-word model.

The model is a random 2-layer Llama built so that it starts as (roughly) a unigram model over eight
words and the end-of-turn token, with the target word rare (~2% of tokens). The toy reward pays 1 for
an answer that contains the word. PPO must raise the mean reward far beyond its iteration-to-iteration
noise within a few dozen iterations, and the critic (fresh, zero-initialised head) must explain part of
the returns' variance after its warm-up. This is the test that failed with the old defaults (policy lr
5e-5: approx-KL ~1e-7 per update, reward flat; docs/ppo-diagnosis.md).
"""

import json
import statistics

import pytest
import torch

from rlhf_demo.config import Settings
from training.ppo import PPOConfig, train
from training.roles import ToyReward

WORDS = [" blue", " red", " green", " cat", " dog", " sun", " tree", " book"]


def build_few_word_model(path, tokenizer, target=" blue", seed=0):
    """A tiny Llama whose answers are (almost) only WORDS and the end-of-turn token, ``target`` rare.

    Every token embedding has a constant first coordinate, which the final RMSNorm passes through at
    about sqrt(hidden); the LM head reads only that coordinate (plus a random part) for the nine
    tokens, and nothing for the rest of the 49k vocabulary, so those nine take ~99% of the mass and
    each one's share is set by its first-coordinate weight. The words' own embeddings carry a random
    part so that the hidden states (and the critic) can tell them apart.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    ids = [tokenizer.encode(w, add_special_tokens=False)[0] for w in WORDS]
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, 0] = 1.0
        head.zero_()
        for i in ids + [tokenizer.eos_token_id]:
            emb[i, 1:] = torch.randn(31) * 0.3
            head[i, 1:] = torch.randn(31) / 32 ** 0.5
            head[i, 0] = 5.0
        head[ids[WORDS.index(target)], 0] = 5.0 - 1.5 / 32 ** 0.5  # the target word: rare at the start
        head[tokenizer.eos_token_id, 0] = 5.0 - 1.0 / 32 ** 0.5
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def few_word_model(tmp_path_factory, tokenizer):
    return build_few_word_model(tmp_path_factory.mktemp("few-word-model"), tokenizer)


def test_toy_reward_pays_for_the_word_only():
    toy = ToyReward.parse("toy:blue")
    conv = lambda answer: [{"role": "user", "content": "say a colour"}, {"role": "assistant", "content": answer}]
    assert toy.score([conv("the sky is Blue."), conv("blueberry"), conv("red"), conv("blue-ish"), conv("")]) == \
        [1.0, 0.0, 0.0, 0.0, 0.0]
    assert toy.name == "toy:blue" and ToyReward.parse("reward-v0") is None and ToyReward.parse("") is None
    for bad in ("toy:", "toy:two words", "toy:a/b"):
        with pytest.raises(ValueError, match="one word"):
            ToyReward.parse(bad)
    with pytest.raises(ValueError, match="assistant"):
        toy.score([[{"role": "user", "content": "x"}]])


def test_ppo_learns_a_toy_reward_and_its_critic_explains_the_returns(few_word_model, tmp_path):
    """The defaults of every learning knob (critic init, warm-up, λ, epochs, clipping, whitening, KL, reward
    normalisation) are PPOConfig's; only sizes and the two learning rates (the tiny model's 32-wide hidden
    states need larger steps than SmolLM2's 576-wide ones) are set here."""
    settings = Settings(data_dir=tmp_path, base_model=str(few_word_model), device="cpu", dtype="float32")
    cfg = PPOConfig(reward_model="toy:blue", iterations=36, rollout_batch_size=16, mini_batch_size=8,
                    response_length=8, lora_r=4, lora_alpha=8, policy_lr=5e-4, critic_lr=5e-3, val_prompts=3,
                    eval_every=1000, checkpoint_every=1000, kl_bound=1e9, publish=False, seed=0,
                    run_dir=str(tmp_path / "run"), guard_patience=1000, max_repeated_ngrams=1.1, min_perplexity=0.0,
                    max_length_pinned=1.1, train_readout_samples=2)
    train(cfg, settings)
    all_rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = all_rows[1:]
    # the readout: greedy answers to the same fixed training prompts, before and after (validation at 0 and 36)
    readout = [(r["step"], r["train/readout_score"]) for r in all_rows if "train/readout_score" in r]
    assert [s for s, _ in readout] == [0, 36] and readout[1][1] - readout[0][1] > 0.5, readout
    # and the sampled readout (2 answers per readout prompt, sampled as the rollouts are, same seeds): what PPO
    # optimises rises too
    sampled = [r["train/readout_sampled_score"] for r in all_rows if "train/readout_sampled_score" in r]
    assert len(sampled) == 2 and sampled[1] - sampled[0] > 0.3, sampled
    reward = [r["reward/score_mean"] for r in rows]
    first, last = reward[:8], reward[-8:]
    # the iteration-to-iteration noise of the batch mean (16 Bernoulli answers): the larger of the two windows'
    noise = max(statistics.stdev(first), statistics.stdev(last))
    assert statistics.mean(last) - statistics.mean(first) > 3 * noise, (reward, noise)
    assert statistics.mean(last) > 0.6, reward
    # the critic predicts better than a constant: the median over the iterations after warm-up (the mean would
    # follow the single iterations where the policy jumps and the returns move away from the critic)
    after_warmup = [r["value/explained_variance"] for r in rows[cfg.critic_warmup:]]
    assert statistics.median(after_warmup) > 0.02, after_warmup
    assert max(r["policy/approx_kl"] for r in rows[cfg.critic_warmup:]) > 1e-5  # the policy really moves


def test_a_toy_reward_run_is_never_published(tiny_settings, capsys):
    from training import ppo

    assert ppo.main(["--reward-model", "toy:blue", "--data-dir", str(tiny_settings.data_dir),
                     "--base-model", tiny_settings.base_model]) == 2
    assert "--no-publish" in capsys.readouterr().err
    assert ppo.main(["--reward-model", "toy:two words", "--no-publish", "--data-dir", str(tiny_settings.data_dir),
                     "--base-model", tiny_settings.base_model]) == 2
    assert "one word" in capsys.readouterr().err
