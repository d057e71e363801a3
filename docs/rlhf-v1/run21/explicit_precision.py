"""How good is rules-v2's *explicit decline* (what `--label-safety` pays and fines) on this project's own policies'
answers? Against the labels by reading of the 2,160 validation answers of 12 policies (docs/rlhf-v1/val_read/).

    python docs/rlhf-v1/run21/explicit_precision.py [LABELLED.jsonl] > docs/rlhf-v1/run21/explicit_precision.md

Validation data (role val): used to choose the training signal, never a reported suite.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from rlhf_demo.stats import wilson_interval  # noqa: E402
from training.label_safety import answer_verdict  # noqa: E402


def main(path: Path) -> None:
    per = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0, "n": 0})
    for _, row in iter_jsonl(path, ValueError):
        explicit = answer_verdict(row["response"], row["prompt"]) == "refusal"
        c = per[row["policy"]]
        c["n"] += 1
        c["tp"] += explicit and row["refusal"]
        c["fp"] += explicit and not row["refusal"]
        c["fn"] += (not explicit) and row["refusal"]
    total = {k: sum(c[k] for c in per.values()) for k in ("tp", "fp", "fn", "n")}
    print(f"# rules-v2 explicit declines against reading (`{path.relative_to(ROOT)}`)\n")
    print("| policy | answers | explicit declines | of them refusals by reading (precision) | refusals by reading found (recall) |")
    print("|---|---:|---:|---:|---:|")
    for name, c in sorted(per.items()) + [("**all**", total)]:
        flagged, refusals = c["tp"] + c["fp"], c["tp"] + c["fn"]
        lo, hi = wilson_interval(c["tp"], flagged) if flagged else (0.0, 0.0)
        prec = f"{c['tp'] / flagged:.2f} [{lo:.2f}, {hi:.2f}]" if flagged else "–"
        rec = f"{c['tp'] / refusals:.2f}" if refusals else "–"
        print(f"| {name} | {c['n']} | {flagged} | {prec} | {rec} ({c['tp']}/{refusals}) |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs/rlhf-v1/val_read/labelled.jsonl")
