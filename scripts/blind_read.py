"""Answers labelled by reading, blind: set-up of the reading and the merge, driven by a plan file.

    python scripts/blind_read.py blind --plan PLAN.json --round N --out-dir READ   # READ/chunk1..C.jsonl + key.json
    # readers label READ/chunkC.jsonl into <plan dir>/read/roundN/labelsC.jsonl ({"id", "refusal", "note"}),
    # following eval/README.md "Refusal: definition and labelling rules", seeing only id, prompt and response;
    # <plan dir>/read/roundN/adjudicated.jsonl (optional, same rows) settles cases the readers split on
    python scripts/blind_read.py merge --plan PLAN.json --out LABELLED.jsonl

A plan (``docs/rlhf-v1/val_read/plan.json``: validation answers; ``docs/eval-2026-11-30-v2-read/plan.json``: the
reported suites' answers, read for the report only) names the id ``prefix``, the shuffle ``seed``, the number of
``chunks`` and its ``rounds``: per round, ``python -m eval`` generations files (paths from the repository root) and the
policies taken from each (``null``: all).

``blind``: a round's answers, deduplicated by (prompt, response), leaving out answers an earlier round read, shuffled
(seed + round - 1), numbered on from the last round (``<prefix>-0001``…), cut into chunks in id order. Readers see
no policy, no category and no judge verdict; ``key.json`` (kept away from them) maps each answer to its source.

``merge``: one row per policy's answer of every round with a ``read/round<N>`` folder, as a ``python -m eval``
generations row (``prompt_id``, ``category``, ``policy``, ``prompt``, ``response``) with ``refusal`` = the reader's
label, ``note``, ``read_id`` and ``source`` (``file:line``) — so ``scripts/paired_rates.py``, ``python -m eval.detect
--score`` and ``scripts/reward_spread.py`` read it as it is.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf_demo.atomic import write_jsonl  # noqa: E402
from rlhf_demo.jsonl import iter_jsonl  # noqa: E402


class Plan:
    """What is read, in rounds (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        raw = json.loads(self.path.read_text(encoding="utf-8"))
        try:
            self.prefix, self.seed, self.chunks = str(raw["prefix"]), int(raw["seed"]), int(raw["chunks"])
            self.rounds = {int(k): dict(v) for k, v in raw["rounds"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: needs prefix, seed, chunks and rounds ({exc})") from exc
        if not self.rounds or sorted(self.rounds) != list(range(1, len(self.rounds) + 1)):
            raise ValueError(f"{self.path}: rounds must be numbered 1, 2, ...")
        self.read_dir = self.path.parent / "read"


def answers(plan: Plan, rnd: int) -> list[dict]:
    """Every answer of round ``rnd``'s sources, with ``source`` = ``file:line``."""
    out = []
    for rel, policies in plan.rounds[rnd].items():
        for where, row in iter_jsonl(ROOT / rel, ValueError):
            for field in ("prompt_id", "category", "policy", "prompt", "response"):
                if field not in row:
                    raise ValueError(f"{where}: no {field!r} (not a python -m eval generations row)")
            if policies is None or row["policy"] in policies:
                out.append({**row, "source": f"{rel}:{where.rsplit(':', 1)[1]}"})
    return out


def read_ids(plan: Plan, by_round: dict[int, list[dict]]) -> dict[tuple[str, str], tuple[str, int]]:
    """``(prompt, response) -> (read id, round first read)`` for the rounds given (1, 2, … in order): each round's
    answers not read in an earlier round, deduplicated, shuffled (seed ``plan.seed + round - 1``) and numbered on."""
    ids: dict[tuple[str, str], tuple[str, int]] = {}
    for rnd in sorted(by_round):
        new = [pr for pr in dict.fromkeys((r["prompt"], r["response"]) for r in by_round[rnd]) if pr not in ids]
        random.Random(plan.seed + rnd - 1).shuffle(new)
        start = len(ids)
        ids.update({pr: (f"{plan.prefix}-{start + i:04d}", rnd) for i, pr in enumerate(new, 1)})
    return ids


def blind(plan: Plan, out_dir: Path, rnd: int) -> None:
    if rnd not in plan.rounds:
        raise ValueError(f"{plan.path}: no round {rnd}")
    by_round = {r: answers(plan, r) for r in range(1, rnd + 1)}
    ids = read_ids(plan, by_round)
    rows = by_round[rnd]
    distinct = sorted((pr for pr, (_, first) in ids.items() if first == rnd), key=lambda pr: ids[pr][0])
    out_dir.mkdir(parents=True, exist_ok=True)
    key = [{"source": r["source"], "policy": r["policy"], "id": ids[(r["prompt"], r["response"])][0]} for r in rows]
    (out_dir / "key.json").write_text(json.dumps(key), encoding="utf-8")
    size = -(-len(distinct) // plan.chunks)
    for c in range(plan.chunks):
        with open(out_dir / f"chunk{c + 1}.jsonl", "w", encoding="utf-8") as fh:
            for prompt, response in distinct[c * size:(c + 1) * size]:
                fh.write(json.dumps({"id": ids[(prompt, response)][0], "prompt": prompt, "response": response}) + "\n")
    print(f"round {rnd}: {len(rows)} answers, {len(distinct)} not read before, {plan.chunks} chunks of <= {size} "
          f"in {out_dir}")


def merge(plan: Plan, out: Path) -> None:
    """``<plan dir>/read/round<N>/labels<c>.jsonl`` (+ optional ``adjudicated.jsonl``) for every round with a folder."""
    read_dir = plan.read_dir
    rounds = [r for r in sorted(plan.rounds) if (read_dir / f"round{r}").is_dir()]
    if not rounds:
        raise ValueError(f"{read_dir}: no round<N> folder with labels")
    labels: dict[str, dict] = {}
    for rnd in rounds:
        for path in sorted((read_dir / f"round{rnd}").glob("labels*.jsonl")):
            for where, row in iter_jsonl(path, ValueError):
                if not isinstance(row.get("refusal"), bool) or not isinstance(row.get("id"), str):
                    raise ValueError(f"{where}: needs a string 'id' and 'refusal' true or false")
                if row["id"] in labels:
                    raise ValueError(f"{where}: {row['id']} labelled twice")
                labels[row["id"]] = row
        adjudicated = read_dir / f"round{rnd}" / "adjudicated.jsonl"
        if adjudicated.exists():  # the lead's consistency rulings after reading, blind too: they replace the label
            for where, row in iter_jsonl(adjudicated, ValueError):
                if row.get("id") not in labels or not isinstance(row.get("refusal"), bool):
                    raise ValueError(f"{where}: unknown id or no boolean 'refusal'")
                reader = labels[row["id"]].get("note", "")
                labels[row["id"]] = {**row, "note": f"{row.get('note', '')} (reader: {reader})"}
    by_round = {r: answers(plan, r) for r in range(1, max(rounds) + 1)}
    ids = read_ids(plan, by_round)
    missing = sorted({i for i, _ in ids.values()} - set(labels))
    if missing:
        raise ValueError(f"{len(missing)} answers have no label, e.g. {missing[:5]}")
    rows = [r for rnd in rounds for r in by_round[rnd]]
    labelled = []
    for r in rows:
        lab = labels[ids[(r["prompt"], r["response"])][0]]
        labelled.append({"prompt_id": r["prompt_id"], "category": r["category"], "policy": r["policy"],
                         "prompt": r["prompt"], "response": r["response"], "refusal": lab["refusal"],
                         "note": lab.get("note", ""), "read_id": lab["id"], "source": r["source"]})
    write_jsonl(out, labelled)  # atomically: a failed merge leaves the previous file
    print(f"rounds {rounds}: {len(rows)} answers ({len(labels)} distinct) labelled -> {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("blind", help="write one round's blind chunks and its key")
    b.add_argument("--plan", type=Path, required=True, help="the plan file (what is read, in rounds)")
    b.add_argument("--round", type=int, default=1, help="which round's answers (default 1)")
    b.add_argument("--out-dir", type=Path, required=True, help="where the chunks and key.json go")
    m = sub.add_parser("merge", help="merge the readers' labels into one labelled generations file")
    m.add_argument("--plan", type=Path, required=True, help="the plan file; labels are read from <its dir>/read")
    m.add_argument("--out", type=Path, required=True, help="the labelled generations file to write")
    a = ap.parse_args(argv)
    try:
        plan = Plan(a.plan)
        blind(plan, a.out_dir, a.round) if a.cmd == "blind" else merge(plan, a.out)
    except (OSError, ValueError) as exc:
        print(f"blind_read: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
