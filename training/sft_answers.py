"""The SFT model's own answers to the planned prompts of :mod:`training.build_pairs` (SFT answers):
sampled once, seeded per prompt, and cached in ``<out dir>/sft_answers.jsonl`` so the pairs rebuild without
sampling again.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_demo.atomic import write_text
from rlhf_demo.external import ExternalPrompt
from rlhf_demo.jsonl import iter_jsonl
from rlhf_demo.splits import normalize_text

if TYPE_CHECKING:
    from training.build_pairs import BuildConfig


def stable_seed(*parts: str) -> int:
    """A 32-bit seed from strings (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:4], "big")


def answer_key(text: str, cfg: BuildConfig) -> str:
    return f"{normalize_text(text)}\x00{cfg.max_new_tokens}\x00{cfg.temperature}\x00{cfg.top_p}\x00" \
           f"{cfg.repetition_penalty}\x00{cfg.seed}"


def sample_answers(texts: list[str], cfg: BuildConfig, settings=None, progress: bool = True) -> list[dict]:
    """SFT's answers to ``texts`` with the project's batched decoder, 1 thread, each row seeded by
    (``cfg.seed``, prompt), so an answer does not depend on its batch. Rows: prompt, response,
    finish_reason, seed."""
    import torch

    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.config import Settings
    from rlhf_demo.generation import GenerationParams, build_prompt_ids, decode_batch

    torch.set_num_threads(cfg.threads)
    settings = settings or Settings(dtype=cfg.dtype, device="cpu")
    model, tok = load_base_model(settings)
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    out: list[dict | None] = [None] * len(texts)
    t0 = time.time()
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        prompts = [build_prompt_ids(tok, [{"role": "user", "content": texts[i]}], 512) for i in idx]
        params = [GenerationParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                   repetition_penalty=cfg.repetition_penalty,
                                   seed=stable_seed(str(cfg.seed), normalize_text(texts[i]))) for i in idx]
        results = decode_batch(model, tok, prompts, params)
        for i, p, r in zip(idx, params, results):
            out[i] = {"prompt": texts[i], "response": tok.decode(r.token_ids, skip_special_tokens=True).strip(),
                      "finish_reason": r.finish_reason, "seed": p.seed}
        if progress:
            done = start + len(idx)
            print(f"[build_pairs] SFT answers {done}/{len(texts)} ({time.time() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
    return out  # type: ignore[return-value]


def load_answer_cache(path: Path) -> dict[str, dict]:
    """The cached SFT answers by key; a bad row is a ValueError naming ``file:line`` (:mod:`rlhf_demo.jsonl`)."""
    cache: dict[str, dict] = {}
    if not path.is_file():
        return cache
    for where, row in iter_jsonl(path, ValueError):
        if not isinstance(row.get("key"), str):
            raise ValueError(f"{where}: bad SFT-answer cache row (no 'key')")
        cache[row["key"]] = row
    return cache


def ensure_answers(plan: dict[str, list[ExternalPrompt]], cfg: BuildConfig) -> dict[str, dict]:
    """The SFT answer of every planned prompt: from the cache, generating what is missing (or all, with
    ``cfg.generate``). The cache file is rewritten with exactly the planned prompts, sorted."""
    path = Path(cfg.out_dir) / "sft_answers.jsonl"
    cache = {} if cfg.generate else load_answer_cache(path)
    wanted: dict[str, tuple[str, str, ExternalPrompt]] = {}
    for purpose, recs in plan.items():
        for r in recs:
            wanted.setdefault(answer_key(r.text, cfg), (purpose, r.text, r))
    missing = [k for k in wanted if k not in cache]
    if missing:
        print(f"[build_pairs] sampling SFT answers for {len(missing)} prompts ({cfg.max_new_tokens} tokens, "
              f"{cfg.threads} thread(s))", file=sys.stderr, flush=True)
        rows = sample_answers([wanted[k][1] for k in missing], cfg)
        for k, row in zip(missing, rows):
            purpose, _, rec = wanted[k]
            cache[k] = {"key": k, **row, "source": rec.source, "id": rec.id, "kind": rec.kind, "role": rec.role,
                        "purpose": purpose, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                        "top_p": cfg.top_p, "repetition_penalty": cfg.repetition_penalty}
    write_text(path, "".join(json.dumps(cache[k], ensure_ascii=False, sort_keys=True) + "\n" for k in sorted(wanted)))
    return {k: cache[k] for k in wanted}
