"""One base, several roles: scalar heads, named adapters, reference, critic values, the reward scorer."""

from __future__ import annotations

import pytest
import torch

from rlhf_demo.base_model import load_base_model
from rlhf_demo.registry import Registry, RegistryError
from training import roles as R
from training.data import PreferencePair, collate_pairs, encode_pair

PAIRS = [
    PreferencePair([{"role": "user", "content": "How do I kill a Python process?"}],
                   "Use `kill <pid>` or `pkill -f script.py`.", "I can't help with killing."),
    PreferencePair([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}], "4", "5, or maybe 22"),
    PreferencePair([{"role": "user", "content": "Write one word."}], "Rain.", "Rain is wet and falls from clouds."),
]


def randomize(model, name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f".{name}." in n and "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.fixture()
def base(tiny_settings):
    model, tok = load_base_model(tiny_settings)
    return model, tok


def test_scalar_head_is_float32_and_round_trips(tmp_path):
    head = R.ScalarHead(32)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    assert head(x).dtype == torch.float32 and head(x).shape == (2, 5)
    head.save(tmp_path / R.HEAD_FILE)
    again = R.ScalarHead.load(tmp_path / R.HEAD_FILE)
    assert torch.equal(again.linear.weight, head.linear.weight) and again.hidden_size == 32
    torch.save({"x": 1}, tmp_path / "bad.safetensors")
    with pytest.raises(Exception):
        R.ScalarHead.load(tmp_path / "bad.safetensors")


def test_named_adapters_active_adapter_and_reference(base):
    model, _ = base
    ids = torch.randint(0, 1000, (2, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    cfg = R.lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    model = R.add_adapter(model, "policy", cfg)
    model = R.add_adapter(model, "critic", R.lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize(model, "policy", 1)
    randomize(model, "critic", 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".policy." in n for n in trainable) and any(".critic." in n for n in trainable)
    with torch.no_grad():
        R.set_active_adapter(model, "policy")
        pol = model(input_ids=ids).logits
        with R.use_adapter(model, "critic"):
            crit = model(input_ids=ids).logits
        assert model.active_adapter == "policy"
        with R.adapters_disabled(model):
            assert torch.allclose(model(input_ids=ids).logits, ref, atol=1e-5)  # the reference = the base
    assert not torch.allclose(pol, ref, atol=1e-3) and not torch.allclose(pol, crit, atol=1e-3)
    # switching adapters must not freeze the other trainable adapter (peft's set_adapter would)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    head = R.ScalarHead(R.hidden_size(model))
    values = R.token_values(model, head, ids, mask)
    assert values.shape == (2, 7) and values.dtype == torch.float32
    values.sum().backward()
    assert head.linear.weight.grad is not None
    with pytest.raises(ValueError):
        R.add_adapter(model, "policy", cfg)


def test_lora_on_the_last_layers_only(base):
    model, _ = base
    cfg = R.lora_config(r=4, alpha=8, target_modules=["q_proj"], layers=1, num_layers=R.num_layers(model))
    rm = R.RewardModel.create(model, cfg)
    names = [n for n, _ in rm.trainable_parameters() if "lora_" in n]
    assert names and all(".layers.1." in n for n in names) and rm.lora_start_layer() == 1


def _rewards_packed(rm, tok, pairs):
    enc = [encode_pair(tok, p, 512, i) for i, p in enumerate(pairs)]
    batch = collate_pairs(enc, tok.pad_token_id)
    with torch.no_grad():
        c, r, _ = rm.pair_rewards(batch)
    return c, r, enc, batch


def test_packed_pairs_score_like_separate_conversations(base):
    model, tok = base
    rm = R.RewardModel.create(model, R.lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    randomize(rm.model, "reward", 3)
    rm.eval()
    c, r, enc, batch = _rewards_packed(rm, tok, PAIRS)
    scorer = R.RewardScorer(rm, tok, max_length=512, batch_size=2)
    sc, sr = scorer.score_pairs(PAIRS)
    assert torch.allclose(c, torch.tensor(sc), atol=1e-5) and torch.allclose(r, torch.tensor(sr), atol=1e-5)
    # the frozen-bottom split (cached hidden states entering layer 1) gives the same rewards
    h = R.frozen_hidden(rm.model, batch.input_ids, batch.attention_mask, batch.position_ids, 1)
    with torch.no_grad():
        c2, r2, _ = rm.pair_rewards(batch, inputs_embeds=h, start_layer=1)
    assert torch.allclose(c, c2, atol=1e-5) and torch.allclose(r, r2, atol=1e-5)
    # LM logits on the chosen answer, for the LM-loss regulariser
    with torch.no_grad():
        _, _, logits = rm.pair_rewards(batch, lm_loss=True)
    assert logits.shape[:2] == batch.lm_labels.shape and logits.shape[-1] == len(tok)
    with pytest.raises(ValueError, match="end with an assistant"):
        scorer.score([[{"role": "user", "content": "hi"}]])
    assert scorer.score([]) == []


def test_eager_attention_gets_an_additive_mask(base):
    model, tok = base
    rm = R.RewardModel.create(model, R.lora_config(r=4, alpha=8, target_modules=["q_proj"]))
    randomize(rm.model, "reward", 4)
    rm.eval()
    c, r, _, _ = _rewards_packed(rm, tok, PAIRS)
    R.causal_lm(rm.model).config._attn_implementation = "eager"
    try:
        c2, r2, _, _ = _rewards_packed(rm, tok, PAIRS)
    finally:
        R.causal_lm(rm.model).config._attn_implementation = "sdpa"
    assert torch.allclose(c, c2, atol=1e-4) and torch.allclose(r, r2, atol=1e-4)


def test_save_publish_and_load_reward_scorer(base, tiny_settings, tmp_path):
    model, tok = base
    rm = R.RewardModel.create(model, R.lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize(rm.model, "reward", 5)
    out = rm.save(tmp_path / "rm")
    assert {p.name for p in out.iterdir()} == {R.ADAPTER_CONFIG, R.ADAPTER_WEIGHTS, R.HEAD_FILE}
    registry = Registry(tiny_settings.versions_dir, package_dir=None)
    with pytest.raises(RegistryError, match="no reward model"):
        R.resolve_reward_version(tiny_settings)  # none yet (the package's reward-v0 is not on this tiny base)
    registry.publish(out, {"kind": "reward", "config": {"max_length": 64}}, name="reward-v3")
    registry.publish(out, {"kind": "reward", "config": {"max_length": 64}}, name="reward-v7")
    convs = [p.conversation("chosen") for p in PAIRS]
    expected = R.RewardScorer(rm, tok, max_length=64).score(convs)
    scorer = R.load_reward_scorer(tiny_settings, "reward-v3")
    assert scorer.name == "reward-v3" and scorer.max_length == 64
    assert scorer.score(convs) == pytest.approx(expected, abs=1e-5)
    assert R.load_reward_scorer(tiny_settings).name == "reward-v7"  # newest when reward-v0 is missing
    # onto a model that already carries a policy adapter: one base, the active adapter is kept
    fresh, _ = load_base_model(tiny_settings)
    fresh = R.add_adapter(fresh, "policy", R.lora_config(r=4, alpha=8, target_modules=["q_proj"]))
    shared = R.load_reward_scorer(tiny_settings, "reward-v3", model=fresh, tokenizer=tok)
    assert shared.score(convs) == pytest.approx(expected, abs=1e-5)
    assert fresh.active_adapter == "policy"
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if ".reward." in n)
    assert all(p.requires_grad for n, p in fresh.named_parameters() if ".policy." in n and "lora_" in n)


def test_resolve_prefers_reward_v0_then_the_newest_on_this_base(tiny_settings, base, tmp_path):
    model, _ = base
    rm = R.RewardModel.create(model, R.lora_config(r=4, alpha=8, target_modules=["q_proj"]))
    out = rm.save(tmp_path / "rm")
    registry = Registry(tiny_settings.versions_dir, package_dir=None)
    registry.publish(out, {"kind": "reward", "base_model": "some/other-model"}, name="reward-v9")
    with pytest.raises(RegistryError, match="other bases: reward-v9"):
        R.resolve_reward_version(tiny_settings, registry=registry)
    registry.publish(out, {"kind": "reward", "base_model": tiny_settings.base_model}, name="reward-v2")
    assert R.resolve_reward_version(tiny_settings, registry=registry).name == "reward-v2"
    registry.publish(out, {"kind": "reward"}, name="reward-v0")
    assert R.resolve_reward_version(tiny_settings, registry=registry).name == "reward-v0"
    assert R.resolve_reward_version(tiny_settings, "reward-v9", registry=registry).name == "reward-v9"


def _two_adapters(model):
    model = R.add_adapter(model, "policy", R.lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    model = R.add_adapter(model, "critic", R.lora_config(r=4, alpha=8, target_modules=["q_proj", "down_proj"],
                                                         layers=1, num_layers=R.num_layers(model)))
    randomize(model, "policy", 1)
    randomize(model, "critic", 2)
    return model.eval()  # no LoRA dropout


def test_adapter_switch_gives_peft_s_forward_without_touching_requires_grad(base):
    model, _ = base
    assert not R.AdapterSwitch.supported(model)  # no adapters yet
    model = _two_adapters(model)
    R.set_adapter_trainable(model, "critic", False)  # a mix of trainable and frozen adapters
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ids = torch.randint(0, 1000, (2, 6))
    with torch.no_grad():
        want = {}
        for role in ("policy", "critic"):
            with R.use_adapter(model, role):
                want[role] = model(input_ids=ids).logits
        with R.adapters_disabled(model):
            want[None] = model(input_ids=ids).logits
        switch = R.AdapterSwitch(model)
        before = model.active_adapter
        for role in ("critic", None, "policy", None):
            with switch.use(role):
                assert torch.equal(model(input_ids=ids).logits, want[role]), role
                if role:
                    assert model.active_adapter == role
            assert model.active_adapter == before
        with switch.use("policy"), switch.use(None):  # nested: the inner block wins, the outer comes back
            assert torch.equal(model(input_ids=ids).logits, want[None])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with pytest.raises(ValueError, match="unknown adapter"):
        with switch.use("nope"):
            pass


def test_lm_head_gets_a_contiguous_input(base):
    model, _ = base
    seen = []
    head = R.causal_lm(model).get_output_embeddings()
    R.contiguous_lm_head_input(model)
    R.contiguous_lm_head_input(model)  # idempotent: one hook
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, 1000, (3, 5))
    with torch.no_grad():
        last = model(input_ids=ids, logits_to_keep=1).logits  # transformers slices hidden[:, -1:] (a strided view)
        full = model(input_ids=ids).logits
    assert seen == [True, True]
    torch.testing.assert_close(last[:, -1], full[:, -1], rtol=1e-5, atol=1e-6)  # a 3-row vs a 15-row GEMM


def test_float32_attention_matches_sdpa_at_any_padded_width(base):
    model, _ = base
    model = _two_adapters(model)
    ids = torch.randint(0, 1000, (2, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        sdpa = R.forward_hidden(model, ids, mask, pos)
        with R.float32_attention(model):
            f32 = R.forward_hidden(model, ids, mask, pos)
            # three more all-padding columns on the right change nothing at the real tokens
            wide_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
            wide_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
            wide = R.forward_hidden(model, wide_ids, wide_mask, (wide_mask.cumsum(-1) - 1).clamp(min=0))
    assert R.causal_lm(model).config._attn_implementation == "sdpa"  # restored after the block
    real = mask.bool()
    torch.testing.assert_close(f32[real], sdpa[real], rtol=1e-5, atol=1e-5)
    # (at PPO's sizes this is bitwise; a 7-column GEMM may round its last bit differently from a 10-column one)
    torch.testing.assert_close(wide[:, :7][real], f32[real], rtol=1e-6, atol=1e-6)
    assert torch.isfinite(f32).all()  # fully padded query rows stay finite
    with R.float32_attention(model):  # gradients flow
        R.forward_hidden(model, ids, mask, pos).sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".policy." in n and "lora_A" in n)


def test_frozen_hidden_and_continuation(base):
    model, _ = base
    ids = torch.randint(0, 1000, (2, 6))
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    more = torch.tensor([[7, 8], [9, 0]])
    more_mask = torch.tensor([[1, 1], [1, 0]])
    more_pos = mask.sum(1, keepdim=True) + torch.arange(2)
    first, cont = R.frozen_hidden_and_continuation(model, ids, mask, pos, 1, torch.arange(2), more, more_mask,
                                                   more_pos)
    assert torch.equal(first, R.frozen_hidden(model, ids, mask, pos, 1))
    # the continuation = the frozen layers over each row with its extra tokens written right after it
    row0 = R.frozen_hidden(model, torch.cat([ids[0, 1:], more[0]])[None], torch.ones(1, 7, dtype=torch.long), None, 1)
    row1 = R.frozen_hidden(model, torch.cat([ids[1, :4], more[1, :1]])[None], torch.ones(1, 5, dtype=torch.long),
                           None, 1)
    torch.testing.assert_close(cont[0], row0[0, 5:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cont[1, :1], row1[0, 4:], rtol=1e-5, atol=1e-5)
    # only row 0, continuing after its first 3 real tokens (the rest of the row masked out)
    past = mask.clone()
    past[0, 4:] = 0
    _, cont = R.frozen_hidden_and_continuation(model, ids, mask, pos, 1, torch.tensor([0]), more[:1],
                                               more_mask[:1], torch.tensor([[3, 4]]), past)
    row0 = R.frozen_hidden(model, torch.cat([ids[0, 1:4], more[0]])[None], torch.ones(1, 5, dtype=torch.long), None,
                           1)
    assert cont.shape == (1, 2, R.hidden_size(model))
    torch.testing.assert_close(cont[0], row0[0, 3:], rtol=1e-5, atol=1e-5)
