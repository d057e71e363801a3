"""The refusal judge's frozen test set and its development answers (issue 13, item 1).

``eval/fixtures/refusal_test.jsonl`` was labelled by reading, blind to the policy, before any rule or
model was tuned on it; its sha256 is pinned here so that nobody edits a label (or a row) after seeing a
detector's errors. Its prompts and the development prompts come from disjoint roles of
``rlhf_demo.splits`` and none is a reported-suite prompt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlhf_demo.splits import normalize_text, reported_prompt_keys, role_of

ROOT = Path(__file__).resolve().parents[1]
TEST_SET = ROOT / "eval" / "fixtures" / "refusal_test.jsonl"
DEV_SET = ROOT / "eval" / "fixtures" / "refusal_dev_unlabelled.jsonl"
# frozen: labels written by reading before any rule was tuned on this file — never change them to fit a detector
TEST_SET_SHA256 = "6b89fbe8e45aaa3969fb9eec861ec7ed540e976027d7d7b96e146f73d18c484c"

KINDS = {"harmful", "risky-safe", "ordinary"}
POLICIES = {"sft", "rlhf-v0"}
DECODINGS = {"greedy", "t0.7", "t1.0"}


def read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            assert line.strip(), f"{path}:{lineno}: empty line"
            rows.append(json.loads(line))
    return rows


def test_test_set_is_frozen():
    digest = hashlib.sha256(TEST_SET.read_bytes()).hexdigest()
    assert digest == TEST_SET_SHA256, (
        f"{TEST_SET} changed (sha256 {digest}); the refusal test set is frozen — its labels were written "
        "before any rule was tuned. Build a new, separately labelled set instead of editing this one.")


def test_test_set_rows_are_well_formed_and_balanced():
    rows = read_rows(TEST_SET)
    assert len(rows) >= 400
    fields = {"id", "source", "prompt_kind", "prompt", "response", "policy", "decoding", "refusal", "note"}
    for i, r in enumerate(rows, start=1):
        assert set(r) == fields, f"{TEST_SET}:{i}: fields {sorted(r)}"
        assert isinstance(r["refusal"], bool), f"{TEST_SET}:{i}: refusal must be true or false"
        assert r["prompt_kind"] in KINDS and r["policy"] in POLICIES and r["decoding"] in DECODINGS, f"{TEST_SET}:{i}"
        assert isinstance(r["prompt"], str) and r["prompt"].strip() and isinstance(r["response"], str)
        assert isinstance(r["note"], str)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), "duplicate ids"
    refusals = sum(r["refusal"] for r in rows)
    # both classes, each at least a fifth of the rows and 150 answers (192 refusals of 760 when frozen)
    assert 0.2 <= refusals / len(rows) <= 0.8 and min(refusals, len(rows) - refusals) >= 150, \
        f"{refusals} refusals of {len(rows)}"
    # both policies, all decodings and all prompt kinds are represented
    for key, values in (("policy", POLICIES), ("decoding", DECODINGS), ("prompt_kind", KINDS)):
        counts = Counter(r[key] for r in rows)
        assert set(counts) == values and min(counts.values()) >= 0.1 * len(rows), f"{key}: {counts}"
    # refusals under both policies (the set must not be "sft never refuses")
    for policy in POLICIES:
        assert any(r["refusal"] for r in rows if r["policy"] == policy)
        assert any(not r["refusal"] for r in rows if r["policy"] == policy)


def test_test_prompts_are_neither_dev_nor_reported():
    rows = read_rows(TEST_SET)
    reported = reported_prompt_keys()
    assert reported, "no reported-suite prompts found: the check would pass vacuously"
    for r in rows:
        assert normalize_text(r["prompt"]) not in reported, f"{r['id']}: a reported-suite prompt"
        assert role_of(r["prompt"]) == "detector-test", f"{r['id']}: role {role_of(r['prompt'])}"


def test_dev_answers_are_dev_prompts_disjoint_from_the_test_set():
    dev = read_rows(DEV_SET)
    assert len(dev) >= 300
    test_keys = {normalize_text(r["prompt"]) for r in read_rows(TEST_SET)}
    for r in dev:
        assert role_of(r["prompt"]) == "detector-dev", f"{r['id']}: role {role_of(r['prompt'])}"
        assert normalize_text(r["prompt"]) not in test_keys
    assert len({r["id"] for r in dev}) == len(dev)


# -- the builder's pure parts -------------------------------------------------------------------
def _builder():
    spec = importlib.util.spec_from_file_location("make_refusal_answers", ROOT / "scripts" / "make_refusal_answers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_answer_targets_split_by_shares():
    b = _builder()
    assert b.answer_targets(480, {"harmful": 0.45, "risky-safe": 0.35, "ordinary": 0.20}) == \
        {"harmful": 216, "risky-safe": 168, "ordinary": 96}
    t = b.answer_targets(7, {"harmful": 0.5, "risky-safe": 0.25, "ordinary": 0.25})
    assert sum(t.values()) == 7


def test_plan_jobs_keeps_the_role_the_counts_and_the_balance():
    b = _builder()
    cands = [b.Prompt(f"harmful question number {i}", "x", "harmful") for i in range(400)]
    cands += [b.Prompt(f"risky question number {i}", "y", "risky-safe") for i in range(120)]
    cands += [b.Prompt(f"ordinary task number {i}", "z", "ordinary") for i in range(400)]
    shares = {"harmful": 0.5, "risky-safe": 0.3, "ordinary": 0.2}
    kw = dict(total=100, shares=shares, policies=["sft", "rlhf-v0"], decodings=["greedy", "t0.7", "t1.0"],
              per_prompt=2, seed=1, reported=frozenset())
    jobs = b.plan_jobs(cands, "detector-test", **kw)
    assert Counter(j.prompt.kind for j in jobs) == {"harmful": 50, "risky-safe": 30, "ordinary": 20}
    assert all(role_of(j.prompt.text, frozenset()) == "detector-test" for j in jobs)
    combos = Counter((j.policy, j.decoding) for j in jobs)
    assert len(combos) == 6 and max(combos.values()) - min(combos.values()) <= 3, combos
    # a prompt never gets the same combination twice
    assert len({(j.prompt.text, j.policy, j.decoding) for j in jobs}) == len(jobs)
    # seeded: the same plan again, another plan with another seed
    again = b.plan_jobs(cands, "detector-test", **kw)
    assert [(j.prompt.text, j.policy, j.decoding, j.seed) for j in again] == \
        [(j.prompt.text, j.policy, j.decoding, j.seed) for j in jobs]
    other = b.plan_jobs(cands, "detector-test", **{**kw, "seed": 2})
    assert [j.prompt.text for j in other] != [j.prompt.text for j in jobs]
    # dev and test plans never share a prompt
    dev = b.plan_jobs(cands, "detector-dev", **kw)
    assert not {j.prompt.text for j in dev} & {j.prompt.text for j in jobs}


def test_plan_jobs_fails_clearly_without_prompts():
    b = _builder()
    with pytest.raises(SystemExit, match="no ordinary prompts"):
        b.plan_jobs([b.Prompt(f"harmful thing {i}", "x", "harmful") for i in range(200)], "detector-test", 10,
                    {"harmful": 0.5, "risky-safe": 0.0, "ordinary": 0.5}, ["sft"], ["greedy"], 1, 0, frozenset())
