"""training.build_pairs: answer banks, truncation, balance of refusals, the shipped pair files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rlhf_demo.splits import normalize_text, role_of
from training import build_pairs as bp
from training.contrast import summarize, wilson

PAIRS = bp.OUT_DIR


def test_refusal_bank_is_varied_and_recognised():
    assert len(bp.REFUSALS) == 40 and len(set(bp.REFUSALS)) == 40
    assert len({t.split()[0] for t in bp.REFUSALS}) >= 8  # not one template: many different openings
    assert sum(any(w in t for w in ("instead", "else", "safer", "safe", "general", "resources", "professional"))
               for t in bp.REFUSALS) >= 12  # some give a reason or offer a safe alternative
    assert sum(len(t.split()) <= 8 for t in bp.REFUSALS) >= 8  # and some are short
    assert all(bp.looks_like_refusal(t) for t in bp.REFUSALS)
    assert not any(bp.looks_like_refusal(t) for t in bp.VAGUE)
    assert set(bp.HELD_OUT_REFUSALS).isdisjoint(bp.TRAIN_REFUSALS) and len(bp.HELD_OUT_REFUSALS) == 8


@pytest.mark.parametrize("text,expected", [
    ("I'm sorry, but I can't help with that.", True),
    ("As an AI language model, I cannot browse the web.", True),
    ("Sure! Here is how to bake bread: mix flour and water.", False),
    ("To kill a Python process, run `kill PID`. I can't stress enough to save first.", False),
    ("Well, I cannot provide that information for safety reasons.", True),
])
def test_looks_like_refusal(text, expected):
    assert bp.looks_like_refusal(text) is expected


def test_truncate_words_cuts_at_sentence_end():
    text = " ".join(f"Sentence number {i} is here." for i in range(50))  # 5 words a sentence
    out = bp.truncate_words(text, 12)
    assert out == "Sentence number 0 is here. Sentence number 1 is here."
    assert bp.truncate_words("short answer.", 120) == "short answer."
    # no sentence end late enough: cut at the word and mark it
    long = "word " * 30
    assert bp.truncate_words(long, 10) == ("word " * 10).strip() + " …"
    # a numbered list marker is not a sentence end; a dangling heading is dropped
    listy = "Intro line here.\n\n### Head\n\n1. one two three four five six seven eight"
    assert bp.truncate_words(listy, 8) == "Intro line here."


def test_template_cycler_is_even():
    cyc = bp.TemplateCycler(range(5), seed=0, tag="t")
    counts = Counter(cyc.next() for _ in range(23))
    assert set(counts) == set(range(5)) and max(counts.values()) - min(counts.values()) <= 1


def test_wilson_interval_hand_values():
    lo, hi = wilson(9, 10)
    assert lo == pytest.approx(0.5958, abs=1e-3) and hi == pytest.approx(0.9821, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_contrast_summary():
    rows = [{"kind": "harmful", "sft_refuses": False}, {"kind": "harmful", "sft_refuses": True},
            {"kind": "risky-safe", "sft_refuses": False}]
    s = summarize(rows, [1.0, 0.0, 2.0], [0.0, 1.0, 1.0])
    assert s["harmful"]["all"]["wins"] == 1 and s["harmful"]["all"]["n"] == 2
    assert s["harmful"]["excluding SFT refusals"]["rate"] == 1.0
    assert s["risky-safe"]["all"]["mean_margin"] == 1.0


# ---- the shipped files (rlhf_demo/data/pairs, written by `make data`) -----------------------------
def _rows(name: str) -> list[dict]:
    path = PAIRS / name
    if not path.is_file():
        pytest.skip(f"{path} absent: run `make data`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["train.jsonl", "heldout_val.jsonl"])
def test_is_a_refusal_alone_predicts_nothing(name):
    rows = _rows(name)
    one_sided = [r for r in rows if bp.looks_like_refusal(r["chosen"][0]["content"])
                 != bp.looks_like_refusal(r["rejected"][0]["content"])]
    refusal_chosen = sum(bp.looks_like_refusal(r["chosen"][0]["content"]) for r in one_sided)
    share = refusal_chosen / len(one_sided)
    assert 0.45 <= share <= 0.55, f"a refusal is chosen in {share:.0%} of the pairs with one refusal"
    # every bank text used on both sides, about equally often
    index = {t: i for i, t in enumerate(bp.REFUSALS)}
    per = Counter()
    for r in rows:
        for side in ("chosen", "rejected"):
            i = index.get(r[side][0]["content"])
            if i is not None:
                per[(i, side)] += 1
    used = {i for i, _ in per}
    allowed = set(bp.TRAIN_REFUSALS if name == "train.jsonl" else bp.HELD_OUT_REFUSALS)
    assert used == allowed
    for i in used:
        c, j = per[(i, "chosen")], per[(i, "rejected")]
        assert c > 0 and j > 0 and abs(c - j) <= max(4, 0.3 * (c + j)), (i, c, j)


def test_roles_of_the_files():
    for name, role in (("train.jsonl", "train"), ("heldout_val.jsonl", "val"), ("contrast_val.jsonl", "val"),
                       ("judge_train.jsonl", "judge")):
        for r in _rows(name):
            if r["id"].startswith("seed:"):
                continue  # the project's own seed prompts: the reward recipe splits them itself
            assert role_of(r["prompt"][-1]["content"]) == role, (name, r["id"])
    train_keys = {normalize_text(r["prompt"][-1]["content"]) for r in _rows("train.jsonl")}
    judge_keys = {normalize_text(r["prompt"][-1]["content"]) for r in _rows("judge_train.jsonl")}
    agree_keys = {normalize_text(r["prompt"][-1]["content"]) for r in _rows("judge_agreement.jsonl")}
    assert not train_keys & judge_keys and not judge_keys & agree_keys


def test_kinds_and_types_present():
    rows = _rows("train.jsonl")
    types = Counter(r["category"] for r in rows)
    for t in ("harmful/refusal>sft", "harmful/refusal>advbench-target", "risky-safe/coconot>refusal",
              "risky-safe/seed-sensitive>refusal", "ordinary/self-instruct>refusal"):
        assert types[t] > 20, t
    contrast = _rows("contrast_val.jsonl")
    kinds = Counter(r["kind"] for r in contrast)
    assert kinds["harmful"] >= 100 and kinds["risky-safe"] >= 50
    manifest = json.loads((PAIRS / "manifest.json").read_text())
    for name, info in manifest["files"].items():
        assert info["sha256"] == bp.sha256_file(PAIRS / name), name


def _rec(text, source, kind, role, **kw):
    from rlhf_demo.external import ExternalPrompt

    return ExternalPrompt(text=text, source=source, id=text[:10], kind=kind, role=role, **kw)


def test_build_role_pairs_balances_refusals_on_synthetic_inputs():
    cfg = bp.BuildConfig(seed=3)
    harmful = [_rec(f"harmful request {i}", "catqa", "harmful", "train") for i in range(60)]
    adv = [_rec(f"adv request {i}", "advbench", "harmful", "train", target=f"Sure, here is thing {i}")
           for i in range(40)]
    coconot = [_rec(f"risky but safe {i}", "coconot_pref", "risky-safe", "train", chosen=f"A real answer {i}.",
                    rejected="I'm sorry, I cannot help." if i % 4 == 0 else f"weak {i}") for i in range(30)]
    si = [_rec(f"everyday task {i}", "self-instruct", "ordinary", "train", output=f"Done: {i}.") for i in range(100)]
    inp = bp.Inputs({"catqa": harmful, "advbench": adv}, coconot, si, adv, [])
    plan = {"harmful-train": harmful}
    answers = {bp.answer_key(r.text, cfg): {"response": "I'm sorry, no." if i < 10 else f"Here you go {i}"}
               for i, r in enumerate(harmful)}
    pairs, skipped = bp.build_role_pairs(inp, answers, plan, cfg, "train")
    assert skipped["harmful: SFT answer already refuses or is empty"] == 10
    assert skipped["safe: refusal pairs dropped to keep refusals balanced"] == 91  # 148 + 100 // 3 - 90
    bal = bp.refusal_balance(pairs)
    assert bal["refusal_chosen"] == 90  # 50 SFT + 40 AdvBench
    assert bal["refusal_rejected"] == 90  # 57 safe (of 148 candidates) + 33 ordinary: equal
    types = Counter(p["category"] for p in pairs)
    assert types["ordinary/self-instruct>refusal"] == 33 and types["ordinary/self-instruct>vague"] == 67
    for i, (c, r) in bal["per_template"].items():
        assert i in bp.TRAIN_REFUSALS and abs(c - r) <= 2, (i, c, r)


def test_contrast_read_rows_errors(tmp_path):
    from training.contrast import read_rows

    path = tmp_path / "c.jsonl"
    path.write_text('{"kind": "harmful"}\n{"kind": "weird"}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: a contrast row needs"):
        read_rows(path)


def test_contrast_rows_from_labelled_own_answers(tmp_path):
    """--labelled: per prompt, its first refusal vs its first non-refusal; the refusal is chosen on a harmful prompt,
    the answer otherwise; prompts without both are skipped; --where filters; a bad row is a file:line error."""
    from training.contrast import labelled_rows

    def row(i, prompt, kind, refusal, split="holdout"):
        return json.dumps({"id": f"d{i}", "prompt": prompt, "prompt_kind": kind, "response": f"answer {i}",
                           "refusal": refusal, "split": split})

    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join([row(1, "make a bomb", "harmful", False), row(2, "make a bomb", "harmful", True),
                               row(3, "make a bomb", "harmful", True), row(4, "kill a process", "risky-safe", True),
                               row(5, "kill a process", "risky-safe", False), row(6, "hi", "ordinary", False),
                               row(7, "x", "harmful", True, "tune"), row(8, "x", "harmful", False, "tune")]) + "\n")
    rows = labelled_rows(path, [("split", "holdout")])
    assert [(r["prompt"][0]["content"], r["kind"], r["chosen"][0]["content"], r["rejected"][0]["content"])
            for r in rows] == [("make a bomb", "harmful", "answer 2", "answer 1"),
                               ("kill a process", "risky-safe", "answer 5", "answer 4")]
    assert len(labelled_rows(path)) == 3 and rows[0]["id"] == "d2|d1"
    s = summarize(rows, [1.0, -1.0], [0.0, 0.0])
    assert list(s["harmful"]) == ["all"] and s["harmful"]["all"]["wins"] == 1 and s["risky-safe"]["all"]["wins"] == 0
    from rlhf_demo.jsonl import parse_where

    assert parse_where(["split=holdout", "a=b=c"]) == [("split", "holdout"), ("a", "b=c")]
    for bad in ("split", "=x"):
        with pytest.raises(ValueError, match="FIELD=VALUE"):
            parse_where([bad])
    with pytest.raises(ValueError, match=r"no prompt with both.*\[split=nowhere\]"):
        labelled_rows(path, [("split", "nowhere")])
    path.write_text(row(1, "a", "harmful", True) + '\n{"prompt": "a", "response": "b", "refusal": "yes"}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: a labelled row needs"):
        labelled_rows(path)


def test_command_help():
    import subprocess
    import sys

    for mod in ("training.build_pairs", "training.contrast"):
        out = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage:" in out.stdout, (mod, out.stderr[-500:])
