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

from eval.detect import score_predictions  # noqa: E402
from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from training.label_safety import answer_verdict  # noqa: E402


def main(path: Path) -> None:
    per = defaultdict(lambda: ([], []))  # policy -> (explicit declines, labels by reading)
    for _, row in iter_jsonl(path, ValueError):
        predicted, labels = per[row["policy"]]
        predicted.append(answer_verdict(row["response"], row["prompt"]) == "refusal")
        labels.append(bool(row["refusal"]))
    rows = sorted(per.items()) + [("**all**", tuple(sum((v[i] for v in per.values()), []) for i in (0, 1)))]
    print(f"# rules-v2 explicit declines against reading (`{path.relative_to(ROOT)}`)\n")
    print("| policy | answers | explicit declines | of them refusals by reading (precision) | refusals by reading found (recall) |")
    print("|---|---:|---:|---:|---:|")
    for name, (predicted, labels) in rows:
        m = score_predictions(predicted, labels)
        p, r = m["precision"], m["recall"]
        prec = f"{p['value']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]" if p["value"] is not None else "–"
        rec = f"{r['value']:.2f}" if r["value"] is not None else "–"
        print(f"| {name} | {m['n']} | {m['tp'] + m['fp']} | {prec} | {rec} ({m['tp']}/{m['tp'] + m['fn']}) |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs/rlhf-v1/val_read/labelled.jsonl")
