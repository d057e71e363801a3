"""Paired refusal rates of every policy against a baseline, from an eval run's ``generations.jsonl``.

    python scripts/paired_rates.py runs/eval/<time>/generations.jsonl [--baseline sft] [--exclude KEYS.json] \
        [--suite xstest]

For each category (unsafe: harmful compliance; safe: over-refusal; helpful: refusal on ordinary prompts) and
policy: the rate with its Wilson interval and McNemar's exact test against the baseline on the same prompts,
from the ``refusal`` verdicts the judge made with the prompt at generation time. ``--exclude``: a JSON list of
normalised prompt texts to leave out (e.g. the prompts a PPO run validated on), so that what chose a
checkpoint does not also judge it. ``--suite NAME`` keeps one suite's prompts (``prompt_id`` = ``NAME/…``, as
``python -m eval`` writes them); repeatable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.stats import mcnemar_exact, proportion  # noqa: E402
from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from rlhf_demo.splits import normalize_text  # noqa: E402

MEASURES = (("unsafe", False, "harmful compliance"), ("safe", True, "over-refusal"),
            ("helpful", True, "refusal on ordinary"))


def paired_rates(rows: list[dict], baseline: str = "sft", exclude: frozenset[str] = frozenset()) -> list[dict]:
    """One row per (category, policy): n, k, rate, ci, and the McNemar counts/p against ``baseline``."""
    by = {(g["prompt_id"], g["policy"]): g for g in rows}
    policies = list(dict.fromkeys(g["policy"] for g in rows))
    out = []
    for category, bad_is_refusal, label in MEASURES:
        ids = [g["prompt_id"] for g in rows if g["policy"] == baseline and g["category"] == category
               and normalize_text(g["prompt"]) not in exclude]
        if not ids:
            continue
        bad_of = {p: [bool(by[(i, p)]["refusal"]) == bad_is_refusal for i in ids] for p in policies}
        for p in policies:
            test = mcnemar_exact(bad_of[p], bad_of[baseline])
            prop = proportion(sum(bad_of[p]), len(ids))
            out.append({"category": category, "measure": label, "policy": p, "n": len(ids), "k": prop["k"],
                        "rate": prop["rate"], "ci": prop["ci"], "policy_only": test["a_only"],
                        "baseline_only": test["b_only"], "p_value": test["p_value"]})
    return out


def format_rows(rows: list[dict], baseline: str) -> str:
    lines = [f"| measure | policy | rate [95% Wilson] | k/n | worse only / better only than {baseline} | McNemar p |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci"]
        lines.append(f"| {r['measure']} | {r['policy']} | {100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | "
                     f"{r['k']}/{r['n']} | {r['policy_only']} / {r['baseline_only']} | {r['p_value']:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("generations", type=Path, help="an eval run's generations.jsonl")
    p.add_argument("--baseline", default="sft", help="the policy every other one is paired with (default: sft)")
    p.add_argument("--exclude", type=Path, help="JSON list of normalised prompt texts to leave out")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--suite", action="append", default=[], help="keep only this suite's prompts (prompt_id "
                                                                "'SUITE/...'); repeatable (default: every suite)")
    args = p.parse_args(argv)
    rows = [row for _, row in iter_jsonl(args.generations)
            if not args.suite or str(row.get("prompt_id", "")).split("/", 1)[0] in args.suite]
    if not rows:
        print(f"paired_rates: no rows of suite {', '.join(args.suite)} in {args.generations}", file=sys.stderr)
        return 2
    exclude = frozenset(json.loads(args.exclude.read_text())) if args.exclude else frozenset()
    out = paired_rates(rows, args.baseline, exclude)
    print(format_rows(out, args.baseline))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
