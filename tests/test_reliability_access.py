"""Access control and safe model loading.

* With ``--auth``: every Gradio HTTP route that runs an event (vote, export, training, …) or reveals
  the app refuses a request without a session (raw HTTP, no client library), and a forged cookie;
  a logged-in non-admin cannot export or start training even by calling the API directly; nobody can
  download the feedback database through Gradio's file route.
* Without ``--auth`` on a non-loopback host nobody is admin.
* Loading a model never runs code from the model directory (``auto_map`` is ignored:
  ``trust_remote_code`` is off everywhere), and only safetensors weights are loaded: a directory
  with only a pickle (``pytorch_model.bin``) is refused with a clear message, and a crafted pickle
  in a model, adapter or checkpoint directory never executes.

(Salted scrypt hashes and the users file are tested in test_auth.py; the login page in test_browser.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from test_reliability_input import scripted_app

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = ["send", "regenerate", "vote_left", "vote_right", "vote_tie", "vote_both_bad", "better_answer", "new_round",
           "leaderboard", "evaluation", "export_trl", "export_hh", "train_start", "train_cancel", "train_status",
           "review", "void_vote", "agreement"]
TRAINING = ("train_start", "train_cancel", "train_status")


@pytest.fixture()
def training_ui(monkeypatch, tmp_path):
    """The real Training tab (arena_app.training_tab), with the pipeline launch replaced by a recorder."""
    import arena_app.training_tab as training_tab  # the project's own module: an import error fails the test
    started: list = []

    def fake_start(self):
        started.append("started")
        return tmp_path / "no-run"

    monkeypatch.setattr(training_tab.TrainingTab, "start", fake_start)
    monkeypatch.setattr(training_tab.TrainingTab, "running", lambda self: False)
    return training_tab.TrainingTab.factory([]), started


@pytest.fixture()
def auth_app(tmp_path, training_ui):
    from arena_app.auth import UserDB, add_user

    users = tmp_path / "users.json"
    add_user(users, "admin", "admin-password")
    add_user(users, "bob", "bob-password")
    hook, started = training_ui
    app, url = scripted_app(tmp_path / "data", users=UserDB(users), admins=["admin"], local_admin=False,
                            training_ui=hook)
    yield app, url, started
    app.close()


def login(url: str, user: str, password: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
    r = c.post("login", data={"username": user, "password": password})
    assert r.status_code == 200, (r.status_code, r.text[:200])
    return c


def call(c: httpx.Client, api_name: str, data: list) -> tuple[str, str]:
    """Gradio's documented HTTP API: POST /gradio_api/call/NAME, then read the event stream."""
    r = c.post(f"gradio_api/call/{api_name}", json={"data": data})
    assert r.status_code == 200, (api_name, r.status_code, r.text[:200])
    event_id = r.json()["event_id"]
    text = c.get(f"gradio_api/call/{api_name}/{event_id}", timeout=60).text
    events = re.findall(r"^event: (\w+)", text, flags=re.M)
    return events[-1] if events else "", text


def test_without_a_session_no_route_runs_anything(auth_app):
    app, url, started = auth_app
    admin = login(url, "admin", "admin-password")
    config = admin.get("config").json()
    fn_indexes = [i for i, dep in enumerate(config["dependencies"]) if dep.get("api_name") in ACTIONS]
    assert len(fn_indexes) >= len(ACTIONS)  # every action is a real endpoint of this app

    db = app.settings.data_dir / "feedback.db"
    probes = [("GET", "config", None), ("GET", "gradio_api/info", None), ("GET", "gradio_api/openapi.json", None),
              ("GET", "gradio_api/queue/data?session_hash=x", None), ("POST", "gradio_api/upload", None),
              ("GET", f"gradio_api/file={db}", None), ("POST", "gradio_api/component_server", {}),
              ("GET", "gradio_api/deep_link?session_hash=x", None)]
    for name in ACTIONS:
        for route in ("call", "call/v2", "run", "api"):
            probes.append(("POST", f"gradio_api/{route}/{name}", {"data": [[], "sneaky"]}))
    for i in fn_indexes:
        probes.append(("POST", "gradio_api/queue/join", {"fn_index": i, "session_hash": "anon123", "data": [[], "x"],
                                                          "event_data": None, "trigger_id": None}))
    real = dict(admin.cookies)  # a logged-in session's cookie names, with forged values
    assert real, "login sets a session cookie"
    for cookies in ({}, {name: "forged" for name in real}, {name: value[:-4] + "abcd" for name, value in real.items()}):
        anon = httpx.Client(base_url=url, timeout=30, cookies=cookies)
        for method, path, body in probes:
            r = anon.request(method, path, json=body)
            assert r.status_code in (401, 403), (cookies, method, path, r.status_code, r.text[:200])
    assert app.store.votes() == [] and app.store.conversations() == [] and started == []


