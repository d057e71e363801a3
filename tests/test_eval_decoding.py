"""Eval decodes in float32 under --dtype auto: a greedy answer must not depend on its batch neighbours
(docs/decode-noise/README.md), and answers decoded in another dtype are not silently mixed in."""

from __future__ import annotations

import json

import pytest
import torch

from eval.__main__ import main
from eval.report import load_report
from eval.runner import check_reuse_dtype, decoding_settings
from rlhf_demo.config import Settings
from tests.test_eval_e2e import common, suites


def test_auto_means_float32_for_eval_and_explicit_dtypes_stay():
    assert decoding_settings(Settings(dtype="auto", device="cpu")).dtype == "float32"
    assert decoding_settings(Settings(dtype="bfloat16", device="cpu")).dtype == "bfloat16"
    assert decoding_settings(Settings(dtype="auto", device="cpu", load_in_4bit=True)).dtype == "auto"


def test_reuse_refuses_answers_of_another_dtype(tmp_path, capsys):
    run = tmp_path / "earlier"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"settings": {"decoding_dtype": "bfloat16"}}))
    with pytest.raises(ValueError, match="decoded in bfloat16, this run decodes in float32"):
        check_reuse_dtype(run, "float32")
    with pytest.raises(ValueError, match="--dtype bfloat16"):
        check_reuse_dtype(run / "generations.jsonl", "float32")  # a file inside the report dir: same check
    check_reuse_dtype(run, "bfloat16")  # same dtype: fine
    assert capsys.readouterr().err == ""
    (run / "report.json").write_text(json.dumps({"settings": {"dtype": "auto"}}))  # a report from before the field
    check_reuse_dtype(run, "float32")
    assert "decoding dtype is not recorded" in capsys.readouterr().err


def test_float32_greedy_answers_do_not_depend_on_the_batch(tiny_settings, random_adapter):
    from rlhf_demo.generation import (BASE_ADAPTER, GenerationParams, PolicyServer, build_prompt_ids,
                                      decode_batch)
    from rlhf_demo.registry import Registry

    settings = decoding_settings(Settings(data_dir=tiny_settings.data_dir, base_model=tiny_settings.base_model,
                                          device="cpu", dtype="auto"))
    server = PolicyServer.from_settings(settings, registry=Registry(tiny_settings.versions_dir))
    assert server.base.dtype == torch.float32
    server.add_adapter("p", random_adapter(tiny_settings, seed=3))
    texts = ["How do I kill a Python process?", "Write a haiku about rain and the sea at night.", "Hi",
             "Give me three tips for sleeping better, please, in detail.", "What is 2+2?", "Name a colour."]
    ids = [build_prompt_ids(server.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    params = GenerationParams(max_new_tokens=12, greedy=True, seed=0)
    alone = [decode_batch(server.model, server.tokenizer, [i], [params], ["p"])[0].token_ids for i in ids]
    rows = [(k, a) for k in reversed(range(len(ids))) for a in (BASE_ADAPTER, "p")]  # mixed adapters, padded
    mixed = decode_batch(server.model, server.tokenizer, [ids[k] for k, _ in rows], [params] * len(rows),
                         [a for _, a in rows])
    got = {k: r.token_ids for (k, a), r in zip(rows, mixed) if a == "p"}
    assert [got[k] for k in range(len(ids))] == alone
    server.close()


def test_report_records_the_decoding_dtype_and_reuse_checks_it(tiny_settings, tmp_path, capsys):
    args = [a if a != "float32" else "auto" for a in common(tiny_settings)]  # --dtype auto
    out = tmp_path / "report"
    assert main(["--policies", "sft", "sft", *suites(tmp_path), *args, "--out", str(out)]) == 0
    settings = load_report(out)["settings"]
    assert settings["dtype"] == "auto" and settings["decoding_dtype"] == "float32"
    capsys.readouterr()
    again = [a if a != "auto" else "bfloat16" for a in args]
    assert main(["--policies", "sft", "sft", *suites(tmp_path), *again, "--out", str(tmp_path / "r2"),
                 "--reuse-generations", str(out)]) == 2
    assert "decoded in float32, this run decodes in bfloat16" in capsys.readouterr().err
