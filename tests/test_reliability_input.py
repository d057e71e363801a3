"""Bad input, each with a test (the cases the other test files do not cover already).

Already covered elsewhere, not repeated here: empty/whitespace and over-long messages in the arena
(test_app), ``<script>``/HTML/outside images in PROMPTS in a real browser (test_browser), NUL and lone
surrogates in exported files (test_export), malformed eval-suite rows (test_eval_suites), prompt
injection aimed at the judge (test_eval_judges), version names with ``../`` in the registry, the
app's named mode and ``--policies`` (test_registry, test_app), corrupt/partial versions (test_registry).

Here: 100,000-character inputs; NUL bytes and invalid UTF-8 in training data, PPO prompt files,
``python -m rlhf_demo.generate`` prompt files, eval suites and the users file; malformed training
rows (file:line); adapters with wrong shapes or missing files (refused with a clear message, other
versions keep serving — the arena too); ``../`` names in every CLI that takes a version name.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import write_random_adapter
from rlhf_demo.config import Settings
from rlhf_demo.generation import GenerationError, GenerationParams, Group, Request, Stream
from rlhf_demo.registry import SFT, Registry, RegistryError

ROOT = Path(__file__).resolve().parents[1]
GREEDY = GenerationParams(max_new_tokens=6, greedy=True, repetition_penalty=1.0)


# ---------------------------------------------------------------------------------------------
# a scripted policy server: the arena without a model (also used by the browser and access tests)
# ---------------------------------------------------------------------------------------------
class ScriptedServer:
    """Stands in for :class:`~rlhf_demo.generation.PolicyServer`: every policy answers ``answer(request)``,
    streamed a few characters per step like a real decode loop."""

    def __init__(self, registry: Registry, answer=None, step_chars: int = 12, step_s: float = 0.005):
        self.registry = registry
        self.answer = answer or (lambda req: f"An answer from {req.policy} (seed {req.params.seed}).")
        self.step_chars, self.step_s = step_chars, step_s
        self.loaded: dict[str, str] = {}
        self.requests: list[Request] = []

    def policies(self) -> list[str]:
        return self.registry.names("policy")

    def ensure_policy(self, name: str) -> None:
        if name != SFT:
            try:
                self.loaded[name] = self.registry.get(name, kind="policy").content_hash
            except RegistryError as exc:
                raise GenerationError(str(exc)) from exc

    def submit(self, requests):
        for r in requests:
            self.ensure_policy(r.policy)
        self.requests.extend(requests)
        group = Group()
        group.streams = [Stream(r, group) for r in requests]
        texts = [self.answer(r) for r in requests]

        def run():
            longest = max(len(t) for t in texts)
            for end in range(self.step_chars, longest + self.step_chars, self.step_chars):
                time.sleep(self.step_s)
                for s, text in zip(group.streams, texts):
                    if not s.done:
                        if s.first_token_s is None:
                            s.first_token_s = time.monotonic() - s.submitted
                        s.text = text[:end]
                        if end >= len(text):
                            s.done, s.finish_reason = True, "eos"
                            s.total_s = time.monotonic() - s.submitted
                group.notify()

        threading.Thread(target=run, daemon=True).start()
        return group.streams

    def close(self) -> None:
        pass


def scripted_app(tmp_path, answer=None, users=None, admins=(), local_admin=True, training_ui=None, **settings_kw):
    """A launched arena (SFT against itself, blind) on a scripted server; returns (app, url)."""
    from rlhf_demo.store import Store
    from arena_app.ui import build_app
    from test_app import free_port

    kw = dict(max_new_tokens=16, max_input_chars=500, max_turns=3, votes_per_hour=1000)
    kw.update(settings_kw)
    settings = Settings(data_dir=tmp_path, device="cpu", **kw)
    registry = Registry(settings.versions_dir, package_dir=None)
    server = ScriptedServer(registry, answer)
    app = build_app(settings, server=server, store=Store.from_settings(settings), registry=registry, users=users,
                    admins=admins, policies="sft,sft", seed=0, local_admin=local_admin, bootstrap_rounds=10,
                    training_ui=training_ui)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def client(url, **kw):
    from gradio_client import Client

    return Client(url, verbose=False, **kw)


# ---------------------------------------------------------------------------------------------
# 100,000-character inputs
# ---------------------------------------------------------------------------------------------
def test_100k_characters_in_better_answers_and_comments_are_refused_with_a_message(tmp_path):
    from gradio_client.exceptions import AppError

    app, url = scripted_app(tmp_path)
    try:
        c = client(url)
        c.predict("hello", api_name="/send")
        with pytest.raises(AppError, match="100000 characters long; the limit is 8000"):
            c.predict("b" * 100_000, api_name="/better_answer")
        with pytest.raises(AppError, match="comment is too long"):
            c.predict([], "c" * 100_000, api_name="/vote_left")
        assert app.store.votes() == [] and app.store.better_answers() == []
        c.predict([], "fine", api_name="/vote_left")  # the round is still usable
        assert [v["comment"] for v in app.store.votes()] == ["fine"]
    finally:
        app.close()


def test_a_100k_character_message_round_trips_when_the_limit_allows_it(tmp_path):
    """An operator may raise --max-input-chars: the text is stored and exported exactly, not cut."""
    from rlhf_demo.export import export_pairs

    app, url = scripted_app(tmp_path, max_input_chars=200_000)
    try:
        big = "".join(f"word{i} " for i in range(20_000))[:100_000]
        assert len(big) == 100_000
        c = client(url)
        c.predict(big, api_name="/send")
        c.predict([], "", api_name="/vote_left")
        (vote,) = app.store.votes()
        assert vote["left_messages"][0]["content"] == big.strip()
        assert app.store.turns(vote["conversation_id"])[0]["user_message"] == big.strip()
        res = export_pairs(app.store, "trl", tmp_path / "pairs.jsonl")
        row = json.loads((tmp_path / "pairs.jsonl").read_text())
        assert res.written == 1 and row["prompt"][0]["content"] == big.strip()
    finally:
        app.close()


def test_a_100k_character_prompt_is_cut_to_the_newest_tokens_and_answered(tiny_settings):
    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.generation import PolicyServer, build_prompt_ids

    model, tok = load_base_model(tiny_settings)
    server = PolicyServer(model, tok, Registry(tiny_settings.versions_dir, package_dir=None), max_prompt_tokens=256)
    try:
        big = "lorem ipsum dolor sit amet " * 3704
        assert len(big) >= 100_000
        ids = build_prompt_ids(tok, [{"role": "user", "content": big}], 256)
        assert len(ids) == 256 and tok.decode(ids).endswith("<|im_start|>assistant\n")
        [s] = server.submit([Request([{"role": "user", "content": big}], SFT, GREEDY)])
        s.result(timeout=120)
        assert s.done and s.error is None and len(s.token_ids) <= 6
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# NUL bytes, invalid UTF-8 and malformed rows in files (every error names file:line)
# ---------------------------------------------------------------------------------------------
GOOD_PAIR = {"prompt": [{"role": "user", "content": "How do I bake bread?"}],
             "chosen": [{"role": "assistant", "content": "Knead, rise, bake."}],
             "rejected": [{"role": "assistant", "content": "No."}]}
GOOD = json.dumps(GOOD_PAIR).encode()
BAD_PAIR_LINES = [
    ("raw NUL byte", b'{"prompt": "a\x00b", "chosen": "x", "rejected": "y"}', "NUL byte at column"),
    ("escaped NUL", json.dumps({"prompt": "a\u0000b", "chosen": "x", "rejected": "y"}).encode(), "NUL character"),
    ("invalid UTF-8", b'{"prompt": "caf\xe9", "chosen": "x", "rejected": "y"}', "invalid UTF-8 at byte"),
    ("bad JSON", b'{"prompt": "q", "chosen": "x", "rejected": ', "bad JSON"),
    ("not an object", b'["q", "x", "y"]', "must be a JSON object"),
    ("missing field", json.dumps({"prompt": "q", "chosen": "x"}).encode(), "missing field 'rejected'"),
    ("empty answer", json.dumps({"prompt": "q", "chosen": "  ", "rejected": "y"}).encode(), "is empty"),
    ("wrong role", json.dumps({**GOOD_PAIR, "prompt": [{"role": "wizard", "content": "q"}]}).encode(), "role"),
    ("bad margin", json.dumps({**GOOD_PAIR, "margin": "lots"}).encode(), "'margin' must be a number"),
    ("not HH text", json.dumps({"chosen": "hello", "rejected": "bye"}).encode(), "line"),
]


@pytest.mark.parametrize("what,line,why", BAD_PAIR_LINES, ids=[c[0] for c in BAD_PAIR_LINES])
def test_bad_training_rows_name_file_and_line(tmp_path, what, line, why):
    from training.data import DataError, load_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(GOOD + b"\n\n" + GOOD + b"\n" + line + b"\n" + GOOD + b"\n")
    with pytest.raises(DataError) as err:
        load_pairs([str(path)])
    msg = str(err.value)
    assert f"{path}:4" in msg, msg  # the blank line counts: line numbers are the editor's
    if why != "line":
        assert why in msg, msg
    # --skip-invalid keeps the good rows
    assert len(load_pairs([str(path)], skip_invalid=True)) == 3


@pytest.mark.parametrize("suffix,content,why", [
    (".txt", b"How do tides work?\nwhat \x00 now\n", "NUL byte"),
    (".txt", b"How do tides work?\ncaf\xe9\n", "invalid UTF-8"),
    (".jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "invalid UTF-8"),
    (".jsonl", b'{"prompt": "ok"}\n{"prompt": "a\x00"}\n', "NUL byte"),
    (".jsonl", b'{"prompt": "ok"}\n{"text": "no prompt"}\n', "missing field 'prompt'"),
], ids=["txt-nul", "txt-utf8", "jsonl-utf8", "jsonl-nul", "jsonl-missing"])
def test_bad_ppo_prompt_files_name_file_and_line(tmp_path, suffix, content, why):
    from training.data import DataError, load_prompts

    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}:2: .*{why}"):
        load_prompts([str(path)], eval_files=[])


@pytest.mark.parametrize("suffix,content,why", [
    (".txt", b"first\nsecond \x00\n", "contains a NUL byte"),
    (".txt", b"first\n\xff\xfe\n", "not valid UTF-8"),
    (".jsonl", b'{"prompt": "first"}\n{"prompt": \n', "invalid JSON"),
    (".jsonl", b'{"prompt": "first"}\n{"prompt": ""}\n', "needs a non-empty 'prompt'"),
], ids=["nul", "utf8", "json", "empty"])
def test_generate_cli_refuses_bad_prompt_files_with_file_and_line(tmp_path, capsys, suffix, content, why):
    from rlhf_demo import generate

    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(content)
    with pytest.raises(generate.PromptFileError, match=f"{path}:2: {why}"):
        generate.read_prompts(path)
    # the CLI says so and exits 2, before it loads any model
    code = generate.main(["--prompts", str(path), "--out", str(tmp_path / "out.jsonl"), "--data-dir", str(tmp_path),
                          "--base-model", str(tmp_path / "no-model-needed")])
    assert code == 2 and f"error: {path}:2: {why}" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_eval_suites_and_users_file_with_invalid_utf8_are_refused(tmp_path):
    from eval.suites import SuiteError, load_suite
    from arena_app.auth import AuthError, UserDB, add_user

    for name, content in (("s.txt", b"fine\n\xff\n"), ("s.jsonl", b'{"prompt": "\xff", "category": "safe"}\n'),
                          ("s.csv", b"id,prompt,label\n1,caf\xe9,safe\n")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(SuiteError, match=str(path)):
            load_suite(str(path))
    users = tmp_path / "users.json"
    add_user(users, "alice", "alice-password")
    db = UserDB(users)
    users.write_bytes(users.read_bytes().replace(b"alice", b"al\xffce", 1))
    with pytest.raises(AuthError, match="unreadable users file"):
        UserDB(users)
    assert db("alice", "alice-password")  # a running app keeps its last good users file


# ---------------------------------------------------------------------------------------------
# adapters with wrong shapes or missing files
# ---------------------------------------------------------------------------------------------
def wrong_shape_adapter(settings: Settings, out: Path, seed: int) -> Path:
    """A well-formed PEFT directory whose LoRA matrices do not fit the base (e.g. another model's)."""
    from safetensors.torch import load_file, save_file

    write_random_adapter(settings, out, seed)
    state = load_file(str(out / "adapter_model.safetensors"))
    key = next(k for k in state if "lora_A" in k)
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 3)
    save_file(state, str(out / "adapter_model.safetensors"))
    return out


