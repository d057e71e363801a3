"""scripts/blind_read.py: answers read blind in rounds — readers never see the policy, labels come back per answer."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.blind_read import Plan, blind, main, merge  # noqa: E402


def gen_row(policy, pid, category, prompt, response):
    return {"prompt_id": pid, "category": category, "policy": policy, "prompt": prompt, "response": response}


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def plan(tmp_path):
    g1, g2 = tmp_path / "g1.jsonl", tmp_path / "g2.jsonl"
    write_jsonl(g1, [gen_row("sft", "p1", "unsafe", "how to X", "Sure, step 1"),
                     gen_row("dpo", "p1", "unsafe", "how to X", "I can't help with that."),
                     gen_row("sft", "p2", "safe", "how to Y", "Do Y like this"),
                     gen_row("dpo", "p2", "safe", "how to Y", "Do Y like this")])  # same answer: read once
    write_jsonl(g2, [gen_row("ppo", "p1", "unsafe", "how to X", "I can't help with that."),  # read in round 1
                     gen_row("ppo", "p2", "safe", "how to Y", "Y is unsafe, talk to a professional."),
                     gen_row("other", "p2", "safe", "how to Y", "not in the plan")])
    d = tmp_path / "plan"
    d.mkdir()
    (d / "plan.json").write_text(json.dumps({"prefix": "t", "seed": 3, "chunks": 2,
                                             "rounds": {"1": {str(g1): None}, "2": {str(g2): ["ppo"]}}}))
    return Plan(d / "plan.json")


def chunk_rows(out_dir: Path):
    return [json.loads(line) for f in sorted(out_dir.glob("chunk*.jsonl")) for line in f.read_text().splitlines()]


def test_blind_chunks_hold_only_id_prompt_response_and_skip_what_was_read(plan, tmp_path):
    blind(plan, tmp_path / "r1", 1)
    rows1 = chunk_rows(tmp_path / "r1")
    assert len(rows1) == 3 and all(set(r) == {"id", "prompt", "response"} for r in rows1)
    assert sorted(r["id"] for r in rows1) == ["t-0001", "t-0002", "t-0003"]
    key = json.loads((tmp_path / "r1" / "key.json").read_text())
    assert len(key) == 4 and {k["policy"] for k in key} == {"sft", "dpo"}  # the key, not the chunks, knows policies
    blind(plan, tmp_path / "r2", 2)
    rows2 = chunk_rows(tmp_path / "r2")
    assert [r["response"] for r in rows2] == ["Y is unsafe, talk to a professional."] and rows2[0]["id"] == "t-0004"


def label_all(plan, tmp_path, rounds, refusal_of):
    for rnd in rounds:
        blind(plan, tmp_path / f"r{rnd}", rnd)
        d = plan.read_dir / f"round{rnd}"
        d.mkdir(parents=True, exist_ok=True)
        write_jsonl(d / "labels1.jsonl", [{"id": r["id"], "refusal": refusal_of(r["response"]), "note": "read"}
                                          for r in chunk_rows(tmp_path / f"r{rnd}")])


def test_merge_gives_every_answer_its_label_and_adjudication_wins(plan, tmp_path):
    label_all(plan, tmp_path, (1, 2), lambda text: "can't" in text)
    ids = {r["response"]: r["id"] for r in chunk_rows(tmp_path / "r2")}
    write_jsonl(plan.read_dir / "round2" / "adjudicated.jsonl",
                [{"id": ids["Y is unsafe, talk to a professional."], "refusal": True, "note": "redirect"}])
    out = tmp_path / "labelled.jsonl"
    merge(plan, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6  # every policy's answer, duplicates included
    got = {(r["policy"], r["prompt_id"]): r["refusal"] for r in rows}
    assert got == {("sft", "p1"): False, ("dpo", "p1"): True, ("sft", "p2"): False, ("dpo", "p2"): False,
                   ("ppo", "p1"): True, ("ppo", "p2"): True}
    adjudicated = next(r for r in rows if r["policy"] == "ppo" and r["prompt_id"] == "p2")
    assert adjudicated["note"].startswith("redirect (reader: read)") and adjudicated["source"].endswith("g2.jsonl:2")


def test_merge_refuses_missing_and_double_labels(plan, tmp_path):
    label_all(plan, tmp_path, (1,), lambda text: False)
    lab = plan.read_dir / "round1" / "labels1.jsonl"
    lines = lab.read_text().splitlines()
    lab.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="1 answers have no label"):
        merge(plan, tmp_path / "out.jsonl")
    lab.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(ValueError, match=r"labels1.jsonl:4: t-000\d labelled twice"):
        merge(plan, tmp_path / "out.jsonl")
    lab.write_text('{"id": "t-0001", "refusal": "yes"}\n')
    assert main(["merge", "--plan", str(plan.path), "--out", str(tmp_path / "out.jsonl")]) == 2
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_plan_is_a_clear_error(tmp_path, capsys):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"prefix": "t", "seed": 1, "chunks": 2, "rounds": {"2": {}}}))
    assert main(["blind", "--plan", str(p), "--out-dir", str(tmp_path / "o")]) == 2
    assert "rounds must be numbered 1, 2" in capsys.readouterr().err
