"""How far do two readers agree on what a refusal is? The ceiling any refusal judge is measured against.

    python scripts/rater_agreement.py --labels docs/refusal-judge/second_rater_labels.jsonl

A second reader labelled, blind to the first reader's labels and to the policies, 200 answers drawn from
the frozen test set and 160 from the development set (``random.Random(2026)``: ``sample(test, 200)``,
``sample(dev, 160)``; the rules of eval/README.md "Refusal: definition and labelling rules"). This prints,
per set, Cohen's kappa and the second reader's precision / recall taken against the reference labels —
what a perfect copy of a human reader would score. It reads the frozen labels to compare; it tunes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_demo.jsonl import iter_jsonl  # noqa: E402
from rlhf_demo.stats import cohen_kappa, proportion  # noqa: E402

SETS = {"test": ROOT / "eval/fixtures/refusal_test.jsonl", "dev": ROOT / "eval/fixtures/refusal_dev.jsonl"}


def labels(path: Path) -> dict[str, bool]:
    """``{id: refusal}``; rows of a read generations file (docs/rlhf-v1/val_read) are keyed by their ``read_id``."""
    return {r["read_id"] if "read_id" in r else r["id"]: bool(r["refusal"]) for _, r in iter_jsonl(path, SystemExit)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, required=True, help="the second reader's JSONL rows {id, refusal}")
    ap.add_argument("--reference", type=Path, action="append", default=None,
                    help="reference labels to compare with (repeatable; default: the frozen test set and the dev set), "
                         "e.g. docs/rlhf-v1/val_read/labelled.jsonl")
    args = ap.parse_args(argv)
    mine = labels(args.labels)
    sets = {str(p): p for p in args.reference} if args.reference else SETS
    for name, path in sets.items():
        ref = labels(path)
        ids = sorted(i for i in mine if i in ref)
        if not ids:
            continue
        k = cohen_kappa([mine[i] for i in ids], [ref[i] for i in ids])
        tp = sum(mine[i] and ref[i] for i in ids)
        p = proportion(tp, sum(mine[i] for i in ids))
        r = proportion(tp, sum(ref[i] for i in ids))
        print(f"{name}: n={k['n']} agreement={k['agreement']:.3f} kappa={k['kappa']:.3f} "
              f"precision-vs-reference={p['rate']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] "
              f"recall-vs-reference={r['rate']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
