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
    # a vote's pair says where it came from (typed prompt here; no pairing logged by this old-style record)
    assert bread.pop("meta") == {"from": "vote", "vote_id": 1, "suggested": False, "prompt_sources": "",
                                 "prompt_categories": "", "pairing": "", "replay_of": None}
    assert better_l.pop("meta")["from"] == "better_answer" and better_r.pop("meta")["vote_id"] is None
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
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "meta"} and len(ds) == 5
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
    assert row.pop("meta")["vote_id"] == 1
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


def test_export_returns_typed_records(store, tmp_path):
    """Issue #14: export returns the core's typed records; TRL rows only at the file boundary (and .pairs)."""
    from rlhf_demo.export import export_prompt_items
    from rlhf_demo.records import PreferencePair, PromptItem

    res = export_pairs(store, "trl", tmp_path / "pairs.jsonl")
    assert all(isinstance(r, PreferencePair) for r in res.records) and len(res.records) == res.written == 5
    bread = res.records[0]
    assert (bread.prompt, bread.chosen, bread.rejected, bread.source) == (
        [{"role": "user", "content": "How do I bake bread?"}], "Knead, rise, bake.", "No.", "arena")
    assert bread.meta["from"] == "vote" and bread.meta["vote_id"] == 1
    multi = res.records[2]  # the preferred side's history is the prompt
    assert [m["content"] for m in multi.prompt] == ["2+2?", "4", "and 3+3?"] and multi.chosen == "6"
    assert res.pairs == [r.to_trl() for r in res.records]
    items = export_prompt_items(store)
    assert all(isinstance(i, PromptItem) for i in items)
    assert [i.to_row() for i in items] == export_prompts(store)
    assert (items[0].text, items[0].source, items[0].category) == ("How do I bake bread?", "arena", "arena")


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


# -- voids, the data card, PII redaction -------------------------------------------------------------------
def test_a_voided_vote_leaves_export_leaderboard_and_training_data(store, tmp_path):
    from rlhf_demo.leaderboard import compute
    from rlhf_demo.config import Settings

    before = export_pairs(store)
    bomb = [v for v in store.votes() if v["conversation_id"] == "c2"][0]
    store.void_vote(bomb["id"], "spam: same prompt 40 times", user="admin")
    after = export_pairs(store)
    assert after.written == before.written - 1 and after.from_votes == 2
    assert all(p["prompt"][0]["content"] != "Make a bomb" for p in after.pairs)
    assert len(store.votes(include_voided=True)) == 6 and len(store.voids()) == 1  # both records are kept
    board = compute(store.votes(), rounds=0)  # 5 blind votes, one voided
    assert board.n_votes == 4 and "right" not in board.by_winner
    assert compute(store.votes(include_voided=True), rounds=0).n_votes == 4  # rows flagged voided count neither
    # training reads the arena through export_pairs: the voided pair is not among its rows
    from training.data import load_source
    pairs = load_source("arena", settings=Settings(data_dir=tmp_path))
    assert len(pairs) == after.written


def test_data_card_counts_versions_dates_voids_and_licence(store):
    v1 = store.votes()[0]
    store.void_vote(v1["id"], "cast by mistake")
    res = export_pairs(store)
    from rlhf_demo.export import data_card
    card = data_card(store, res, licence="CC-BY-4.0")
    c = card["counts"]
    assert (c["votes_stored"], c["votes_voided"], c["votes_used"]) == (6, 1, 5)
    assert c["by_winner"] == {"left": 1, "right": 2, "tie": 1, "both_bad": 1}  # ties and both-bad stay apart
    assert (c["blind_votes_used"], c["named_votes_used"]) == (4, 1)
    assert (c["pairs"], c["pairs_from_votes"], c["pairs_from_better_answers"]) == (4, 2, 2)
    assert c["skipped"] == {"both_bad": 1, "identical_answers": 1, "tie": 1}
    assert card["versions"] == [{"name": "rlhf-v1", "hashes": [], "votes": 5}, {"name": "sft", "hashes": [], "votes": 5}]
    used = [v["created_at"] for v in store.votes()]
    assert card["date_range"] == {"first_vote": min(used).isoformat(timespec="seconds") + "Z",
                                  "last_vote": max(used).isoformat(timespec="seconds") + "Z"}
    assert card["voids"]["count"] == 1 and card["voids"]["by_reason"] == {"cast by mistake": 1}
    assert card["licence"] == "CC-BY-4.0" and card["pii_redaction"] == {"applied": False}
    assert data_card(store, res)["licence"] == "unspecified"
    json.dumps(card)  # serialisable as is


def test_pii_redaction_hand_checked():
    from rlhf_demo.pii import redact

    r = redact("Hi, my name is Jane Doe; mail jane.doe@example.com or call (415) 555-2671. "
               "I live at 221B Baker Street, London. Dr. Watson agrees.")
    assert r.text == ("Hi, my name is [NAME]; mail [EMAIL] or call [PHONE]. I live at [ADDRESS]. "
                      "Dr. [NAME] agrees.")
    assert r.counts == {"name": 2, "email": 1, "phone": 1, "address": 1}
    cn = redact("我叫王小明，电话13812345678，邮箱 wang@example.cn。")
    assert cn.text == "我叫[NAME]，电话[PHONE]，邮箱 [EMAIL]。" and cn.counts == {"name": 1, "phone": 1, "email": 1}
    assert redact("+44 20 7946 0958 and 1600 Pennsylvania Ave, Washington, DC 20500").text == "[PHONE] and [ADDRESS]"
    # no false alarms on ordinary text: numbers, years, "I'm sorry", versions
    for text in ("In 2019 the price rose 15 percent to 1200 dollars.", "I'm sorry, I am not sure.",
                 "Use version 3.3.9 of the library; mix 2 cups of flour.", "How do I bake bread?"):
        assert redact(text).text == text and not redact(text).counts


def test_export_with_redaction_and_the_cli_card(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    add_vote(s, "p1", "left", side("My name is Jane Doe, email jane@example.com. Write my bio.", "Jane is great."),
             side("My name is Jane Doe, email jane@example.com. Write my bio.", "No."))
    res = export_pairs(s, redact_pii=True)
    (row,) = res.pairs
    assert row["prompt"][0]["content"] == "My name is [NAME], email [EMAIL]. Write my bio."
    assert res.redacted == {"name": 1, "email": 1}
    s.close()
    out = subprocess.run([sys.executable, "-m", "rlhf_demo.export", "--out", str(tmp_path / "x" / "pairs.jsonl"),
                          "--redact-pii", "--licence", "CC0-1.0", "--prompts", str(tmp_path / "x" / "prompts.jsonl"),
                          "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    card = json.loads((tmp_path / "x" / "pairs.card.json").read_text())
    assert card["licence"] == "CC0-1.0" and card["pii_redaction"]["applied"] is True
    assert card["pii_redaction"]["counts"] == {"email": 1, "name": 1} and "phonenumbers" in card["pii_redaction"]["method"]
    assert "jane@example.com" not in (tmp_path / "x" / "pairs.jsonl").read_text()
    assert "jane@example.com" not in (tmp_path / "x" / "prompts.jsonl").read_text()
    assert "data card" in out.stdout
