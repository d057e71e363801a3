"""The OpenAI-compatible generation backend: the protocol against a small stdlib server (fast), and a
real `transformers serve` process serving a version merged into a full model directory (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import write_random_adapter
from rlhf_demo.generation import GenerationError, GenerationParams, Request
from rlhf_demo.openai_backend import OpenAIBackend
from rlhf_demo.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


class FakeServer(BaseHTTPRequestHandler):
    """Speaks the streamed /v1/chat/completions protocol; records the request bodies."""
    bodies: list = []

    def log_message(self, *a):
        pass

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "base-model"}, {"id": "rlhf-v1"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if body["model"] == "strict" and "repetition_penalty" in body:  # like `transformers serve`
            return self._send(422, {"detail": "Unexpected fields in the request: {'repetition_penalty'}"})
        if body["model"] not in ("base-model", "rlhf-v1", "strict"):
            return self._send(404, {"error": {"message": f"model {body['model']} not found"}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = ["Hello", " from", f" {body['model']}"]
        for i, w in enumerate(words):
            chunk = {"choices": [{"index": 0, "delta": {"content": w},
                                  "finish_reason": "stop" if i == len(words) - 1 else None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.01)
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture()
def fake_url():
    FakeServer.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_streams_both_sides_with_the_policy_as_model(fake_url):
    assert OpenAIBackend(fake_url).policies() == ["base-model", "rlhf-v1"]  # the server's models
    b = OpenAIBackend(fake_url, model_map={"rlhf-v1": "rlhf-v1", "sft": "base-model"})
    assert b.policies() == ["sft", "rlhf-v1"]
    b.ensure_policy("rlhf-v1")
    with pytest.raises(GenerationError, match="does not serve"):
        b.ensure_policy("rlhf-v9")
    msgs = [{"role": "user", "content": "hi"}]
    streams = b.submit([Request(msgs, "sft", GenerationParams(max_new_tokens=7, greedy=True, seed=3)),
                        Request(msgs, "rlhf-v1", GenerationParams(temperature=0.5, top_p=0.8))])
    seen = [list(streams[0]), streams[1].result(10)]
    assert "".join(seen[0]) == "Hello from base-model" and len(seen[0]) >= 2  # streamed in pieces
    assert seen[1] == "Hello from rlhf-v1"
    assert [s.finish_reason for s in streams] == ["eos", "eos"] and all(s.done for s in streams)
    assert streams[0].first_token_s is not None and streams[0].total_s >= streams[0].first_token_s
    bodies = sorted(FakeServer.bodies, key=lambda x: x["model"])
    assert bodies[0] == {"model": "base-model", "messages": msgs, "stream": True, "max_tokens": 7,
                         "temperature": 0.0, "seed": 3, "repetition_penalty": 1.1}
    assert bodies[1]["temperature"] == 0.5 and bodies[1]["top_p"] == 0.8
    assert b.generate([Request(msgs, "rlhf-v1")]) == ["Hello from rlhf-v1"]
    # a server that refuses the repetition_penalty extension: retried without it, then never sent again
    strict = OpenAIBackend(fake_url, model_map={"sft": "strict"})
    assert strict.generate([Request(msgs, "sft")]) == ["Hello from strict"]
    assert not strict.send_repetition_penalty and "repetition_penalty" not in FakeServer.bodies[-1]


def test_errors_reach_the_stream_and_an_unreachable_server_falls_back_to_the_registry(fake_url, tmp_path):
    b = OpenAIBackend(fake_url)
    s = b.submit([Request([{"role": "user", "content": "hi"}], "nope")])[0]
    with pytest.raises(GenerationError, match="404"):
        s.result(10)
    with pytest.raises(GenerationError, match="empty prompt"):
        b.submit([Request([{"role": "user", "content": " "}], "sft")])
    down = OpenAIBackend("http://127.0.0.1:9/v1", registry=Registry(tmp_path / "versions", package_dir=None))
    assert down.policies() == ["sft"]
    s = down.submit([Request([{"role": "user", "content": "hi"}], "sft")])[0]
    with pytest.raises(GenerationError, match="failed"):
        s.result(10)


def test_app_flags_for_the_openai_backend(capsys):
    from app import main

    with pytest.raises(SystemExit):
        main(["--backend", "openai"])
    assert "--backend openai needs --openai-url" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--backend", "openai", "--openai-url", "http://x/v1", "--openai-model", "nonsense"])
    assert "use POLICY=MODEL" in capsys.readouterr().err


@pytest.mark.slow
def test_merged_version_served_by_transformers_serve_streams_through_the_backend(tiny_settings, tmp_path):
    """A policy adapter merged into a full model directory (peft merge_and_unload, safetensors), served by
    `transformers serve` as a real subprocess on 127.0.0.1, streamed through OpenAIBackend; greedy
    answers equal the in-process PolicyServer's (base + LoRA adapter)."""
    from transformers.utils.import_utils import is_serve_available

    from rlhf_demo.generation import PolicyServer
    from rlhf_demo.openai_backend import merge_policy
    from test_app import free_port

    exe = Path(sys.executable).parent / "transformers"
    if not exe.is_file() or not is_serve_available():
        pytest.skip("`transformers serve` needs transformers[serving] (fastapi, uvicorn, openai)")
    registry = Registry(tiny_settings.versions_dir, package_dir=None)
    src = write_random_adapter(tiny_settings, tmp_path / "adapter", seed=7, scale=3.0)
    registry.publish(src, {"kind": "policy", "parent": "sft"}, name="rlhf-v0")
    merged = merge_policy(tiny_settings, "rlhf-v0", tmp_path / "merged" / "rlhf-v0", registry)
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # no model forced: the server loads each model directory on demand (the base for sft, the merged version)
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--dtype", "float32"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                pytest.fail(f"transformers serve did not start (rc={proc.poll()}):\n{out[-3000:]}")
            time.sleep(1)
        backend = OpenAIBackend(f"http://127.0.0.1:{port}", registry=registry,
                                model_map={"sft": tiny_settings.base_model, "rlhf-v0": str(merged)})
        assert backend.policies() == ["sft", "rlhf-v0"]
        backend.ensure_policy("rlhf-v0")
        assert backend.loaded["rlhf-v0"] == registry.get("rlhf-v0").content_hash
        params = GenerationParams(max_new_tokens=8, greedy=True, repetition_penalty=1.0)
        prompts = [[{"role": "user", "content": "Tell me about cats."}], [{"role": "user", "content": "2+2?"}]]
        streams = backend.submit([Request(m, "rlhf-v0", params) for m in prompts])
        remote = ["".join(streams[0]), streams[1].result(60)]
        assert all(remote) and streams[0].finish_reason in ("eos", "length")
        local = PolicyServer.from_settings(tiny_settings, registry)
        try:
            expected = local.generate([Request(m, "rlhf-v0", params) for m in prompts])
        finally:
            local.close()
        assert [r.strip() for r in remote] == [e.strip() for e in expected]

        # the arena itself, served through the backend (what `python app.py --backend openai` builds)
        from rlhf_demo.store import Store
        from arena_app.ui import build_app
        from test_app import chats, client, texts

        app = build_app(tiny_settings, server=backend, store=Store.from_settings(tiny_settings), registry=registry,
                        policies="sft,newest", seed=0, bootstrap_rounds=10)
        app_port = free_port()
        app.launch(server_name="127.0.0.1", server_port=app_port, prevent_thread_lock=True, quiet=True)
        try:
            c = client(f"http://127.0.0.1:{app_port}/")
            a, b, _, _ = chats(c.predict("Tell me about cats.", api_name="/send"))
            assert texts(a) and texts(b)
            c.predict([], "", api_name="/vote_tie")
            v = app.store.votes()[-1]
            assert {v["left_policy"], v["right_policy"]} == {"sft", "rlhf-v0"}
        finally:
            app.close()
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
