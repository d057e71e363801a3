"""How much does a policy's greedy answer depend on what it is decoded next to?

Eval decodes every policy's greedy answers in batches of 64 where a prompt's policies sit side by side (peft's
mixed-adapter batches), left-padded, in bfloat16 on CPUs with native bf16. Run 20 showed the same adapter giving
78–82 of 180 different answers in two eval runs. This decodes one policy's answers to validation prompts (never a
reported suite) under several batch layouts and dtypes and counts, for each layout, the answers that differ token
for token from the same dtype's batch-of-one answers (no padding, no neighbours: the reference).

    python docs/decode-noise/measure.py --policy rlhf-v1 --prompts 60 --out docs/decode-noise/result.json

Layouts: "eval" (the policy next to sft, batches of 64, eval's order), "alone-64" (the policy alone, batches of 64),
"alone-8-rev" (alone, batches of 8, reverse order), "one" (batch of one: the reference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def val_prompts(n: int) -> list[tuple[str, str]]:
    """The first n validation prompts (by id) of the 180 read for rlhf-v1 (docs/rlhf-v1/val_read)."""
    from rlhf_demo.jsonl import iter_jsonl

    seen = {}
    for _, row in iter_jsonl(ROOT / "docs/rlhf-v1/val_read/labelled.jsonl", ValueError):
        seen.setdefault(row["prompt_id"], row["prompt"])
    ids = sorted(seen)
    step = max(1, len(ids) // n)  # spread over the three kinds (ids are grouped by source)
    return [(i, seen[i]) for i in ids[::step][:n]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="rlhf-v1", help="policy whose answers are compared (default: rlhf-v1)")
    ap.add_argument("--prompts", type=int, default=60, help="validation prompts (default: 60)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="answer length (default: 64)")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], help="decoding dtypes (default: both)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--out", type=Path, required=True, help="result JSON")
    args = ap.parse_args(argv)

    import torch

    from rlhf_demo.atomic import write_json
    from rlhf_demo.config import Settings
    from rlhf_demo.generation import (BASE_ADAPTER, GenerationParams, PolicyServer, build_prompt_ids,
                                      decode_batch)

    torch.set_num_threads(args.threads)
    prompts = val_prompts(args.prompts)
    result = {"policy": args.policy, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
              "threads": args.threads, "torch": torch.__version__, "prompt_ids": [p for p, _ in prompts], "by_dtype": {}}
    for dtype in args.dtypes:
        settings = Settings(dtype=dtype, device="cpu")
        server = PolicyServer.from_settings(settings, max_batch=64)
        server.ensure_policy(args.policy)
        model, tok = server.model, server.tokenizer
        ids = [build_prompt_ids(tok, [{"role": "user", "content": text}], server.max_prompt_tokens) for _, text in prompts]
        params = GenerationParams(max_new_tokens=args.max_new_tokens, greedy=True, repetition_penalty=1.1, seed=0)

        def run(rows: list[tuple[int, str]], batch: int) -> dict[int, list[int]]:
            """rows: (prompt index, adapter) in decoding order; returns the policy's answers by prompt index."""
            out = {}
            for s in range(0, len(rows), batch):
                chunk = rows[s:s + batch]
                res = decode_batch(model, tok, [ids[i] for i, _ in chunk], [params] * len(chunk),
                                   [a for _, a in chunk])
                for (i, a), r in zip(chunk, res):
                    if a == args.policy:
                        out[i] = list(r.token_ids)
            return out

        by_len = sorted(range(len(ids)), key=lambda i: (len(ids[i]), prompts[i][0]))
        layouts = {
            "one": ([(i, args.policy) for i in range(len(ids))], 1),
            "eval": ([(i, a) for i in by_len for a in (BASE_ADAPTER, args.policy)], 64),
            "alone-64": ([(i, args.policy) for i in by_len], 64),
            "alone-8-rev": ([(i, args.policy) for i in reversed(by_len)], 8),
        }
        answers, seconds = {}, {}
        for name, (rows, batch) in layouts.items():
            t0 = time.perf_counter()
            answers[name] = run(rows, batch)
            seconds[name] = round(time.perf_counter() - t0, 1)
            print(f"[decode-noise] {dtype} {name}: {seconds[name]} s", file=sys.stderr, flush=True)
        ref = answers["one"]
        row = {"dtype": str(server.base.dtype).replace("torch.", ""), "seconds": seconds, "differs_from_one": {},
               "first_difference_token": {}}
        for name, got in answers.items():
            diff = [i for i in range(len(ids)) if got[i] != ref[i]]
            row["differs_from_one"][name] = len(diff)
            row["first_difference_token"][name] = sorted(
                next(k for k, (a, b) in enumerate(zip(got[i] + [-1], ref[i] + [-2])) if a != b) for i in diff)
        result["by_dtype"][dtype] = row
        result.setdefault("answers", {})[dtype] = {name: {prompts[i][0]: tok.decode(a, skip_special_tokens=True)
                                                          for i, a in got.items()} for name, got in answers.items()}
        print(json.dumps({dtype: row}), flush=True)
        server.close()
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
