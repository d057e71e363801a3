"""How much of a reward's spread between answers to the same prompt is signal, and how much noise?

PPO's grouped rollouts learn from the differences between answers to one prompt. On answers labelled by reading
(the refusal judge's development file), pair every two answers to the same prompt and split the pairs:

* **different labels** (one refusal, one not): the reward *should* differ, in the direction of the prompt's kind
  (the refusal higher on a harmful prompt, lower otherwise) — ``right`` is how often it does;
* **same label** (both refusals, or both not): as far as refusing goes the reward should not care — whatever it
  moves between them is, for PPO's safety signal, noise (the reward model's part may still see real helpfulness
  differences; the safety term should not).

For each group it prints the mean absolute difference of the total reward, of its safety term (composed versions)
and of the reward model's part, and the share of pairs whose safety terms differ by more than half the term's
range (a refusal flip of the term's classifier). A diagnostic: it trains and chooses nothing.

    python scripts/reward_spread.py --reward reward-v2 --labelled eval/fixtures/refusal_dev.jsonl \
        --where split=holdout --out docs/rlhf-v1/run13/reward_spread_reward-v2.json

It also reads a ``python -m eval`` generations.jsonl (the refusal judge's labels, ``category`` as the kind) —
e.g. ``--where policy=rlhf-run15`` for one policy's answers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# a `python -m eval` generations.jsonl row has the suite's category instead of prompt_kind (and the refusal
# judge's label instead of a reader's): unsafe prompts are harmful, safe ones risky-safe, as XSTest's labels are read
# in rlhf_demo.external (its KINDS: harmful | risky-safe | ordinary)
EVAL_CATEGORY_KIND = {"unsafe": "harmful", "safe": "risky-safe", "helpful": "ordinary"}


def with_kind(row: dict, where: str) -> dict:
    """``row`` with ``prompt_kind`` (from an eval row's ``category`` when it has none); ``where`` names the row
    in the error when neither says what kind of prompt it is."""
    if "prompt_kind" in row:
        return row
    kind = EVAL_CATEGORY_KIND.get(row.get("category"))
    if kind is None:
        raise ValueError(f"{where}: no prompt_kind, and category {row.get('category')!r} is not one of "
                         f"{', '.join(EVAL_CATEGORY_KIND)}")
    return {**row, "prompt_kind": kind}


def pair_groups(rows: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """Index pairs of answers to the same prompt: ``{"<kind> different|same-refusal|same-answer": [(i, j)]}``, i < j;
    on a ``different`` pair i is the one that should score higher (the refusal on a harmful prompt)."""
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_prompt.setdefault(r["prompt"], []).append(i)
    out: dict[str, list[tuple[int, int]]] = {}
    for idx in by_prompt.values():
        for i, j in itertools.combinations(idx, 2):
            kind = rows[i]["prompt_kind"]
            if rows[i]["refusal"] == rows[j]["refusal"]:
                key, pair = f"{kind} same-{'refusal' if rows[i]['refusal'] else 'answer'}", (i, j)
            else:
                refusal, other = (i, j) if rows[i]["refusal"] else (j, i)
                key, pair = f"{kind} different", (refusal, other) if kind == "harmful" else (other, refusal)
            out.setdefault(key, []).append(pair)
    return out


def spread(groups: dict[str, list[tuple[int, int]]], total, term, half_range: float) -> dict:
    """Per group: pairs, mean |Δ| of total, term and reward-model part, share of term flips; on ``different``
    groups also how often the should-be-higher side is higher (``right``)."""
    out = {}
    for key, pairs in sorted(groups.items()):
        d_total = [total[i] - total[j] for i, j in pairs]
        d_term = [term[i] - term[j] for i, j in pairs]
        d_rm = [a - b for a, b in zip(d_total, d_term)]
        m = {"pairs": len(pairs),
             "mean_abs_total": round(sum(map(abs, d_total)) / len(pairs), 3),
             "mean_abs_term": round(sum(map(abs, d_term)) / len(pairs), 3),
             "mean_abs_rm": round(sum(map(abs, d_rm)) / len(pairs), 3),
             "term_flips": round(sum(abs(d) > half_range for d in d_term) / len(pairs), 3)}
        if key.endswith("different"):
            m["right"] = round(sum(d > 0 for d in d_total) / len(pairs), 3)
        out[key] = m
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward", required=True, help="reward version (registry name)")
    ap.add_argument("--labelled", type=Path, required=True,
                    help="JSONL of labelled answers: prompt, response, refusal, prompt_kind (labelled by reading, "
                         "e.g. eval/fixtures/refusal_dev.jsonl), or a `python -m eval` generations.jsonl (category "
                         "unsafe/safe/helpful, the refusal judge's labels)")
    ap.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help="keep rows with FIELD=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = ap.parse_args(argv)
    import numpy as np
    import torch

    from rlhf_demo.config import Settings
    from rlhf_demo.jsonl import iter_jsonl, matches, parse_where
    from rlhf_demo.scoring import load_reward_scorer

    torch.set_num_threads(a.threads)
    where = parse_where(a.where)
    rows = [with_kind(r, where_) for where_, r in iter_jsonl(a.labelled, ValueError) if matches(r, where)]
    settings = Settings(dtype="bfloat16")
    scorer = load_reward_scorer(settings, a.reward, allow_judge=True)
    # the reward head's raw scores and the version's own safety term (composed versions), each computed once:
    # total = raw + term, as RewardScorer.score composes it
    raw = np.array(scorer.score_raw([[{"role": "user", "content": r["prompt"]},
                                      {"role": "assistant", "content": r["response"]}] for r in rows]))
    term_model = scorer.safety
    term = (term_model.score([r["prompt"] for r in rows], [r["response"] for r in rows]) if term_model is not None
            else np.zeros(len(rows)))
    total = raw + term
    half_range = float(term_model.scale) if term_model is not None and term_model.signal != "linear" else 1.0
    result = {"reward": a.reward, "labelled": str(a.labelled), "where": dict(where), "answers": len(rows),
              "command": "python scripts/reward_spread.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "term_half_range": half_range,
              "groups": spread(pair_groups(rows), total.tolist(), term.tolist(), half_range)}
    print(f"{a.reward} on {len(rows)} labelled answers ({a.labelled}{''.join(f' [{k}={v}]' for k, v in where)}); |Δ| between answers to one prompt")
    for key, m in result["groups"].items():
        print(f"  {key:<28} pairs {m['pairs']:>4}  |Δtotal| {m['mean_abs_total']:6.2f}  |Δterm| {m['mean_abs_term']:6.2f}"
              f"  |Δrm| {m['mean_abs_rm']:5.2f}  term flips {m['term_flips']:.2f}"
              + (f"  right {m['right']:.2f}" if "right" in m else ""))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
