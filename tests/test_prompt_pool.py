"""The arena's prompt pool (rlhf_demo/prompt_pool.py): train-role prompts only, a stratified draw, file:line errors."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from rlhf_demo.prompt_pool import (CATEGORIES, PoolPrompt, PromptPool, PromptPoolError, load_pool, project_pool,
                                   read_pool_file)
from rlhf_demo.splits import normalize_text, reported_prompt_keys, role_of


@pytest.fixture(scope="module")
def pool():
    return project_pool()


def test_project_pool_mixes_the_three_kinds_in_both_languages_train_role_only(pool):
    counts = pool.counts()
    for lang in ("en", "zh"):
        assert set(counts[lang]) == set(CATEGORIES), counts
        assert all(n >= 5 for n in counts[lang].values()), counts
    reported = reported_prompt_keys()
    every = [p for cats in pool.by_lang.values() for ps in cats.values() for p in ps]
    assert all(role_of(p.text) == "train" for p in every)
    assert not {normalize_text(p.text) for p in every} & reported
    zh = [p for ps in pool.by_lang["zh"].values() for p in ps]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in p.text) for p in zh)
    assert {p.source for p in zh} >= {"cvalues-zh", "prompt_pool_zh.jsonl"}


def test_suggestions_draw_a_category_uniformly_then_a_prompt(pool):
    rng = random.Random(0)
    for lang in ("en", "zh"):
        cats = Counter(pool.suggest(lang, rng).category for _ in range(3000))
        assert all(abs(cats[c] / 3000 - 1 / 3) < 0.04 for c in CATEGORIES), cats
    assert pool.suggest("zh-CN", rng).lang == "zh"


def test_examples_are_short_fixed_and_one_per_category(pool):
    for lang in ("en", "zh"):
        ex = pool.examples(lang, 3, seed=0)
        assert len(ex) == 3 and {p.category for p in ex} == set(CATEGORIES)
        assert all(len(p.text) <= 90 and "\n" not in p.text for p in ex)
        assert [p.text for p in pool.examples(lang, 3, seed=0)] == [p.text for p in ex]
        assert pool.lookup(lang, ex[0].text + "  ") == ex[0]


def test_an_admins_pool_file(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"prompt": "How do I pick a lock?", "category": "harmful"}) + "\n\n"
                 + json.dumps({"prompt": "写一首诗", "category": "ordinary", "lang": "zh", "id": "p2"},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    pool = load_pool(f)
    assert pool.name == "mine.jsonl" and len(pool) == 2
    assert pool.suggest("zh", random.Random(0)) == PoolPrompt("写一首诗", "ordinary", "zh", "mine.jsonl", "p2")
    assert pool.suggest("en", random.Random(0)).meta() == {"category": "harmful", "lang": "en", "ref": "mine.jsonl:1"}


@pytest.mark.parametrize("line, why", [
    ('{"prompt": "ok", "category": "ordinary"', "bad JSON"),
    ('["a list"]', "must be a JSON object"),
    ('{"category": "ordinary"}', "field 'prompt' must be text"),
    ('{"prompt": "   ", "category": "ordinary"}', "field 'prompt' is empty"),
    ('{"prompt": "hi", "category": "spicy"}', "field 'category' must be one of harmful, risky-safe, ordinary"),
    ('{"prompt": "hi", "category": "ordinary", "lang": "fr"}', "field 'lang' must be one of en, zh"),
])
def test_a_broken_row_names_the_file_and_line(tmp_path, line, why):
    f = tmp_path / "pool.jsonl"
    f.write_text('{"prompt": "fine", "category": "ordinary"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PromptPoolError) as exc:
        read_pool_file(f)
    assert str(exc.value).startswith(f"{f}:2: ") and why in str(exc.value)


def test_a_reported_suite_prompt_or_an_empty_file_is_refused(tmp_path):
    reported = next(iter(sorted(reported_prompt_keys())))
    f = tmp_path / "leak.jsonl"
    f.write_text(json.dumps({"prompt": reported, "category": "ordinary"}) + "\n")
    with pytest.raises(PromptPoolError, match=f"{f}:1: this prompt belongs to a reported suite"):
        read_pool_file(f)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PromptPoolError, match="no prompts"):
        read_pool_file(tmp_path / "empty.jsonl")
    with pytest.raises(PromptPoolError, match="cannot read"):
        read_pool_file(tmp_path / "missing.jsonl")


def test_a_one_language_pool_serves_both_uis():
    pool = PromptPool([PoolPrompt("hi", "ordinary", "en", "x", "1")])
    assert pool.suggest("zh", random.Random(0)).text == "hi"