@pytest.fixture()
def broken_world(tiny_settings, tmp_path):
    """rlhf-v0 (good) and rlhf-v1 (wrong shapes, the NEWEST) in the registry."""
    registry = Registry(tiny_settings.versions_dir, package_dir=None)
    registry.publish(write_random_adapter(tiny_settings, tmp_path / "good", 1), {"kind": "policy"}, name="rlhf-v0")
    registry.publish(wrong_shape_adapter(tiny_settings, tmp_path / "bad", 2), {"kind": "policy"}, name="rlhf-v1")
    return tiny_settings, registry


def test_adapter_with_wrong_shapes_is_refused_and_every_other_policy_is_unchanged(broken_world):
    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.generation import PolicyServer

    settings, registry = broken_world
    msgs = [{"role": "user", "content": "hi"}]
    server = PolicyServer(*load_base_model(settings), registry)
    try:
        sft_before = server.generate([Request(msgs, SFT, GREEDY)])
        assert server.policies() == ["sft", "rlhf-v0", "rlhf-v1"]
        # the FIRST adapter the server loads is the broken one: the worst case (it would be injected into the bare base)
        with pytest.raises(GenerationError, match="(?s)cannot load adapter 'rlhf-v1'.*size mismatch"):
            server.ensure_policy("rlhf-v1")
        assert server.generate([Request(msgs, SFT, GREEDY)]) == sft_before, "SFT must not answer through it"
        assert server.policies() == ["sft", "rlhf-v0"] and "rlhf-v1" not in server.loaded
        t = time.monotonic()
        with pytest.raises(GenerationError, match="cannot load adapter 'rlhf-v1'"):  # remembered, not retried
            server.submit([Request(msgs, "rlhf-v1", GREEDY)])
        assert time.monotonic() - t < 1.0
        both = server.generate([Request(msgs, SFT, GREEDY), Request(msgs, "rlhf-v0", GREEDY)])
        assert both[0] == sft_before[0] and "rlhf-v0" in server.loaded
    finally:
        server.close()


