"""The helpfulness judge: never a reward model an evaluated policy was trained against (version cards), a
dedicated judge (role 'judge') by default, its agreement with labelled pairs, and the arena's human votes."""

from __future__ import annotations

import json

import pytest

from eval.__main__ import main
from eval.judge_checks import (choose_reward_judge, human_votes, judge_agreement, judge_conflicts,
                               read_preference_pairs, training_reward_models)
from eval.judges import Judge, Verdict
from eval.report import load_report
from rlhf_demo.registry import Registry, reward_identity

from conftest import write_random_adapter
from test_eval_e2e import common, suites


def publish_policy(settings, name, card, seed=3):
    src = write_random_adapter(settings, settings.data_dir / f"src-{name}", seed=seed, r=4)
    return Registry(settings.versions_dir).publish(src, dict({"kind": "policy"}, **card), name=name)


def publish_reward(settings, name, role=None, seed=0):
    import torch

    from rlhf_demo.base_model import load_base_model
    from training.roles import RewardModel, lora_config

    base, _ = load_base_model(settings)
    torch.manual_seed(seed)
    rm = RewardModel.create(base, lora_config(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    src = rm.save(settings.data_dir / f"rm-{name}")
    card = {"kind": "reward", "base_model": settings.base_model, **({"role": role} if role else {})}
    return Registry(settings.versions_dir).publish(src, card, name=name)


# ------------------------------------------------------------------------------------------------
# pure logic
# ------------------------------------------------------------------------------------------------
class FakeVersion:
    def __init__(self, name, card, is_base=False, kind="policy"):
        self.name, self.card, self.is_base, self.kind = name, card, is_base, kind
        self.number = int(name.rsplit("v", 1)[1]) if name[-1].isdigit() else -1


class FakeRegistry:
    def __init__(self, versions):
        self.v = {v.name: v for v in versions}

    def get(self, name, kind=None):
        if name not in self.v or (kind and self.v[name].kind != kind):
            raise KeyError(name)
        return self.v[name]

    def list(self, kind):
        return [v for v in self.v.values() if v.kind == kind]


REG = FakeRegistry([
    FakeVersion("sft", {}, is_base=True),
    FakeVersion("rlhf-v0", {"parent": "sft", "reward_model": "reward-v0", "reward_model_sha256": "aaa"}),
    FakeVersion("rlhf-v1", {"parent": "rlhf-v0", "reward_model": "reward-v1", "reward_model_sha256": "bbb"}),
    FakeVersion("rlhf-v2", {"parent": "sft", "reward_model": "reward-v0"}),  # an old card without the hash
    FakeVersion("reward-v0", {}, kind="reward"), FakeVersion("reward-v1", {}, kind="reward"),
    FakeVersion("judge-v0", {"role": "judge"}, kind="reward"), FakeVersion("judge-v1", {"role": "judge"}, kind="reward"),
])


def test_training_reward_models_follow_the_parents():
    assert [r["reward_model"] for r in training_reward_models("rlhf-v1", REG)] == ["reward-v1", "reward-v0"]
    assert training_reward_models("sft", REG) == [] and training_reward_models("unknown", REG) == []


def test_judge_conflicts_by_hash_then_by_name():
    # reward-v0 with rlhf-v0's hash: rlhf-v0 itself and rlhf-v1 (trained from it); rlhf-v2 by name (no hash)
    got = judge_conflicts("reward-v0", "aaa", ["sft", "rlhf-v0", "rlhf-v1", "rlhf-v2"], REG)
    assert [(c["policy"], c["through"]) for c in got] == [("rlhf-v0", "rlhf-v0"), ("rlhf-v1", "rlhf-v0"),
                                                          ("rlhf-v2", "rlhf-v2")]
    # another build named reward-v0 (a different hash) is not rlhf-v0's reward model
    assert [c["policy"] for c in judge_conflicts("reward-v0", "zzz", ["rlhf-v0", "rlhf-v2"], REG)] == ["rlhf-v2"]
    assert judge_conflicts("judge-v0", "jjj", ["sft", "rlhf-v0", "rlhf-v1"], REG) == []


def test_a_composed_reward_is_not_its_adapters_plain_reward():
    """reward-v0 and a composed reward-v3 (reward-v0's adapter + a safety term) share the adapter hash; with
    the identity on the policy card they are told apart, and an older card (no identity) still flags."""
    plain = {"files": {"adapter_model.safetensors": "aaa", "score_head.safetensors": "hhh"}}
    composed = {"files": dict(plain["files"], **{"safety_term.npz": "ttt", "safety_term.json": "jjj"})}
    assert reward_identity(plain) != reward_identity(composed) and reward_identity({"files": {}}) is None
    assert reward_identity(composed) == reward_identity(json.loads(json.dumps(composed)))  # a pure function of the card
    reg = FakeRegistry([
        FakeVersion("sft", {}, is_base=True),
        FakeVersion("rlhf-new", {"parent": "sft", "reward_model": "reward-v3", "reward_model_sha256": "aaa",
                                 "reward_model_identity": reward_identity(composed)}),
        FakeVersion("rlhf-old", {"parent": "sft", "reward_model": "reward-v3", "reward_model_sha256": "aaa"}),
    ])
    judged_by_v0 = judge_conflicts("reward-v0", "aaa", ["rlhf-new", "rlhf-old"], reg,
                                   judge_identity=reward_identity(plain))
    assert [c["policy"] for c in judged_by_v0] == ["rlhf-old"]  # the old card only has the adapter hash
    judged_by_v3 = judge_conflicts("reward-v3", "aaa", ["rlhf-new", "rlhf-old"], reg,
                                   judge_identity=reward_identity(composed))
    assert [c["policy"] for c in judged_by_v3] == ["rlhf-new", "rlhf-old"]


def test_the_default_judge_is_the_newest_dedicated_judge():
    assert choose_reward_judge(REG, "b", None, "reward-v0")[0] == "judge-v1"
    assert choose_reward_judge(REG, "b", "judge-v0", "reward-v0")[0] == "judge-v0"
    no_judge = FakeRegistry([v for v in REG.v.values() if not v.name.startswith("judge")])
    name, why = choose_reward_judge(no_judge, "b", None, "reward-v0")
    assert name == "reward-v0" and "no dedicated judge" in why and "stands in" in why


class ScriptedJudge(Judge):
    """Prefers the longer answer (ties on equal length)."""

    name = "scripted"

    def compare(self, prompts, a, b):
        return [Verdict("A" if len(x) > len(y) else "B" if len(y) > len(x) else "tie", 0.5) for x, y in zip(a, b)]


def test_judge_agreement_counts_both_orders_with_a_wilson_interval(tmp_path):
    rows = [{"prompt": "q1", "chosen": "a long good answer", "rejected": "short"},            # correct
            {"prompt": [{"role": "user", "content": "q2"}], "chosen": [{"role": "assistant", "content": "ok"}],
             "rejected": [{"role": "assistant", "content": "a much longer bad one"}]},       # wrong
            {"prompt": "q3", "chosen": "same", "rejected": "size"},                          # tie
            {"prompt": "q4", "chosen": "a long good answer", "rejected": "tiny"}]            # correct
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = judge_agreement(ScriptedJudge(), path)
    assert (out["n"], out["correct"], out["wrong"], out["ties"]) == (4, 2, 1, 1)
    # Wilson 95% for 2/4: center (2 + 1.9208)/(4 + 3.8415) = 0.5, half = 1.96/7.8415 * sqrt(1 + 0.9604) = 0.34997
    assert out["accuracy"]["rate"] == 0.5 and out["accuracy"]["ci"] == pytest.approx([0.15003, 0.84997], abs=1e-4)
    # a file the judge's card lists among its training data is refused
    import hashlib

    card = {"data": [{"spec": str(path), "sha256": {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}}]}
    with pytest.raises(ValueError, match="trained on this file"):
        judge_agreement(ScriptedJudge(), path, judge_card=card)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "x", "chosen": ""}) + "\n")
    with pytest.raises(ValueError, match=f"{bad}:2: 'chosen'"):
        read_preference_pairs(bad)