def test_only_admins_export_or_start_training_even_through_the_api(auth_app):
    app, url, started = auth_app
    bob = login(url, "bob", "bob-password")
    for action in ("export_trl", "export_hh", *TRAINING):
        event, text = call(bob, action, [])
        assert event == "error" and "Only admins" in text, (action, text[:300])
    assert started == []
    db = app.settings.data_dir / "feedback.db"
    assert bob.get(f"gradio_api/file={db}").status_code in (403, 404), "the database is not downloadable"

    admin = login(url, "admin", "admin-password")
    event, text = call(admin, "train_start", [])
    assert event == "complete" and started == ["started"], text[:300]
    event, text = call(admin, "export_trl", [])
    assert event == "complete" and "pairs" in text


FILTERS = ["", "", "", "", "", "", "all", False, ""]  # version, winner, reason, user, since, until, status, flagged,
# prompt category


def test_only_admins_browse_or_void_votes_over_raw_http(auth_app):
    from test_store import conv, vote

    app, url, _ = auth_app
    vid = app.store.record_vote(conv("r1", user="alice"), vote("r1", user="alice"))
    bob = login(url, "bob", "bob-password")
    for action, data in (("review", FILTERS), ("void_vote", [str(vid), "spam", *FILTERS]), ("agreement", [])):
        event, text = call(bob, action, data)
        assert event == "error" and "Only admins" in text, (action, text[:300])
        assert "hello from left" not in text  # nothing of alice's data leaks into the refusal
    assert app.store.voids() == []

    admin = login(url, "admin", "admin-password")
    event, text = call(admin, "review", FILTERS)
    assert event == "complete" and "hello from left" in text and "1 shown of 1 matching" in text, text[:300]
    event, text = call(admin, "void_vote", ["999", "spam", *FILTERS])
    assert event == "error" and "there is no vote with id 999" in text, text[:300]
    event, text = call(admin, "void_vote", [str(vid), "", *FILTERS])
    assert event == "error" and "needs a reason" in text, text[:300]
    event, text = call(admin, "review", [*FILTERS[:4], "last week", *FILTERS[5:]])
    assert event == "error" and "since must be a date" in text, text[:300]
    event, text = call(admin, "void_vote", [str(vid), "spam from a script", *FILTERS])
    assert event == "complete" and f"Vote {vid} voided" in text, text[:300]
    (void,) = app.store.voids()
    assert (void["vote_id"], void["user"], void["reason"]) == (vid, "admin", "spam from a script")
    assert app.store.votes() == [] and len(app.store.votes(include_voided=True)) == 1  # both records kept
    event, text = call(admin, "void_vote", [str(vid), "again", *FILTERS])
    assert event == "error" and "voided already" in text


def test_without_auth_on_a_network_host_nobody_is_admin(tmp_path, training_ui):
    import app as app_module
    from gradio_client.exceptions import AppError

    from test_reliability_input import client

    assert app_module.is_loopback("127.0.0.1") and app_module.is_loopback("::1")
    assert not app_module.is_loopback("0.0.0.0") and not app_module.is_loopback("192.168.1.5")
    hook, started = training_ui
    app, url = scripted_app(tmp_path, local_admin=False, training_ui=hook)
    try:
        c = client(url)
        for action in ("/export_trl", "/export_hh", "/train_start"):
            with pytest.raises(AppError, match="Only admins"):
                c.predict(api_name=action)
        assert started == []
    finally:
        app.close()