def test_arena_keeps_serving_when_the_newest_adapter_is_broken(broken_world):
    from gradio_client.exceptions import AppError

    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.generation import PolicyServer
    from rlhf_demo.store import Store
    from arena_app.ui import build_app
    from test_app import free_port

    settings, registry = broken_world
    settings.max_new_tokens, settings.votes_per_hour = 4, 1000
    server = PolicyServer(*load_base_model(settings), registry)
    app = build_app(settings, server=server, store=Store.from_settings(settings), registry=registry, seed=0,
                    bootstrap_rounds=10)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        c = client(f"http://127.0.0.1:{port}/")
        c.predict("first user after the broken version appeared", api_name="/send")  # no error: paired again
        c.predict([], "", api_name="/vote_left")
        vote = app.store.votes()[-1]
        assert {vote["left_policy"], vote["right_policy"]} == {"sft", "rlhf-v0"}
        assert app.newest() == "rlhf-v0"
        c.predict(api_name="/new_round")
        with pytest.raises(AppError, match="rlhf-v1"):  # named mode: refused with the version's name
            c.predict("hi", "named", "rlhf-v1", "sft", api_name="/send")
        out = c.predict("hi", "named", "rlhf-v0", "sft", api_name="/send")
        assert out[1] and out[2]
    finally:
        app.close()
        server.close()


