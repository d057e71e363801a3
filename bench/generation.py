"""Generation benchmark: batch-1 decode speed, a comparison's two sides sequential vs one
mixed-adapter batch, and the memory-bandwidth roofline.

    .venv/bin/python bench/generation.py [--max-new-tokens 64] [--repeats 3]

Prints the table and writes it to bench/RESULTS.md (section "generation"). Uses the embedded
SmolLM2-135M model (converted into --data-dir on first use) and a random LoRA adapter standing in
for an RLHF version (same shapes and cost as a trained one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import machine, update_section  # noqa: E402
from rlhf_demo.base_model import load_base_model  # noqa: E402
from rlhf_demo.config import Settings, apply_offline  # noqa: E402
from rlhf_demo.generation import (BASE_ADAPTER, GenerationParams, build_prompt_ids, decode_batch,  # noqa: E402
                                  serving_dtype_cpu)

PROMPTS = ["Write a short story about a lighthouse keeper who finds a message in a bottle.",
           "Explain how a bicycle gear system works, step by step."]


def copy_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Measured memory bandwidth: bytes read + written by a large tensor copy, best of N."""
    src = torch.empty(mb * 2**20 // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("runs"), help="where the converted model is cached")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (EOS ignored for equal work)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update bench/RESULTS.md")
    args = ap.parse_args()
    apply_offline(False)
    settings = Settings(data_dir=args.data_dir, device="cpu")
    n = args.max_new_tokens
    # EOS is ignored (stop ids emptied) so every variant decodes exactly n tokens.
    params = GenerationParams(max_new_tokens=n, greedy=True, repetition_penalty=1.0)

    fp32, tok = load_base_model(settings, dtype=torch.float32)
    prompt = build_prompt_ids(tok, [{"role": "user", "content": PROMPTS[0]}])
    ids = torch.tensor([prompt])

    def hf_generate():
        return fp32.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False)[0, len(prompt):].tolist()

    import rlhf_demo.generation as gen
    real_stop_ids = gen.stop_ids
    gen.stop_ids = lambda tok, model: set()
    try:
        hf_generate()  # warm-up
        t_hf, hf_tokens = timed(hf_generate, args.repeats)
        t_fp32, fp32_out = timed(lambda: decode_batch(fp32, tok, [prompt], [params]), args.repeats)
        serve_dtype = serving_dtype_cpu()
        model, _ = load_base_model(settings, dtype=serve_dtype)
        decode_batch(model, tok, [prompt], [params])  # warm-up
        t_b1, ours = timed(lambda: decode_batch(model, tok, [prompt], [params]), args.repeats)
        agree = sum(a == b for a, b in zip(ours[0].token_ids, hf_tokens)) / n

        # the two sides of a comparison: SFT and an RLHF adapter
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(0)
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], init_lora_weights=False),
                                    adapter_name="rlhf")
        peft_model.eval()
        sides = [build_prompt_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]

        def sequential():
            a = decode_batch(peft_model, tok, [sides[0]], [params], adapter_names=[BASE_ADAPTER])
            b = decode_batch(peft_model, tok, [sides[1]], [params], adapter_names=["rlhf"])
            return a + b

        def mixed():
            return decode_batch(peft_model, tok, sides, [params, params], adapter_names=[BASE_ADAPTER, "rlhf"])
        mixed()
        t_seq, seq_out = timed(sequential, args.repeats)
        t_mix, mix_out = timed(mixed, args.repeats)
        same = all(a.token_ids == b.token_ids for a, b in zip(seq_out, mix_out))
    finally:
        gen.stop_ids = real_stop_ids

    bw = copy_bandwidth_gbs()
    wb = weight_bytes(model)
    roofline = bw * 1e9 / wb
    rows = [
        ("decode tokens/s, batch 1 — plain fp32 `generate` (transformers)", f"{n / t_hf:.1f}"),
        ("decode tokens/s, batch 1 — our decode loop, fp32", f"{n / t_fp32:.1f}"),
        (f"decode tokens/s, batch 1 — our decode loop, {str(serve_dtype).replace('torch.', '')} (served)",
         f"{n / t_b1:.1f}"),
        ("  greedy tokens equal to fp32 `generate`", f"{agree:.0%}"),
        ("speed-up of the served path over plain fp32 `generate`", f"{t_hf / t_b1:.2f}×"),
        ("two sides one after the other (SFT, then LoRA adapter), wall s", f"{t_seq:.2f}"),
        ("two sides in one mixed-adapter batch, wall s", f"{t_mix:.2f}"),
        ("mixed ÷ sequential (target ≤ 0.65)", f"{t_mix / t_seq:.2f}"),
        ("  mixed batch tokens equal to the sequential runs", "yes" if same else "no"),
        ("measured copy bandwidth, GB/s", f"{bw:.1f}"),
        (f"weight bytes read per token ({str(serve_dtype).replace('torch.', '')})", f"{wb / 1e6:.0f} MB"),
        ("roofline: bandwidth ÷ weight bytes, tokens/s", f"{roofline:.1f}"),
        ("batch-1 decode as a share of the roofline", f"{n / t_b1 / roofline:.0%}"),
    ]
    table = "| measurement | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    body = (f"## Generation (`bench/generation.py`)\n\n{machine()}; SmolLM2-135M-Instruct, {n} new tokens, "
            f"greedy, median of {args.repeats}.\n\n"
            f"Command: `.venv/bin/python bench/generation.py --max-new-tokens {n} --repeats {args.repeats}`\n\n{table}\n")
    print(body)
    if not args.no_write:
        update_section("generation", body)


if __name__ == "__main__":
    main()
