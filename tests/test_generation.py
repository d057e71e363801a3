import threading

import pytest
import torch

from rlhf_demo.base_model import load_base_model
from rlhf_demo.generation import (GenerationError, GenerationParams, PolicyServer, Request, apply_repetition_penalty,
                                  build_prompt_ids, top_p_filter)
from rlhf_demo.registry import Registry

GREEDY = GenerationParams(max_new_tokens=12, greedy=True, repetition_penalty=1.0)
PROMPTS = ["How do I bake bread?", "Name three primary colours."]


def msgs(text):
    return [{"role": "user", "content": text}]


@pytest.fixture()
def server(embedded_settings, random_adapter):
    """The embedded model in fp32 with two random adapters published as rlhf-v0 and rlhf-v1."""
    reg = Registry(embedded_settings.versions_dir, package_dir=None)
    for seed in (1, 2):
        reg.publish(random_adapter(embedded_settings, seed, scale=2.0), {"kind": "policy", "parent": "sft"})
    model, tok = load_base_model(embedded_settings)
    srv = PolicyServer(model, tok, reg)
    yield srv
    srv.close()


def test_mixed_adapter_batch_equals_each_policy_alone(server):
    policies = ["sft", "rlhf-v0", "rlhf-v1"]
    requests = [Request(msgs(p), pol, GREEDY) for p in PROMPTS for pol in policies]
    batched = server.submit(requests)
    for s in batched:
        s.result(timeout=300)
    alone = {}
    for r in requests:
        [s] = server.submit([r])
        s.result(timeout=300)
        alone[(r.messages[0]["content"], r.policy)] = s.token_ids
    for r, s in zip(requests, batched):
        assert s.token_ids == alone[(r.messages[0]["content"], r.policy)], (r.policy, r.messages)
    by_policy = {pol: [s.token_ids for r, s in zip(requests, batched) if r.policy == pol] for pol in policies}
    assert by_policy["sft"] != by_policy["rlhf-v0"] != by_policy["rlhf-v1"], "adapters must change the output"
    assert set(server.loaded) == {"rlhf-v0", "rlhf-v1"} and all(len(h) == 16 for h in server.loaded.values())


def test_streams_deliver_text_incrementally_and_stop(server):
    [a, b] = server.submit([Request(msgs(PROMPTS[0]), "sft", GenerationParams(max_new_tokens=12, seed=3)),
                            Request(msgs(PROMPTS[1]), "rlhf-v0", GenerationParams(max_new_tokens=12, seed=3))])
    deltas = list(a)
    assert len(deltas) > 1 and "".join(deltas) == a.text and a.done and b.done
    assert a.finish_reason in ("eos", "length") and len(a.token_ids) <= 12
    assert a.first_token_s is not None and a.total_s >= a.first_token_s


def test_seeded_sampling_is_reproducible(server):
    p = GenerationParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=1234)
    one = server.generate([Request(msgs(PROMPTS[0]), "sft", p)])
    two = server.generate([Request(msgs(PROMPTS[0]), "sft", p), Request(msgs(PROMPTS[1]), "rlhf-v1", p)])
    assert one[0] == two[0]