# ---------------------------------------------------------------------------------------------
# model loading: no remote code, safetensors only
# ---------------------------------------------------------------------------------------------
EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    pass
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


class Pwn:
    """Unpickling this runs a shell command (what a malicious pytorch_model.bin does)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_auto_map_in_a_model_dir_never_runs_its_code(tiny_model_dir, tmp_path):
    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.config import Settings

    model_dir = tmp_path / "model-with-remote-code"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (model_dir / "evil_code.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    for name, key, target in (("config.json", "AutoConfig", "evil_code.EvilConfig"),
                              ("tokenizer_config.json", "AutoTokenizer", ["evil_code.EvilTokenizer", None])):
        cfg = json.loads((model_dir / name).read_text())
        cfg["auto_map"] = {key: target}
        if name == "config.json":
            cfg["auto_map"]["AutoModelForCausalLM"] = "evil_code.EvilModel"
        (model_dir / name).write_text(json.dumps(cfg))
    model, tok = load_base_model(Settings(data_dir=tmp_path / "d", base_model=str(model_dir), device="cpu",
                                          dtype="float32"))
    assert type(model).__name__ == "LlamaForCausalLM"  # the library's own class, not the directory's
    assert not marker.exists(), "code from the model directory ran"
    assert tok("hi")["input_ids"]


def test_no_code_path_turns_on_remote_code_or_pickle_loading():
    """A static guard: nothing in the project enables trust_remote_code or an unsafe torch.load."""
    offenders = []
    for folder in ("rlhf_demo", "training", "eval", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for m in re.finditer(r"trust_remote_code\s*=\s*(\w+)", text):
                if m.group(1) != "False":
                    offenders.append(f"{path}: {m.group(0)}")
            for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in m.group(1):
                    offenders.append(f"{path}: {m.group(0)}")
            if "use_safetensors=False" in text or "pickle.load" in text:
                offenders.append(f"{path}: pickle loading")
    assert not offenders, offenders
    assert "trust_remote_code=False, use_safetensors=True" in (ROOT / "rlhf_demo" / "base_model.py").read_text()


def test_a_model_dir_with_only_a_pickle_is_refused_and_never_unpickled(tiny_model_dir, tmp_path):
    from rlhf_demo.base_model import BaseModelError, load_base_model
    from rlhf_demo.config import Settings

    model_dir = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "PICKLE_RAN"
    torch.save({"model.embed_tokens.weight": Pwn(marker)}, model_dir / "pytorch_model.bin")
    with pytest.raises(BaseModelError) as err:
        load_base_model(Settings(data_dir=tmp_path / "d", base_model=str(model_dir), device="cpu", dtype="float32"))
    msg = str(err.value)
    assert "no safetensors weights (it has pytorch_model.bin)" in msg and "Only safetensors weights are loaded" in msg
    assert "save_pretrained" in msg  # says how to convert
    assert not marker.exists()


def test_a_pickle_beside_an_adapter_is_never_loaded(tiny_settings, tmp_path):
    """peft reads adapter_model.safetensors; a crafted adapter_model.bin next to it stays untouched."""
    from conftest import write_random_adapter
    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.generation import GenerationParams, PolicyServer, Request
    from rlhf_demo.registry import Registry

    src = write_random_adapter(tiny_settings, tmp_path / "adapter", 1)
    marker = tmp_path / "ADAPTER_PICKLE_RAN"
    torch.save({"x": Pwn(marker)}, src / "adapter_model.bin")
    registry = Registry(tiny_settings.versions_dir, package_dir=None)
    registry.publish(src, {"kind": "policy"}, name="rlhf-v0")
    server = PolicyServer(*load_base_model(tiny_settings), registry)
    try:
        server.generate([Request([{"role": "user", "content": "hi"}], "rlhf-v0",
                                 GenerationParams(max_new_tokens=3, greedy=True))])
        assert "rlhf-v0" in server.loaded
    finally:
        server.close()
    assert not marker.exists()