def test_adapter_with_missing_files_is_refused_and_skipped(tiny_settings, tmp_path):
    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.generation import PolicyServer

    registry = Registry(tiny_settings.versions_dir, package_dir=None)
    src = write_random_adapter(tiny_settings, tmp_path / "a", 1)
    (src / "adapter_model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(RegistryError, match="has no adapter_model.safetensors"):
        registry.publish(src, {"kind": "policy"})
    (tmp_path / "elsewhere.safetensors").rename(src / "adapter_model.safetensors")
    registry.publish(src, {"kind": "policy"}, name="rlhf-v0")
    v1 = registry.publish(src, {"kind": "policy"}, name="rlhf-v1")
    (v1.path / "adapter_model.safetensors").unlink()  # e.g. a half-copied or cleaned-up directory
    (v1.path / "adapter_model.bin").write_bytes(b"a pickle is not accepted in its place")
    server = PolicyServer(*load_base_model(tiny_settings), registry)
    try:
        assert server.policies() == ["sft", "rlhf-v0"]
        assert "missing adapter_model.safetensors" in registry.problems["rlhf-v1"]
        with pytest.raises(GenerationError, match="'rlhf-v1' is broken and was skipped: .*missing"):
            server.ensure_policy("rlhf-v1")
        server.ensure_policy("rlhf-v0")
        assert server.generate([Request([{"role": "user", "content": "hi"}], "rlhf-v0", GREEDY)])
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# ../ in version names: refused by every CLI that takes one
# ---------------------------------------------------------------------------------------------
EVIL_NAMES = ["../../etc/passwd", "rlhf-v0/../../x", "..", "/abs/path"]


def test_generate_and_eval_clis_refuse_path_names(tiny_settings, tmp_path, capsys):
    from eval.__main__ import main as eval_main
    from rlhf_demo import generate

    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    for bad in EVIL_NAMES:
        code = generate.main(["--policy", bad, "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                              "--data-dir", str(tmp_path), "--base-model", tiny_settings.base_model, "--device", "cpu"])
        assert code == 2 and "invalid version name" in capsys.readouterr().err, bad
        code = eval_main(["--policies", bad, "--data-dir", str(tmp_path), "--base-model", tiny_settings.base_model,
                          "--out", str(tmp_path / "eval-out"), "--no-progress", "--judge", "none"])
        assert code == 2 and "invalid version name" in capsys.readouterr().err, bad
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "eval-out").exists()


@pytest.mark.parametrize("flag", ["--name", "--reward-model", "--init-policy"])
def test_ppo_refuses_path_names_before_it_starts(tiny_settings, tmp_path, flag, capsys):
    from training import ppo

    code = ppo.main([flag, "../../x", "--data-dir", str(tmp_path), "--base-model", tiny_settings.base_model,
                     "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "invalid version name" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "refused before anything ran"


@pytest.mark.parametrize("flag", ["--name", "--reward-model"])
def test_reward_model_cli_refuses_path_names(tiny_settings, tmp_path, capsys, flag):
    from training import reward_model

    code = reward_model.main([flag, "../../x", "--data-dir", str(tmp_path), "--base-model", tiny_settings.base_model,
                              "--device", "cpu", "--data", "seed:8", "--max-steps", "1", "--batch-size", "2",
                              "--lora-r", "2", "--lora-target-modules", "q_proj", "--max-length", "64",
                              "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "invalid version name" in capsys.readouterr().err
    assert Registry(tmp_path / "versions", package_dir=None).names("reward") == []
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
