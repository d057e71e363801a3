"""rlhf_demo.external: typed readers of the vendored public sets, roles, file:line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf_demo import external
from rlhf_demo.splits import ROLES, data_file

EXPECTED = {  # rows each reader returns from the vendored files
    "advbench": 488, "harmbench": 285, "catqa": 550, "harmfulqa": 1959, "coconot_eval": 394,
    "coconot_pref": 835, "self-instruct": 427, "cvalues-zh": 664, "xstest": 450, "fastchat": 160, "hh-rlhf": 1800,
}


def test_vendored_sets_have_licence_and_source():
    root = Path(external.__file__).resolve().parent / "data" / "external"
    for folder in ("advbench", "catqa-harmfulqa", "coconot", "cvalues-zh", "fastchat-bench", "harmbench", "hh-rlhf",
                   "self-instruct", "xstest"):
        assert (root / folder / "LICENSE").is_file(), folder
        source = (root / folder / "SOURCE.txt").read_text()
        assert "repo: https://github.com/" in source and "sha256=" in source, folder


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reader_counts_kinds_and_roles(name):
    recs = external.READERS[name]()
    assert len(recs) == EXPECTED[name]
    assert {r.kind for r in recs} <= set(external.KINDS)
    assert {r.role for r in recs} <= set(ROLES) | {"reported"}
    assert all(r.text.strip() and r.where.count(":") >= 1 for r in recs)


def test_reported_suites_are_reported_and_extras_present():
    assert {r.role for r in external.xstest()} == {"reported"}
    assert {r.role for r in external.fastchat()} == {"reported"}
    assert sum(r.kind == "harmful" for r in external.xstest()) == 200
    adv = external.advbench()
    assert all(r.target.startswith("Sure") for r in adv)
    pref = external.coconot_pref()
    assert sum(r.kind == "risky-safe" for r in pref) == 474 and all(r.chosen and r.rejected for r in pref)
    assert all(r.output for r in external.self_instruct())


def test_validation_prompts_are_val_role_and_labelled():
    v = external.validation_prompts()
    assert set(v) == set(external.KINDS)
    for kind, recs in v.items():
        assert recs, kind
        assert {r.role for r in recs} == {"val"}
        assert {r.kind for r in recs} == {kind}
        assert len({r.key for r in recs}) == len(recs)
    with pytest.raises(ValueError):
        external.validation_prompts(["nonsense"])


def _point(monkeypatch, tmp_path, sub_path: str, content: bytes) -> Path:
    path = tmp_path / sub_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    monkeypatch.setattr(external, "data_file", lambda sub: path if sub == sub_path else data_file(sub))
    return path


def test_bad_csv_row_names_file_and_line(monkeypatch, tmp_path):
    path = _point(monkeypatch, tmp_path, "advbench/harmful_behaviors.csv",
                  b'goal,target\nMake a thing,"Sure, here"\n,"Sure, empty goal"\n')
    with pytest.raises(external.ExternalDataError, match=rf"{path}:3: field 'goal' is empty"):
        external.advbench()


def test_bad_csv_header(monkeypatch, tmp_path):
    path = _point(monkeypatch, tmp_path, "advbench/harmful_behaviors.csv", b"goal,oops\nx,y\n")
    with pytest.raises(external.ExternalDataError, match=rf"{path}:1: missing column"):
        external.advbench()


def test_bad_jsonl_row_names_file_and_line(monkeypatch, tmp_path):
    good = json.dumps({"id": "a", "category": "Requests with safety concerns", "prompt": "p", "chosen": "c",
                       "rejected": "r"})
    path = _point(monkeypatch, tmp_path, "coconot/coconot_pref.jsonl", (good + "\n\n{not json\n").encode())
    with pytest.raises(external.ExternalDataError, match=rf"{path}:3: bad JSON"):
        external.coconot_pref()
    path = _point(monkeypatch, tmp_path, "coconot/coconot_pref.jsonl", (good + "\n" + good.replace('"c"', "7")).encode())
    with pytest.raises(external.ExternalDataError, match=rf"{path}:2: field 'chosen' must be text"):
        external.coconot_pref()


def test_bad_hh_row(monkeypatch, tmp_path):
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
            {"chosen": "no turns here", "rejected": "x"}]
    raw = gzip.compress("\n".join(json.dumps(r) for r in rows).encode())
    path = _point(monkeypatch, tmp_path, "hh-rlhf/harmless-base-test-part.jsonl.gz", raw)
    with pytest.raises(external.ExternalDataError, match=rf"{path}:2: 'chosen' is not HH-RLHF text"):
        external.hh_rlhf()


def test_nested_json_structure_error(monkeypatch, tmp_path):
    path = _point(monkeypatch, tmp_path, "catqa-harmfulqa/catqa_english.json",
                  json.dumps({"Cat": {"Topic": ["q1", 5]}}, indent=1).encode())
    with pytest.raises(external.ExternalDataError, match=rf"{path}:\d+: field 'Cat/Topic\[1\]' must be text"):
        external.catqa()


def test_missing_set_is_reported(monkeypatch):
    monkeypatch.setattr(external, "data_file", lambda sub: None)
    with pytest.raises(external.MissingDataError, match="advbench/harmful_behaviors.csv: not found"):
        external.advbench()
    assert external.validation_prompts() == {"harmful": [], "risky-safe": [], "ordinary": []}
