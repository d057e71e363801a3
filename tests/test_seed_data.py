"""The project's seed data: counts (as in DATA_CARD.md), schema, and no overlap with evaluation prompts."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from training.data import PACKAGE_DATA, normalize_text, pair_from_row, read_jsonl

from conftest import shared_data

SEED = PACKAGE_DATA / "seed_pairs"
CATEGORIES = ("harmless", "helpful", "sensitive")


def rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


def seed_rows() -> list[dict]:
    return [r for c in CATEGORIES for r in rows(SEED / f"{c}.jsonl")]


def words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", normalize_text(text)))


def near_duplicates(a: list[str], b: list[str], threshold: float = 0.8) -> list[tuple[str, str]]:
    """Pairs of texts whose word sets overlap by Jaccard >= threshold (catches light rephrasing)."""
    bw = [(t, words(t)) for t in b]
    out = []
    for x in a:
        wx = words(x)
        for y, wy in bw:
            union = len(wx | wy)
            if union and len(wx & wy) / union >= threshold:
                out.append((x, y))
    return out


def test_counts_match_the_data_card():
    card = (PACKAGE_DATA / "DATA_CARD.md").read_text()
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `([\w/.]+\.jsonl)` \| (\d+) \|", card, re.M)}
    for c in CATEGORIES:
        assert counts[f"seed_pairs/{c}.jsonl"] == len(rows(SEED / f"{c}.jsonl")), c
    assert counts["ppo_prompts.jsonl"] == len(rows(PACKAGE_DATA / "ppo_prompts.jsonl"))
    assert counts["eval_prompts.jsonl"] == len(rows(PACKAGE_DATA / "eval_prompts.jsonl"))
    total = int(re.search(r"\*\*preference pairs, total\*\* \| \*\*(\d+)\*\*", card).group(1))
    assert total == len(seed_rows())


def test_enough_pairs_half_harmless_and_many_sensitive():
    data = seed_rows()
    by = Counter(r["category"] for r in data)
    assert len(data) >= 400
    assert 0.4 <= by["harmless"] / len(data) <= 0.6
    assert by["sensitive"] >= 80 and by["helpful"] >= 80


def test_schema_ids_and_distinct_answers():
    data = seed_rows()
    ids = [r["id"] for r in data]
    assert len(set(ids)) == len(ids)
    for c in CATEGORIES:
        for where, r in read_jsonl(SEED / f"{c}.jsonl"):
            assert r["category"] == c and re.fullmatch(rf"{c}-\d{{4}}", r["id"]), where
            assert set(r) <= {"id", "category", "prompt", "chosen", "rejected", "margin"}, where
            pair = pair_from_row(r, where, "seed")  # validates roles, non-empty text, one assistant answer each
            assert pair is not None, f"{where}: chosen == rejected"
            assert pair.prompt[-1]["role"] == "user"
    prompts = [normalize_text(r["prompt"][-1]["content"]) for r in data]
    assert len(set(prompts)) == len(prompts), "a prompt appears twice"


def test_prompt_files_schema():
    for name, cats in (("ppo_prompts.jsonl", {"harmful", "sensitive", "ordinary"}),
                       ("eval_prompts.jsonl", {"harmful", "sensitive", "ordinary"})):
        data = rows(PACKAGE_DATA / name)
        assert {r["category"] for r in data} == cats, name
        assert all(isinstance(r["prompt"], str) and r["prompt"].strip() and r["id"] for r in data), name
        assert len({r["id"] for r in data}) == len(data), name


def test_training_prompts_are_disjoint_from_the_evaluation_prompts():
    seed = [r["prompt"][-1]["content"] for r in seed_rows()]
    ppo = [r["prompt"] for r in rows(PACKAGE_DATA / "ppo_prompts.jsonl")]
    ev = [r["prompt"] for r in rows(PACKAGE_DATA / "eval_prompts.jsonl")]
    norm = lambda xs: {normalize_text(x) for x in xs}  # noqa: E731
    assert not norm(seed) & norm(ev) and not norm(ppo) & norm(ev) and not norm(seed) & norm(ppo)
    assert not near_duplicates(seed + ppo, ev)


def test_training_prompts_are_disjoint_from_xstest():
    path = shared_data("xstest/xstest_prompts.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        xstest = [r["prompt"] for r in csv.DictReader(fh)]
    assert len(xstest) == 450
    seed = [r["prompt"][-1]["content"] for r in seed_rows()]
    ppo = [r["prompt"] for r in rows(PACKAGE_DATA / "ppo_prompts.jsonl")]
    ev_x = {normalize_text(x) for x in xstest}
    assert not {normalize_text(x) for x in seed + ppo} & ev_x
    assert not near_duplicates(seed + ppo, xstest), near_duplicates(seed + ppo, xstest)[:5]


@pytest.mark.parametrize("category", CATEGORIES)
def test_each_file_loads_through_the_seed_source(category):
    from training.data import load_pairs

    assert sum(p.category == category for p in load_pairs(["seed"])) == len(rows(SEED / f"{category}.jsonl"))
