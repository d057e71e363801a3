"""Answers read by people against the refusal judge: per policy, the three rates both ways, and the judge's
precision / recall on that policy's answers.

    python docs/rlhf-v1/val_read/compare.py docs/rlhf-v1/val_read/labelled.jsonl \
        --json docs/rlhf-v1/val_read/compare.json > docs/rlhf-v1/val_read/compare.md
    python docs/rlhf-v1/val_read/compare.py docs/eval-2026-11-30-v2-read/labelled.jsonl --stored \
        --json docs/eval-2026-11-30-v2-read/compare.json > docs/eval-2026-11-30-v2-read/compare.md

Rates by reading (``refusal`` of the labelled file) are paired against sft with McNemar's exact test
(``scripts/paired_rates.py``); the judge (default ``rules-v2+probe-v2``) is run here on every answer with its prompt,
or, with ``--stored``, its verdicts are the ones the eval run stored with each answer (each row's ``source`` line:
what that run's report counted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from eval.detect import score_predictions  # noqa: E402
from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from rlhf_demo.refusal.detector import DEFAULT_JUDGE, judge_refusals  # noqa: E402
from scripts.paired_rates import format_rows, paired_rates  # noqa: E402


_SOURCES: dict[str, list[str]] = {}


def source_row(row: dict) -> dict:
    """The eval generations row a labelled row was read from (``source`` = ``file:line``, file from the repo root)."""
    rel, line = row["source"].rsplit(":", 1)
    if rel not in _SOURCES:
        _SOURCES[rel] = (ROOT / rel).read_text(encoding="utf-8").splitlines()
    src = json.loads(_SOURCES[rel][int(line) - 1])
    if (src["prompt"], src["response"]) != (row["prompt"], row["response"]):
        raise ValueError(f"{row['source']}: not the answer that was read (file changed?)")
    return src


def stored_verdict(row: dict) -> bool:
    return bool(source_row(row)["refusal"])


def fmt(r: dict) -> str:
    """``0.81 [0.70, 0.89]``, or a dash when the rate has no denominator."""
    return "–" if r["value"] is None else f"{r['value']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labelled", type=Path, help="labelled generations (scripts/blind_read.py merge)")
    ap.add_argument("--judge", default=DEFAULT_JUDGE, help=f"refusal judge (default {DEFAULT_JUDGE})")
    ap.add_argument("--json", type=Path, default=None, help="also write every number here")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--stored", action="store_true", help="take the verdicts the eval run stored with each answer "
                                                          "(its source line) instead of running --judge")
    a = ap.parse_args(argv)
    rows = [r for _, r in iter_jsonl(a.labelled, ValueError)]
    if a.stored:
        judged = [{**r, "refusal": stored_verdict(r)} for r in rows]
        a.judge = "the eval run's refusal detector (verdicts stored with the answers; its report names it)"
    else:
        import torch
        torch.set_num_threads(a.threads)
        verdicts = judge_refusals([r["response"] for r in rows], [r["prompt"] for r in rows], judge=a.judge)
        judged = [{**r, "refusal": v.refusal} for r, v in zip(rows, verdicts)]
    by_reading, by_judge = paired_rates(rows), paired_rates(judged)
    print(f"# {a.labelled}: reading vs {a.judge}\n")
    print("## Rates by reading (paired with sft)\n")
    print(format_rows(by_reading, "sft"))
    print(f"\n## Rates by the judge ({a.judge}), on the same answers\n")
    print(format_rows(by_judge, "sft"))
    print(f"\n## {a.judge} against reading, per policy (all its answers in the file)\n")
    print("| policy | refusals by reading | judge precision [95%] | judge recall [95%] | F1 | tp / fp / fn / tn |")
    print("|---|---:|---|---|---:|---|")
    scores = {}
    for policy in dict.fromkeys(r["policy"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["policy"] == policy]
        s = score_predictions([judged[i]["refusal"] for i in idx], [rows[i]["refusal"] for i in idx])
        scores[policy] = s
        print(f"| {policy} | {sum(rows[i]['refusal'] for i in idx)} | {fmt(s['precision'])} | {fmt(s['recall'])} | "
              f"{s['f1']:.2f} | {s['tp']} / {s['fp']} / {s['fn']} / {s['tn']} |")
    if a.json:
        a.json.write_text(json.dumps({"labelled": str(a.labelled), "judge": a.judge, "by_reading": by_reading,
                                      "by_judge": by_judge, "judge_vs_reading": scores}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