def test_concurrent_callers_share_batches_and_all_finish(server):
    results, errors = {}, []

    def call(i):
        try:
            results[i] = server.generate([Request(msgs(PROMPTS[i % 2]), ["sft", "rlhf-v0"][i % 2], GREEDY)])[0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 4
    assert results[0] == results[2]  # same request, same answer, whatever else shared its batch
    assert results[0] == server.generate([Request(msgs(PROMPTS[0]), "sft", GREEDY)])[0]


def test_unknown_policy_and_empty_prompt_are_clear_errors(server):
    with pytest.raises(GenerationError, match="unknown policy 'rlhf-v9'; known: sft, rlhf-v0, rlhf-v1"):
        server.submit([Request(msgs("hi"), "rlhf-v9")])
    with pytest.raises(GenerationError, match="invalid version name"):
        server.submit([Request(msgs("hi"), "../../etc/passwd")])
    for empty in ["", "   \n\t"]:
        with pytest.raises(GenerationError, match="empty prompt"):
            server.submit([Request(msgs(empty), "sft")])


def test_sampling_helpers_by_hand():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    penalized = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    torch.testing.assert_close(penalized, torch.tensor([1.0, -2.0, 0.5, 0.0]))
    # probs of [ln 6, ln 3, ln 1] = [0.6, 0.3, 0.1]: top_p=0.7 keeps the first two
    kept = top_p_filter(torch.log(torch.tensor([3.0, 6.0, 1.0])), 0.7)
    assert torch.isinf(kept[2]) and not torch.isinf(kept[:2]).any()
    assert not torch.isinf(top_p_filter(torch.zeros(3), 1.0)).any()


def test_prompt_is_chat_templated_and_truncated(tokenizer):
    ids = build_prompt_ids(tokenizer, msgs("hello " * 50), max_prompt_tokens=16)
    assert len(ids) == 16
    full = build_prompt_ids(tokenizer, msgs("hello"))
    assert tokenizer.decode(full).endswith("<|im_start|>assistant\n")


# --- fast bf16 CPU decoding (PolicyServer's packed linears + single-query attention layout) ----------
def _bf16_packing_available() -> bool:
    from rlhf_demo.generation import _pack_weight

    return _pack_weight(torch.nn.Linear(64, 32).bfloat16().weight, None) is not None


needs_bf16_packing = pytest.mark.skipif(not _bf16_packing_available(),
                                        reason="this torch build/CPU has no bit-exact oneDNN bf16 linear")


@needs_bf16_packing
def test_packed_linear_is_bit_exact_repacks_on_change_and_stays_out_of_autograd():
    import copy

    from rlhf_demo.generation import _PACKED, PackedLinear, use_packed_linears

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 80), torch.nn.Linear(80, 16, bias=False)).bfloat16()
    plain = copy.deepcopy(model)
    assert use_packed_linears(model) == 2 and all(type(m) is PackedLinear for m in model)
    x = torch.randn(3, 5, 48).bfloat16()
    with torch.inference_mode():
        assert torch.equal(model(x), plain(x)) and model[0] in _PACKED  # the packed path ran
        with torch.no_grad():
            model[0].weight.mul_(-2)  # in place: the packed copy is stale and must be re-made
            plain[0].weight.mul_(-2)
        assert torch.equal(model(x), plain(x))
    clone = copy.deepcopy(model)  # a copy packs its own weights, never the original's
    with torch.no_grad():
        clone[1].weight.zero_()
    with torch.inference_mode():
        assert torch.equal(model(x), plain(x)) and not clone(x).any()
    y = model(x.requires_grad_())  # autograd: the plain nn.Linear path, gradients flow
    y.float().sum().backward()
    assert model[0].weight.grad is not None
    assert use_packed_linears(model, enabled=False) == 2 and all(type(m) is torch.nn.Linear for m in model)


@needs_bf16_packing
def test_served_bf16_path_changes_no_token_or_logit(embedded_settings, random_adapter):
    """PolicyServer's bf16 path (packed linears, appending KV cache) gives the same logits bit for bit
    as transformers' own modules and DynamicCache, batch 1 and a mixed-adapter, left-padded batch."""
    from peft import PeftModel
    from transformers import DynamicCache

    from rlhf_demo.generation import BASE_ADAPTER, PackedLinear, _appending_cache, decode_batch, use_packed_linears

    model, tok = load_base_model(embedded_settings, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, str(random_adapter(embedded_settings, 1, scale=2.0)), adapter_name="a")
    model.eval()
    prompts = [build_prompt_ids(tok, msgs(p)) for p in PROMPTS]
    params = [GREEDY, GREEDY]

    def run(fast: bool):
        use_packed_linears(model, fast)
        assert any(type(m) is PackedLinear for m in model.modules()) is fast
        with torch.inference_mode():  # batch 1, adapter "a", 12 steps
            cache = _appending_cache(4) if fast else DynamicCache()  # small room: the cache must also grow
            ids, logits = torch.tensor([prompts[0]]), []
            for _ in range(12):
                step = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
                logits.append(step)
                ids = step.argmax(-1, keepdim=True)
        batch = decode_batch(model, tok, prompts, params, adapter_names=[BASE_ADAPTER, "a"])
        alone = decode_batch(model, tok, prompts[:1], params[:1], adapter_names=["a"])
        return torch.stack(logits), [r.token_ids for r in batch + alone]

    fast_logits, fast_tokens = run(True)
    plain_logits, plain_tokens = run(False)
    assert torch.equal(fast_logits, plain_logits)
    assert fast_tokens == plain_tokens and fast_tokens[0] != fast_tokens[1]
