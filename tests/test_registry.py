import json
import os

import pytest

from rlhf_demo.registry import Registry, RegistryError, check_name


def publish_adapter(registry, settings, random_adapter, seed=1, name=None):
    return registry.publish(random_adapter(settings, seed), {"kind": "policy", "parent": "sft"}, name=name)


def test_publish_list_load_round_trip(tiny_settings, random_adapter):
    reg = Registry(tiny_settings.versions_dir, package_dir=None)
    assert reg.names() == ["sft"] and reg.newest() is None and reg.next_name() == "rlhf-v0"
    v0 = publish_adapter(reg, tiny_settings, random_adapter, 1)
    v1 = publish_adapter(reg, tiny_settings, random_adapter, 2)
    assert (v0.name, v1.name) == ("rlhf-v0", "rlhf-v1")
    assert reg.names() == ["sft", "rlhf-v0", "rlhf-v1"] and reg.newest().name == "rlhf-v1"
    got = reg.get("rlhf-v0")
    assert got.card["parent"] == "sft" and len(got.content_hash) == 16 and got.content_hash != v1.content_hash
    assert set(got.card["files"]) >= {"adapter_config.json", "adapter_model.safetensors"}
    with pytest.raises(RegistryError, match="exists already"):
        publish_adapter(reg, tiny_settings, random_adapter, 3, name="rlhf-v0")
    from peft import PeftModel
    from rlhf_demo.base_model import load_base_model
    base, _ = load_base_model(tiny_settings)
    PeftModel.from_pretrained(base, str(got.path))  # standard PEFT format


def test_package_and_data_versions_are_listed_together(tiny_settings, random_adapter, tmp_path):
    pkg = Registry(tmp_path / "pkg", package_dir=None)
    publish_adapter(pkg, tiny_settings, random_adapter, 1, name="rlhf-v0")
    reg = Registry(tiny_settings.versions_dir, package_dir=tmp_path / "pkg")
    publish_adapter(reg, tiny_settings, random_adapter, 2)
    assert [(v.name, v.source) for v in reg.list()] == [("sft", "base"), ("rlhf-v0", "package"), ("rlhf-v1", "data")]


def test_shipped_and_own_versions_never_collide(tiny_settings, random_adapter, tmp_path):
    """Issue #14: a new name is free in both registries; a name a later release ships keeps both versions."""
    pkg = Registry(tmp_path / "pkg", package_dir=None)
    shipped = publish_adapter(pkg, tiny_settings, random_adapter, 1, name="rlhf-v0")
    reg = Registry(tiny_settings.versions_dir, package_dir=tmp_path / "pkg")
    with pytest.raises(RegistryError, match="exists already"):  # a pipeline can never take a shipped name
        publish_adapter(reg, tiny_settings, random_adapter, 2, name="rlhf-v0")
    own = publish_adapter(reg, tiny_settings, random_adapter, 2)  # the next free name across both
    assert own.name == "rlhf-v1" and own.source == "data"
    # a later release ships rlhf-v1 too: the shipped one keeps the name, the user's is listed as rlhf-v1-local
    later = publish_adapter(pkg, tiny_settings, random_adapter, 3, name="rlhf-v1")
    assert [v.label for v in reg.list()] == ["sft (base)", "rlhf-v0 (package)", "rlhf-v1 (package)",
                                             "rlhf-v1-local (data)"]
    assert reg.get("rlhf-v1").content_hash == later.content_hash
    mine = reg.get("rlhf-v1-local")
    assert mine.path == own.path and mine.content_hash == own.content_hash and mine.number == 1
    assert reg.problems == {} and reg.next_name() == "rlhf-v2"
    with pytest.raises(RegistryError, match="exists already"):
        publish_adapter(reg, tiny_settings, random_adapter, 4, name="rlhf-v1-local")
    # a data dir that already holds a real rlhf-v1-local: the alias moves on to -local2
    publish_adapter(Registry(tiny_settings.versions_dir, package_dir=None), tiny_settings, random_adapter, 5,
                    name="rlhf-v1-local")
    names = {v.name: v.path.name for v in reg.list() if v.path}
    assert names["rlhf-v1-local2"] == "rlhf-v1" and names["rlhf-v1-local"] == "rlhf-v1-local"


def test_interrupted_publish_leaves_registry_unchanged(tiny_settings, random_adapter, monkeypatch):
    reg = Registry(tiny_settings.versions_dir, package_dir=None)
    publish_adapter(reg, tiny_settings, random_adapter, 1)
    before = reg.names()

    def crash(src, dst):
        raise KeyboardInterrupt("killed during rename")
    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        publish_adapter(reg, tiny_settings, random_adapter, 2)
    monkeypatch.undo()
    assert reg.names() == before and not list(tiny_settings.versions_dir.glob(".tmp-*"))
    # a leftover temp dir from a SIGKILL is invisible and cleaned on request
    (tiny_settings.versions_dir / ".tmp-rlhf-v1-abc").mkdir()
    assert reg.names() == before
    assert len(reg.clean_partial()) == 1


def test_corrupt_and_partial_versions_are_reported_and_skipped(tiny_settings, random_adapter):
    reg = Registry(tiny_settings.versions_dir, package_dir=None)
    v0 = publish_adapter(reg, tiny_settings, random_adapter, 1)
    publish_adapter(reg, tiny_settings, random_adapter, 2)
    with open(v0.path / "adapter_model.safetensors", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00" * 64)
    (tiny_settings.versions_dir / "rlhf-v7").mkdir()  # no card: partial
    assert reg.names() == ["sft", "rlhf-v1"]
    assert "corrupt" in reg.problems["rlhf-v0"] and "card.json" in reg.problems["rlhf-v7"]
    with pytest.raises(RegistryError, match="broken"):
        reg.get("rlhf-v0")
    assert reg.next_name() == "rlhf-v8", "never reuse the name of a broken version"


def test_bad_names_and_unknown_versions(tiny_settings):
    reg = Registry(tiny_settings.versions_dir, package_dir=None)
    for bad in ["../etc", "a/b", "", "RLHF", ".hidden", "x" * 80]:
        with pytest.raises(RegistryError, match="invalid version name"):
            check_name(bad)
    with pytest.raises(RegistryError, match="unknown version 'rlhf-v9'; known: sft"):
        reg.get("rlhf-v9")
    with pytest.raises(RegistryError, match="invalid"):
        reg.get("../../secrets")


def test_card_with_bad_kind_is_skipped(tiny_settings):
    d = tiny_settings.versions_dir / "rlhf-v3"
    d.mkdir(parents=True)
    (d / "card.json").write_text(json.dumps({"kind": "banana"}))
    reg = Registry(tiny_settings.versions_dir, package_dir=None)
    assert reg.names() == ["sft"] and "kind" in reg.problems["rlhf-v3"]


@pytest.mark.shipped_versions
def test_shipped_versions_are_complete_and_listed(tmp_path):
    reg = Registry(tmp_path / "versions")
    assert {"rlhf-v0"} <= set(reg.names("policy")) and "reward-v0" in reg.names("reward")
    assert not reg.problems, reg.problems
    card = reg.get("rlhf-v0").card
    assert card["reward_model"] == "reward-v0"
    assert card["reward_model_sha256"] == reg.get("reward-v0").card["files"]["adapter_model.safetensors"]
