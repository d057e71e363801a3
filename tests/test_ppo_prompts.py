"""PPO's public prompt pool: ``--prompts mix:harmful=N,risky=N,ordinary=N`` from the vendored sets."""

from collections import Counter

import pytest

from rlhf_demo.splits import role_of
from training.data import DataError, load_prompts, parse_mix, parse_source, public_mix_prompts, public_val_prompts
from training.ppo import PPOConfig, prompt_pool


def test_mix_spec_is_parsed_and_bad_specs_say_why():
    assert parse_source("mix").kind == "mix" and parse_source("mix:harmful=3").target == "harmful=3"
    assert parse_mix("") == {"harmful": None, "risky": None, "ordinary": None}
    assert parse_mix("harmful=5, ordinary=2") == {"harmful": 5, "risky": None, "ordinary": 2}
    assert parse_mix("harmful=4,risky=0,ordinary=0") == {"harmful": 4, "risky": 0, "ordinary": 0}
    for bad in ("harmless=3", "harmful=-1", "harmful=x", "harmful"):
        with pytest.raises(DataError, match="KIND=N"):
            parse_mix(bad)
    with pytest.raises(DataError, match="every kind is 0"):
        parse_mix("harmful=0,risky=0,ordinary=0")


def test_mix_is_balanced_by_kind_and_uses_training_role_prompts_only():
    items = public_mix_prompts("")
    by_kind = Counter(it.category for it in items)
    assert set(by_kind) == {"harmful", "sensitive", "ordinary"}
    assert len(set(by_kind.values())) == 1, by_kind  # as many of each kind
    assert {role_of(it.text) for it in items} == {"train"}
    # the harmful sources take turns: the first five come from five different sets
    harmful = [it.source for it in items if it.category == "harmful"]
    assert len(set(harmful[:5])) == 5, harmful[:5]
    assert public_mix_prompts("") == items  # the same pool every time
    few = public_mix_prompts("harmful=7,risky=5,ordinary=3")
    assert Counter(it.category for it in few) == {"harmful": 7, "sensitive": 5, "ordinary": 3}
    with pytest.raises(DataError, match="training-role"):
        public_mix_prompts("risky=100000")
    # KIND=0 leaves a kind out; the kept kind's prompts are the same ones the balanced pool starts with
    only = public_mix_prompts("harmful=7,risky=0,ordinary=0")
    assert only == [it for it in few if it.category == "harmful"]


def test_mix_pool_validates_on_validation_role_prompts_only(tiny_settings):
    train, val = prompt_pool(PPOConfig(prompts=["mix:harmful=20,risky=20,ordinary=20", "seed"], val_prompts=9),
                             tiny_settings)
    assert Counter(v.category for v in val) == {"harmful": 3, "sensitive": 3, "ordinary": 3}
    assert {role_of(v.messages[-1]["content"]) for v in val} == {"val"}
    seed = {it.text for it in load_prompts(["seed"])}
    train_texts = [m[-1]["content"] for m in train]
    assert len(train_texts) == 60 + len(seed)  # the whole pool trains; validation comes from elsewhere
    assert {role_of(t) for t in train_texts if t not in seed} == {"train"}
    assert not {v.messages[-1]["content"] for v in val} & set(train_texts)
    assert [v.messages for v in val] == [[{"role": "user", "content": p.text}] for p in public_val_prompts(9)]
