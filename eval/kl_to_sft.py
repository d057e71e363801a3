"""KL to SFT in the evaluation: answers sampled from a policy, then the exact per-token KL(policy ‖ SFT)
of the two full next-token distributions (:mod:`rlhf_demo.kl`). Used by :func:`eval.runner.run`."""

from __future__ import annotations

KL_SEED = 7_340_033  # seeds of the answers sampled for the KL (offset by --seed)


def sample_for_kl(server, prompt_ids: list[list[int]], max_new_tokens: list[int], policy: str, seed: int,
                  batch_size: int = 16) -> list[list[int]]:
    """Answers SAMPLED from ``policy`` (temperature 1, no nucleus, no repetition penalty: the policy's own
    distribution), seeded per row, each ending with the end-of-turn token when the policy chose to stop
    (stopping is an action too). On such answers the summed per-position KL is an unbiased estimate of
    the sequence-level KL(policy ‖ SFT); on greedy answers it is not."""
    from rlhf_demo.generation import BASE_ADAPTER, GenerationParams, decode_batch, end_of_turn_id
    from rlhf_demo.registry import SFT

    eot = end_of_turn_id(server.tokenizer)
    out: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = prompt_ids[start:start + batch_size]
        params = [GenerationParams(max_new_tokens=max_new_tokens[start + i], temperature=1.0, top_p=1.0,
                                   repetition_penalty=1.0, greedy=False, seed=seed + start + i)
                  for i in range(len(rows))]
        names = [BASE_ADAPTER if policy == SFT else policy] * len(rows) if server.model is not server.base else None
        for r in decode_batch(server.model, server.tokenizer, rows, params, names):
            out.append(list(r.token_ids) + ([eot] if r.finish_reason == "eos" and eot is not None else []))
    return out


def _final_hidden(model, ids, mask, adapter: str):
    """The decoder's final (normed) hidden states ``[B, T, H]`` under ``adapter``; the LM head runs on the
    last position only (``logits_to_keep=1``), so no ``[B, T, V]`` logits."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    captured = {}

    def grab(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = lm.get_decoder().register_forward_hook(grab)
    try:
        model(input_ids=ids, attention_mask=mask, adapter_names=[adapter] * len(ids), logits_to_keep=1)
    finally:
        handle.remove()
    return captured["h"]


def kl_logprobs(model, prompt_ids: list[list[int]], response_ids: list[list[int]], adapter: str,
                batch_size: int = 4, progress=None) -> list[tuple[list[float], list[float], list[float]]]:
    """Per response token: log p_policy, log p_sft, and the exact KL(policy ‖ sft) of the two full
    next-token distributions at that position (:func:`rlhf_demo.kl.kl_and_logprobs_from_hidden`: the LM
    head runs on a block of answer positions at a time). Pass answers sampled from the policy
    (:func:`sample_for_kl`)."""
    import torch

    from rlhf_demo.generation import BASE_ADAPTER
    from rlhf_demo.kl import kl_and_logprobs_from_hidden
    from rlhf_demo.padding import pad_rows

    out = []
    device = next(model.parameters()).device
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    with torch.inference_mode():
        for start in range(0, len(prompt_ids), batch_size):
            ps, rs = prompt_ids[start:start + batch_size], response_ids[start:start + batch_size]
            rows = [list(p) + list(r) for p, r in zip(ps, rs)]
            ids, mask = pad_rows(rows, 0, "right")
            sel = torch.zeros(ids.shape, dtype=torch.bool)  # positions that predict an answer token
            for i, (p, r) in enumerate(zip(ps, rs)):
                sel[i, len(p) - 1:len(p) + len(r) - 1] = True
            ids, mask, sel = ids.to(device), mask.to(device), sel.to(device)
            hp = _final_hidden(model, ids, mask, adapter)[sel]
            hq = _final_hidden(model, ids, mask, BASE_ADAPTER)[sel]
            labels = torch.roll(ids, -1, dims=1)[sel]
            kl, lp, lq = (t.cpu().tolist() for t in kl_and_logprobs_from_hidden(head, hp, hq, labels))
            pos = 0
            for r in rs:
                k = len(r)
                out.append((lp[pos:pos + k], lq[pos:pos + k], kl[pos:pos + k]))
                pos += k
            if progress:
                progress(len(rows))
    return out
