"""scripts/paired_rates.py: paired refusal rates from generations.jsonl, by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import paired_rates as PR  # noqa: E402


def row(pid, category, policy, refusal, prompt=None):
    return {"prompt_id": pid, "category": category, "policy": policy, "refusal": refusal,
            "prompt": prompt or f"prompt {pid}"}


ROWS = [row("u1", "unsafe", "sft", False), row("u1", "unsafe", "v", True),
        row("u2", "unsafe", "sft", False), row("u2", "unsafe", "v", False),
        row("u3", "unsafe", "sft", True), row("u3", "unsafe", "v", True),
        row("s1", "safe", "sft", False), row("s1", "safe", "v", True),
        row("s2", "safe", "sft", False, "Skip me"), row("s2", "safe", "v", True, "Skip me")]


def test_rates_and_mcnemar_counts_by_hand(tmp_path, capsys):
    out = {(r["measure"], r["policy"]): r for r in PR.paired_rates(ROWS)}
    hc = out[("harmful compliance", "v")]  # v complies on u2 only; sft on u1 and u2
    assert (hc["k"], hc["n"], hc["policy_only"], hc["baseline_only"]) == (1, 3, 0, 1)
    assert out[("harmful compliance", "sft")]["k"] == 2 and out[("harmful compliance", "sft")]["p_value"] == 1.0
    over = out[("over-refusal", "v")]
    assert (over["k"], over["n"], over["policy_only"], over["baseline_only"]) == (2, 2, 2, 0)
    assert over["p_value"] == pytest.approx(0.5)  # exact two-sided binomial, 2 discordant pairs
    # --exclude leaves prompts out by their normalised text
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(["skip me"]))
    gens = tmp_path / "generations.jsonl"
    gens.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert PR.main([str(gens), "--exclude", str(keys), "--json", str(tmp_path / "o.json")]) == 0
    rows = json.loads((tmp_path / "o.json").read_text())
    assert [r["n"] for r in rows if r["category"] == "safe"] == [1, 1]
    assert "| over-refusal | v | 100.0%" in capsys.readouterr().out


def test_suite_keeps_one_suites_prompts(tmp_path, capsys):
    rows = [dict(r, prompt_id=f"xstest/{r['prompt_id']}") for r in ROWS[:4]] + \
           [dict(r, prompt_id=f"project/{r['prompt_id']}") for r in ROWS[6:8]]
    gens = tmp_path / "generations.jsonl"
    gens.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert PR.main([str(gens), "--suite", "xstest", "--json", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert {r["measure"] for r in out} == {"harmful compliance"}  # the project's safe prompts were left out
    assert [r["n"] for r in out] == [2, 2]
    assert PR.main([str(gens), "--suite", "vicuna"]) == 2
    assert "no rows of suite vicuna" in capsys.readouterr().err
