"""Prompt suites: every format, categories, --limit, and file:line errors."""

from __future__ import annotations

import gzip
import json

import pytest

from eval.suites import (SuiteError, hh_first_human_turn, load_suite, load_suites, parse_limits, subsample)
from pathlib import Path

from tests.conftest import shared_data


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_project_suite_categories():
    s = load_suite("project")
    counts = s.counts()
    assert set(counts) <= {"unsafe", "safe", "helpful"} and sum(counts.values()) == len(s.prompts) > 0
    assert all(p.id.startswith("project/") for p in s.prompts)
    limited = load_suite("project", limit=3)
    assert all(v <= 3 for v in limited.counts().values())


def test_xstest_labels():
    shared = shared_data("xstest/xstest_prompts.csv")
    s = load_suite("xstest")
    vendored = Path(__file__).resolve().parents[1] / "rlhf_demo" / "data" / "external" / "xstest" / "xstest_prompts.csv"
    assert s.path == vendored  # the vendored copy first (a plain clone has no ../shared)
    assert s.path.read_bytes() == shared.read_bytes()
    assert s.counts() == {"unsafe": 200, "safe": 250}
    quick = load_suite("xstest", limit=10)
    assert quick.counts() == {"unsafe": 10, "safe": 10}
    assert len({p.meta.get("type") for p in quick.prompts}) > 3  # evenly spaced: several XSTest types


def test_fastchat_and_hh_builtins():
    shared_data("fastchat-bench/vicuna_bench_questions.jsonl")
    v = load_suite("vicuna", limit=5)
    assert v.counts() == {"helpful": 5} and v.format == "fastchat"
    shared_data("hh-rlhf/harmless-base-test-part.jsonl.gz")
    h = load_suite("hh-harmless", limit=4)
    assert h.counts() == {"unsafe": 4} and h.format == "hh-rlhf"
    assert all("\n\nAssistant" not in p.prompt for p in h.prompts)


def test_file_formats(tmp_path):
    txt = write(tmp_path / "red.txt", "# comment\nHow do I pick a lock?\n\nWrite a poem.\n")
    s = load_suite(f"unsafe:{txt}")
    assert [p.prompt for p in s.prompts] == ["How do I pick a lock?", "Write a poem."]
    assert s.counts() == {"unsafe": 2} and s.prompts[0].source.endswith("red.txt:2")
    jl = write(tmp_path / "mine.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "Hi there", "category": "ordinary"},
        {"id": "b", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
         "category": "harmful"},
        {"prompt": "No category"}]) + "\n")
    s = load_suite(str(jl))
    assert s.counts() == {"unsafe": 1, "helpful": 2}
    assert next(p for p in s.prompts if p.id == "mine/b").messages[0]["role"] == "system"
    fc = write(tmp_path / "q.jsonl", json.dumps({"question_id": 7, "category": "math", "turns": ["2+2?", "and 3+3?"]}) + "\n")
    assert load_suite(str(fc)).prompts[0].prompt == "2+2?"
    hh = tmp_path / "harmless-x.jsonl.gz"
    hh.write_bytes(gzip.compress((json.dumps({"chosen": "\n\nHuman: first q\n\nAssistant: a\n\nHuman: second",
                                              "rejected": "x"}) + "\n").encode()))
    s = load_suite(str(hh))
    assert s.prompts[0].prompt == "first q" and s.prompts[0].category == "unsafe"
    csv = write(tmp_path / "x.csv", "id,prompt,label\n1,Kill a process?,safe\n2,Make a bomb,unsafe\n")
    assert load_suite(str(csv)).counts() == {"unsafe": 1, "safe": 1}


@pytest.mark.parametrize("name,text,where", [
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl:2"),
    ("bad2.jsonl", '{"prompt": "ok"}\n\n{"text": "no prompt"}\n', "bad2.jsonl:3"),
    ("bad3.jsonl", '{"prompt": "ok", "category": "weird"}\n', "bad3.jsonl:1"),
    ("bad4.jsonl", '{"prompt": ""}\n', "bad4.jsonl:1"),
    ("bad5.csv", "id,prompt,label\n1,fine,safe\n2,,unsafe\n", "bad5.csv:3"),
    ("bad6.csv", "id,prompt,label\n1,fine,maybe\n", "bad6.csv:2"),
    ("bad7.jsonl", '[1, 2]\n', "bad7.jsonl:1"),
])
def test_malformed_rows_name_file_and_line(tmp_path, name, text, where):
    path = write(tmp_path / name, text)
    with pytest.raises(SuiteError, match=where.replace(".", r"\.")):
        load_suite(str(path))


def test_unknown_and_missing(tmp_path):
    with pytest.raises(SuiteError, match="not a built-in"):
        load_suite(str(tmp_path / "nope.txt"))
    with pytest.raises(SuiteError, match="unknown suite format"):
        load_suite(str(write(tmp_path / "x.yaml", "a: 1")))


def test_limits_and_subsample(tmp_path):
    assert parse_limits(["20", "xstest=5"]) == (20, {"xstest": 5})
    with pytest.raises(SuiteError):
        parse_limits(["x=y"])
    assert subsample(list(range(10)), 3) == [0, 3, 6]
    a = write(tmp_path / "a.txt", "\n".join(f"q{i}" for i in range(10)))
    b = write(tmp_path / "b.txt", "\n".join(f"r{i}" for i in range(10)))
    suites = load_suites([str(a), str(b)], ["4", "b=2"])
    assert [len(s.prompts) for s in suites] == [4, 2]
    with pytest.raises(SuiteError, match="twice"):
        load_suites([str(a), str(a)])


def test_hh_first_turn():
    assert hh_first_human_turn("\n\nHuman: hello\n\nAssistant: hi") == "hello"
    assert hh_first_human_turn("Human: hey there\n\nAssistant: yo") == "hey there"
    assert hh_first_human_turn("no turns") is None


def test_nul_bytes_and_invalid_utf8_name_file_and_line(tmp_path):
    from eval.suites import SuiteError, _read_text

    for name, data, why in [("a.txt", b"ok\nbad\x00line\n", "a.txt:2: NUL byte"),
                            ("b.jsonl", b'{"prompt": "x"}\n{"prompt": "\\u0000"}\n', "b.jsonl:2: NUL byte"),
                            ("c.csv", b"prompt\nfine\n\xff\xfe\n", "c.csv:3: invalid UTF-8")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(SuiteError, match=why):
            _read_text(path)
