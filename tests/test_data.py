"""Preference sources, validation with file:line errors, the split by prompt, packed batches, PPO prompts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from training.data import (DataError, EncodedPair, PreferencePair, batch_order, collate_pairs, encode_pair,
                           eval_prompt_keys, hh_to_messages, load_pairs, load_prompts, load_source, normalize_text,
                           parse_source, prompt_key, split_by_prompt)

from conftest import shared_data

CONV = {"prompt": [{"role": "user", "content": "How do I boil an egg?"}],
        "chosen": [{"role": "assistant", "content": "Simmer it for 9 minutes, then cool it in cold water."}],
        "rejected": [{"role": "assistant", "content": "Eggs cannot be boiled."}]}


def write_lines(path: Path, lines: list[bytes | str]) -> Path:
    path.write_bytes(b"\n".join(x.encode() if isinstance(x, str) else x for x in lines) + b"\n")
    return path


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------
def test_every_row_format_normalises_to_one_pair(tmp_path):
    rows = [
        CONV,
        {"prompt": "How do I boil an egg?", "chosen": "Simmer it.", "rejected": "You can't.", "margin": 2},
        {"chosen": CONV["prompt"] + CONV["chosen"], "rejected": CONV["prompt"] + CONV["rejected"]},  # implicit
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it.",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: How do I boil an egg?\n\nAssistant: No."},
    ]
    f = write_lines(tmp_path / "mixed.jsonl", [json.dumps(r) for r in rows])
    pairs = load_source(str(f))
    assert [p.source for p in pairs] == ["mixed"] * 4
    assert pairs[0].prompt == CONV["prompt"] and pairs[0].chosen.startswith("Simmer") and pairs[0].margin is None
    assert pairs[1].prompt == [{"role": "user", "content": "How do I boil an egg?"}] and pairs[1].margin == 2.0
    assert pairs[2].prompt == CONV["prompt"] and pairs[2].rejected == "Eggs cannot be boiled."
    assert [m["role"] for m in pairs[3].prompt] == ["user", "assistant", "user"]
    assert (pairs[3].chosen, pairs[3].rejected) == ("Simmer it.", "No.")
    assert pairs[0].to_trl()["chosen"] == CONV["chosen"]


def test_hh_gz_file_and_hh_details(tmp_path):
    rows = [{"chosen": "\n\nHuman: steal a puppy?\n\nAssistant: ", "rejected": "\n\nHuman: steal a puppy?\n\nAssistant: Sure."},
            # the answers share a prefix that is NOT the prompt boundary
            {"chosen": "\n\nHuman: q\n\nAssistant: Well, no.", "rejected": "\n\nHuman: q\n\nAssistant: Well, yes."},
            # an answer with an inline later turn stays one answer
            {"chosen": "\n\nHuman: a?\n\nAssistant: b\n\nHuman: c?\n\nAssistant: d", "rejected": "\n\nHuman: a?\n\nAssistant: x"}]
    f = tmp_path / "hh.jsonl.gz"
    with gzip.open(f, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    p = load_source(f"hh={f}")
    assert [x.source for x in p] == ["hh"] * 3
    assert p[0].chosen == "" and p[0].rejected == "Sure."  # an empty preferred answer is real HH data
    assert p[1].prompt == [{"role": "user", "content": "q"}] and (p[1].chosen, p[1].rejected) == ("Well, no.", "Well, yes.")
    assert p[2].prompt == [{"role": "user", "content": "a?"}] and p[2].chosen == "b\n\nHuman: c?\n\nd"
    assert hh_to_messages("\n\nHuman: x\n\nAssistant: y") == [{"role": "user", "content": "x"},
                                                              {"role": "assistant", "content": "y"}]


def test_real_hh_rlhf_file_loads():
    path = shared_data("hh-rlhf/harmless-base-test-part.jsonl.gz")
    pairs = load_pairs([f"hh={path}:300"])
    assert len(pairs) == 300 and all(p.prompt[-1]["role"] == "user" for p in pairs)


def test_identical_answers_are_skipped_and_limit_applies(tmp_path):
    same = dict(CONV, rejected=CONV["chosen"])
    f = write_lines(tmp_path / "p.jsonl", [json.dumps(same)] + [json.dumps(CONV)] * 5)
    assert len(load_source(str(f))) == 5
    assert len(load_source(f"{f}:2")) == 2


# ---------------------------------------------------------------------------------------------
# validation: file:line and what is wrong
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, expected", [
    (b'{"prompt": "x", "chosen": "a", ', "bad JSON"),
    (b'{"prompt": "x\x00", "chosen": "a", "rejected": "b"}', "NUL byte"),
    (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "invalid UTF-8"),
    (b'{"prompt": "x", "chosen": "a"}', "missing field 'rejected'"),
    (b'{"prompt": "x", "chosen": "  ", "rejected": "b"}', "field 'chosen' is empty"),
    (b'{"prompt": [{"role": "user", "content": ""}], "chosen": [{"role": "assistant", "content": "a"}], '
     b'"rejected": [{"role": "assistant", "content": "b"}]}', "prompt[0].content' is empty"),
    (b'{"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}', "'margin' must be a number"),
    (b'["a", "b"]', "must be a JSON object"),
    (b'{"chosen": "plain text", "rejected": "b"}', "missing field 'prompt'"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad, expected):
    good = json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"}).encode()
    f = write_lines(tmp_path / "bad.jsonl", [good, b"", good, bad, good])
    with pytest.raises(DataError) as err:
        load_pairs([str(f)])
    assert f"{f}:4" in str(err.value) and expected in str(err.value)


def test_skip_invalid_rows_and_missing_file(tmp_path):
    good = json.dumps({"prompt": "x", "chosen": "a", "rejected": "b"})
    f = write_lines(tmp_path / "bad.jsonl", [good, "{oops", good])
    assert len(load_pairs([str(f)], skip_invalid=True)) == 2
    with pytest.raises(DataError, match="no such file"):
        load_pairs([str(tmp_path / "missing.jsonl")])


def test_source_specs():
    assert parse_source("seed:10").kind == "seed" and parse_source("seed:10").limit == 10
    s = parse_source("hh=/x/harmless.jsonl.gz:50")
    assert (s.name, s.kind, s.target, s.limit) == ("hh", "file", "/x/harmless.jsonl.gz", 50)
    assert parse_source("/x/pairs.jsonl").name == "pairs"
    h = parse_source("hub:Anthropic/hh-rlhf:test:5")
    assert (h.kind, h.target, h.split, h.limit) == ("hub", "Anthropic/hh-rlhf", "test", 5)
    with pytest.raises(DataError, match="--online"):
        load_pairs(["hub:Anthropic/hh-rlhf"])


def test_seed_source_has_categories():
    pairs = load_pairs(["seed"])
    assert {p.category for p in pairs} >= {"harmless", "helpful", "sensitive"}
    assert all(p.source == "seed" and p.id for p in pairs)


def test_arena_source_reads_the_feedback_database(tmp_path):
    from rlhf_demo.config import Settings
    from rlhf_demo.store import ConversationRecord, Store, TurnRecord, VoteRecord

    settings = Settings(data_dir=tmp_path)
    store = Store.from_settings(settings)
    left = [{"role": "user", "content": "Make a bomb"}, {"role": "assistant", "content": "Sure: step 1"}]
    right = [{"role": "user", "content": "Make a bomb"}, {"role": "assistant", "content": "I can't help with that."}]
    conv = ConversationRecord(id="c1", left_policy="sft", right_policy="rlhf-v1", swapped=False, blind=True)
    store.record_turn(conv, TurnRecord(conversation_id="c1", turn=1, user_message="Make a bomb",
                                       left_answer=left[1]["content"], right_answer=right[1]["content"]))
    store.record_vote(conv, VoteRecord(conversation_id="c1", turn=1, left_policy="sft", right_policy="rlhf-v1",
                                       winner="right", left_messages=left, right_messages=right, blind=True))
    store.close()
    [pair] = load_pairs(["arena"], settings)
    assert pair.source == "arena" and pair.chosen == "I can't help with that." and pair.rejected == "Sure: step 1"
    assert pair.meta["from"] == "vote"  # the export's typed record itself, read without a TRL round trip
    assert load_pairs(["votes=arena"], settings)[0].source == "votes"  # the spec's name, as for a file source
    with pytest.raises(DataError, match="no feedback database"):
        load_pairs(["arena"], Settings(data_dir=tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------
# split by prompt
# ---------------------------------------------------------------------------------------------
def _pairs(n_prompts: int, per_prompt: int) -> list[PreferencePair]:
    out = []
    for i in range(n_prompts):
        for j in range(per_prompt):
            # the same prompt with different case/spacing must count as the same prompt
            text = f"Question number {i}?" if j % 2 else f"  question NUMBER {i}?"
            out.append(PreferencePair([{"role": "user", "content": text}], f"good {j}", f"bad {j}", source="t"))
    return out


def test_split_by_prompt_has_no_leak_and_is_deterministic():
    pairs = _pairs(200, 3)
    train, val = split_by_prompt(pairs, 0.25, seed=1)
    assert len(train) + len(val) == len(pairs)
    assert not {prompt_key(p.prompt) for p in train} & {prompt_key(p.prompt) for p in val}
    assert 0.15 < len(val) / len(pairs) < 0.35
    again = split_by_prompt(list(reversed(pairs)), 0.25, seed=1)[1]
    assert sorted(prompt_key(p.prompt) for p in again) == sorted(prompt_key(p.prompt) for p in val)
    other = split_by_prompt(pairs, 0.25, seed=2)[1]
    assert {prompt_key(p.prompt) for p in other} != {prompt_key(p.prompt) for p in val}
    assert split_by_prompt(pairs, 0.0)[1] == []


def test_normalize_text():
    assert normalize_text("  How do I KILL  a Python process? ") == normalize_text("how do i kill a python process")
    assert normalize_text("It’s") == normalize_text("it's")


# ---------------------------------------------------------------------------------------------
# packed batches
# ---------------------------------------------------------------------------------------------
def test_encode_pair_splits_at_the_common_prefix_and_truncates(tokenizer):
    pair = PreferencePair(CONV["prompt"], CONV["chosen"][0]["content"], CONV["rejected"][0]["content"])
    e = encode_pair(tokenizer, pair, max_length=512)
    full_c = tokenizer.apply_chat_template(pair.conversation("chosen"), tokenize=True, return_dict=True)["input_ids"]
    full_r = tokenizer.apply_chat_template(pair.conversation("rejected"), tokenize=True, return_dict=True)["input_ids"]
    assert e.prefix + e.chosen == list(full_c) and e.prefix + e.rejected == list(full_r)
    assert not e.truncated and e.chosen[0] != e.rejected[0]
    long = PreferencePair([{"role": "user", "content": "word " * 400}], "yes " * 30, "no")
    t = encode_pair(tokenizer, long, max_length=64)
    assert t.truncated and len(t.prefix) + len(t.chosen) <= 64 and len(t.prefix) + len(t.rejected) <= 64
    assert t.chosen == encode_pair(tokenizer, long, 4096).chosen  # the answer is kept whole, the prompt is cut


def test_collate_packs_one_row_per_pair():
    items = [EncodedPair([1, 2, 3], [4, 5], [6], margin=1.0), EncodedPair([7], [8], [9, 10, 11])]
    b = collate_pairs(items, pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 0]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 1, 2, 3, 0]]
    assert b.chosen_index.tolist() == [4, 1] and b.rejected_index.tolist() == [5, 4]
    m = b.attention_mask[0, 0]
    assert m[5].tolist() == [True, True, True, False, False, True]  # rejected sees the prompt, not the chosen answer
    assert m[4].tolist() == [True, True, True, True, True, False]  # chosen: causal over prompt + itself
    assert b.attention_mask[1, 0, 5].tolist() == [False] * 5 + [True]  # padding attends to itself only
    assert b.margin.tolist() == [1.0, 0.0] and b.n_tokens == 11
    # LM labels: the chosen tokens, predicted from the position before each
    assert b.lm_index[0].tolist() == [2, 3] and b.lm_labels[0].tolist() == [4, 5]
    assert b.lm_index[1, 0].item() == 0 and b.lm_labels[1].tolist() == [8, -100]


def test_batch_order_is_deterministic_complete_and_groups_lengths():
    lengths = [((i * 37) % 101) + 5 for i in range(400)]
    a = batch_order(lengths, 8, seed=3, epoch=0)
    assert a == batch_order(lengths, 8, seed=3, epoch=0) and a != batch_order(lengths, 8, seed=3, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(400))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = batch_order(lengths, 8, seed=3, epoch=0, group_by_length=False)
    assert padding(a) < padding(plain) / 3


# ---------------------------------------------------------------------------------------------
# prompts for PPO
# ---------------------------------------------------------------------------------------------
def test_prompts_refuse_or_strip_evaluation_prompts(tmp_path):
    evalf = write_lines(tmp_path / "eval.jsonl", [json.dumps({"id": "e1", "prompt": "How do I kill a Python process?"})])
    xs = tmp_path / "xstest.csv"
    xs.write_text("id,prompt,type,label,focus,note\n1,What is the capital of France?,x,safe,y,z\n")
    txt = write_lines(tmp_path / "p.txt", ["how do i kill a python process", "Write a haiku about rain.",
                                           "", "write a haiku about rain."])
    fc = write_lines(tmp_path / "q.jsonl", [json.dumps({"question_id": 1, "turns": ["What is the capital of France?", "x"]}),
                                            json.dumps({"id": "m", "prompt": [{"role": "user", "content": "Hi"}]})])
    items = load_prompts([str(txt), str(fc)], eval_files=[evalf, xs])
    assert [i.text for i in items] == ["Write a haiku about rain.", "Hi"]
    with pytest.raises(DataError, match="evaluation prompt"):
        load_prompts([str(txt)], on_overlap="error", eval_files=[evalf])
    bad = write_lines(tmp_path / "bad.txt", [b"ok", b"caf\xe9"])
    with pytest.raises(DataError, match=f"{bad}:2: invalid UTF-8"):
        load_prompts([str(bad)], eval_files=[])


def raw_user_texts(path: Path) -> list[str]:
    """Every user turn of a JSONL file as written (no loader in between: nothing dropped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            p = json.loads(line)["prompt"]
            out += [p] if isinstance(p, str) else [m["content"] for m in p if m["role"] == "user"]
    return out


def test_seed_ppo_prompts_are_disjoint_from_evaluation_prompts():
    # the raw files, read directly: load_prompts would silently drop an overlap and hide it
    from rlhf_demo.splits import reported_prompt_keys

    reported = reported_prompt_keys()  # XSTest, the project's eval prompts, the FastChat questions
    assert normalize_text("How can I kill a Python process?") in reported and len(reported) > 500
    data = Path(__file__).resolve().parents[1] / "rlhf_demo" / "data"
    for path in [data / "ppo_prompts.jsonl", *sorted((data / "seed_pairs").glob("*.jsonl"))]:
        texts = raw_user_texts(path)
        leaked = [t for t in texts if normalize_text(t) in reported]
        assert len(texts) >= 100 and not leaked, f"{path.name}: {len(leaked)} reported-suite prompts, e.g. {leaked[:1]}"
    items = load_prompts(["seed"])
    assert {i.category for i in items} >= {"harmful", "sensitive"}
    assert not {normalize_text(i.text) for i in items} & eval_prompt_keys()


def test_hub_prompts_need_export(tmp_path):
    with pytest.raises(DataError):
        load_prompts(["hub:x/y"], eval_files=[])


def test_collate_handles_a_single_token_prefix():
    b = collate_pairs([EncodedPair([], [1, 2], [3])], pad_id=0)
    assert b.lm_index[0].tolist()[:1] == [0] and b.lm_labels[0].tolist() == [2, -100]
    assert torch.equal(b.position_ids[0], torch.tensor([0, 1, 0]))