def test_human_votes_per_version_against_sft():
    def vote(left, right, winner, lh="h1", rh="base", blind=True):
        return {"left_policy": left, "right_policy": right, "left_hash": lh, "right_hash": rh, "winner": winner,
                "blind": blind}

    votes = [vote("rlhf-v0", "sft", "left"), vote("sft", "rlhf-v0", "left", lh="base", rh="h1"),
             vote("rlhf-v0", "sft", "tie"), vote("sft", "rlhf-v0", "both_bad", lh="base", rh="h1"),
             vote("rlhf-v0", "sft", "left", blind=False),           # named mode: left out
             vote("rlhf-v0", "sft", "left", lh="OTHERBUILD"),       # another build of the name: left out
             vote("rlhf-v0", "rlhf-v1", "left")]                    # not against sft
    out = human_votes(votes, {"sft": "base", "rlhf-v0": "h1", "rlhf-v1": "h2"})
    v = out["rlhf-v0"]
    assert (v["n"], v["win"]["k"], v["tie"]["k"], v["loss"]["k"], v["both_bad"]) == (4, 1, 2, 1, 1)
    assert v["win_rate"] == 0.5 and "rlhf-v1" not in out


# ------------------------------------------------------------------------------------------------
# end to end: refused, allowed and marked, or a dedicated judge
# ------------------------------------------------------------------------------------------------
def test_eval_refuses_a_policys_own_reward_model_as_judge(tiny_settings, tmp_path, capsys):
    rv = publish_reward(tiny_settings, "reward-v0")
    sha = rv.card["files"]["adapter_model.safetensors"]
    publish_policy(tiny_settings, "rlhf-v0", {"parent": "sft", "reward_model": "reward-v0", "reward_model_sha256": sha})
    args = ["--policies", "sft", "rlhf-v0", *suites(tmp_path), *common(tiny_settings), "--no-plots"]
    assert main(args + ["--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "reward-v0 is the reward model that rlhf-v0 was trained against" in err and "--allow-own-reward-judge" in err
    assert not (tmp_path / "refused" / "report.json").exists()

    out = tmp_path / "allowed"
    assert main(args + ["--out", str(out), "--allow-own-reward-judge", "--judge-agreement", "none"]) == 0
    assert "WARNING" in capsys.readouterr().err
    report = load_report(out)
    assert report["judge"]["own_reward_judge"] is True and "not an independent judgement" in report["judge"]["warning"]
    assert [c["policy"] for c in report["judge"]["trained_against_by"]] == ["rlhf-v0"]
    md = (out / "report.md").read_text()
    assert "NOT INDEPENDENT" in md


def test_eval_uses_a_dedicated_judge_and_reports_its_agreement_and_votes(tiny_settings, tmp_path):
    from rlhf_demo.store import ConversationRecord, Store, VoteRecord

    rv = publish_reward(tiny_settings, "reward-v0")
    publish_reward(tiny_settings, "judge-v0", role="judge", seed=1)
    p = publish_policy(tiny_settings, "rlhf-v0", {"parent": "sft", "reward_model": "reward-v0",
                                                  "reward_model_sha256": rv.card["files"]["adapter_model.safetensors"]})
    store = Store.from_settings(tiny_settings)
    for k, winner in enumerate(["left", "right", "tie"]):
        conv = ConversationRecord(id=f"c{k}", left_policy="rlhf-v0", right_policy="sft", swapped=False, blind=True)
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        store.record_vote(conv, VoteRecord(conversation_id=f"c{k}", turn=1, left_policy="rlhf-v0", right_policy="sft",
                                           left_hash=p.content_hash, right_hash="base", winner=winner,
                                           left_messages=msgs, right_messages=msgs, blind=True))
    store.close()
    pairs = tmp_path / "held_out.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A helpful answer {i}.",
                                         "rejected": "No."}) + "\n" for i in range(5)))
    out = tmp_path / "report"
    assert main(["--policies", "sft", "rlhf-v0", *suites(tmp_path), *common(tiny_settings), "--no-plots",
                 "--out", str(out), "--judge-agreement", str(pairs)]) == 0
    report = load_report(out)
    j = report["judge"]
    assert j["reward_model"] == "judge-v0" and j["judge_role"] == "judge" and j["trained_against_by"] == []
    assert "passed" in j["provenance_check"] and "dedicated judge" in j["selection"]
    assert j["agreement"]["n"] == 5 and j["agreement"]["file"] == str(pairs)
    assert [c["policy"] for c in report["reward_model"]["trained_against_by"]] == ["rlhf-v0"]
    hv = report["human_votes"]["rlhf-v0"]
    assert (hv["n"], hv["win"]["k"], hv["loss"]["k"], hv["tie"]["k"]) == (3, 1, 1, 1)
    md = (out / "report.md").read_text()
    assert "judge-v0" in md and "Agreement with labelled pairs" in md and "Arena votes" in md
    for name in ("report.json", "report.md", "generations.jsonl", "judgements.jsonl"):
        assert (out / name).is_file()
    from test_doc_links import missing_links, relative_links

    assert {"report.json", "generations.jsonl", "judgements.jsonl"} <= set(relative_links(out / "report.md"))
    assert missing_links(out / "report.md") == []  # the report links only to files it wrote


def test_nothing_trains_against_a_judge(tiny_settings):
    from rlhf_demo.registry import RegistryError
    from arena_app import pipeline as P
    from training.roles import resolve_reward_version

    publish_reward(tiny_settings, "reward-v0")
    publish_reward(tiny_settings, "judge-v0", role="judge", seed=1)
    assert resolve_reward_version(tiny_settings).name == "reward-v0"  # never the default
    with pytest.raises(RegistryError, match="judge-v0 is a judge"):
        resolve_reward_version(tiny_settings, "judge-v0")  # PPO --reward-model judge-v0, reward --reward-model
    assert resolve_reward_version(tiny_settings, "judge-v0", allow_judge=True).name == "judge-v0"
    reg = Registry(tiny_settings.versions_dir)
    assert P.current_reward(reg, tiny_settings).name == "reward-v0"  # the pipeline continues reward-v0, not the judge
