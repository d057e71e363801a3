"""Export: votes and better answers → TRL / HH preference pairs and PPO prompts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_demo.export import export_pairs, export_prompts, messages_to_hh, to_hh
from rlhf_demo.store import BetterAnswerRecord, ConversationRecord, Store, TurnRecord, VoteRecord

ROOT = Path(__file__).resolve().parents[1]


def side(q, a, history=()):
    msgs = []
    for hq, ha in history:
        msgs += [{"role": "user", "content": hq}, {"role": "assistant", "content": ha}]
    return msgs + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def add_vote(store, cid, winner, left, right, blind=True):
    conv = ConversationRecord(id=cid, left_policy="sft", right_policy="rlhf-v1", swapped=False, blind=blind)
    store.record_turn(conv, TurnRecord(conversation_id=cid, turn=1, user_message=left[0]["content"],
                                       left_answer=left[1]["content"], right_answer=right[1]["content"]))
    store.record_vote(conv, VoteRecord(conversation_id=cid, turn=len(left) // 2, left_policy="sft",
                                       right_policy="rlhf-v1", winner=winner, left_messages=left,
                                       right_messages=right, blind=blind))


@pytest.fixture()
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    add_vote(s, "c1", "left", side("How do I bake bread?", "Knead, rise, bake."), side("How do I bake bread?", "No."))
    add_vote(s, "c2", "right", side("Make a bomb", "Sure: step 1"), side("Make a bomb", "I can't help with that."))
    add_vote(s, "c3", "tie", side("hi", "hello"), side("hi", "hey"))
    add_vote(s, "c4", "both_bad", side("2+2?", "5"), side("2+2?", "22"))
    add_vote(s, "c5", "left", side("same?", "yes"), side("same?", "yes"))
    # multi-turn: the preferred (right) side's history is the prompt
    add_vote(s, "c6", "right", side("and 3+3?", "7", [("2+2?", "5")]), side("and 3+3?", "6", [("2+2?", "4")]),
             blind=False)
    conv = ConversationRecord(id="c4", left_policy="sft", right_policy="rlhf-v1", swapped=False, blind=True)
    s.record_better_answer(conv, BetterAnswerRecord(conversation_id="c4", turn=1, text="4",
                                                    left_messages=side("2+2?", "5"), right_messages=side("2+2?", "22"),
                                                    left_policy="sft", right_policy="rlhf-v1"))
    yield s
    s.close()


def test_pairs_follow_the_rules(store, tmp_path):
    res = export_pairs(store, "trl", tmp_path / "pairs.jsonl")
    assert res.from_votes == 3 and res.from_better == 2 and res.written == 5
    assert res.skipped == {"tie": 1, "both_bad": 1, "identical_answers": 1}
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert rows == res.pairs
    bread, bomb, multi, better_l, better_r = rows
    assert bread == {"prompt": [{"role": "user", "content": "How do I bake bread?"}],
                     "chosen": [{"role": "assistant", "content": "Knead, rise, bake."}],
                     "rejected": [{"role": "assistant", "content": "No."}]}
    assert bomb["chosen"][0]["content"] == "I can't help with that."
    assert [m["content"] for m in multi["prompt"]] == ["2+2?", "4", "and 3+3?"]
    assert multi["chosen"][0]["content"] == "6" and multi["rejected"][0]["content"] == "7"
    # the better answer is chosen against BOTH model answers
    assert {better_l["rejected"][0]["content"], better_r["rejected"][0]["content"]} == {"5", "22"}
    assert better_l["chosen"][0]["content"] == better_r["chosen"][0]["content"] == "4"
    assert "wrote 5 pairs" in res.summary() and "1 tie" in res.summary()


def test_blind_only_incremental_and_no_better(store):
    assert export_pairs(store, blind_only=True, better=False).written == 2
    first = export_pairs(store)
    assert export_pairs(store, since_vote_id=first.last_vote_id, since_better_id=first.last_better_id).written == 0


def test_exported_pairs_load_with_datasets_in_trl_schema(store, tmp_path):
    datasets = pytest.importorskip("datasets")
    export_pairs(store, "trl", tmp_path / "pairs.jsonl")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    assert set(ds.column_names) == {"prompt", "chosen", "rejected"} and len(ds) == 5
    row = ds[0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    try:  # TRL's own check, when TRL is installed
        from trl.data_utils import is_conversational
    except ImportError:
        return
    assert is_conversational(row)


def test_hh_format(store, tmp_path):
    export_pairs(store, "hh", tmp_path / "hh.jsonl")
    row = json.loads((tmp_path / "hh.jsonl").read_text().splitlines()[0])
    assert row == {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Knead, rise, bake.",
                   "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: No."}
    assert messages_to_hh([{"role": "system", "content": "Be nice."}, {"role": "user", "content": "q"}]) == \
        "\n\nHuman: Be nice.\n\nq"
    assert to_hh({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                  "rejected": [{"role": "assistant", "content": "b"}]})["rejected"] == "\n\nHuman: q\n\nAssistant: b"


def test_nul_bytes_and_bad_unicode_never_reach_the_file(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'f.db'}")
    add_vote(s, "x", "left", side("q\x00uestion\ud800", "good\x00"), side("q\x00uestion\ud800", "bad"))
    export_pairs(s, "trl", tmp_path / "p.jsonl")
    raw = (tmp_path / "p.jsonl").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    assert b"\x00" not in raw and b"\\u0000" not in raw
    assert json.loads(raw)["prompt"][0]["content"] == "question\ufffd"
    s.close()


def test_prompts_for_ppo(store, tmp_path):
    rows = export_prompts(store, tmp_path / "prompts.jsonl")
    assert [r["prompt"] for r in rows][:2] == ["How do I bake bread?", "Make a bomb"]
    assert all(set(r) == {"id", "category", "prompt"} and r["category"] == "arena" for r in rows)


def test_cli(store, tmp_path):
    out = subprocess.run([sys.executable, "-m", "rlhf_demo.export", "--format", "trl", "--out",
                          str(tmp_path / "cli.jsonl"), "--prompts", str(tmp_path / "p.jsonl"),
                          "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "wrote 5 pairs" in out.stdout and "skipped: 1 both bad, 1 identical answers, 1 tie" in out.stdout
    assert "prompts to" in out.stdout
    assert len((tmp_path / "cli.jsonl").read_text().splitlines()) == 5
    missing = subprocess.run([sys.executable, "-m", "rlhf_demo.export", "--out", str(tmp_path / "x.jsonl"),
                              "--data-dir", str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and "no feedback database" in missing.stderr
