"""Generation from an OpenAI-compatible server (vLLM, `transformers serve`, …) instead of the in-process model.

:class:`OpenAIBackend` has the surface of :class:`rlhf_demo.generation.PolicyServer` that the arena
uses — ``submit([Request]) -> [Stream]``, ``generate``, ``policies()``, ``ensure_policy``, ``loaded``,
``registry``, ``close`` — and streams each answer from ``POST /v1/chat/completions`` with
``"stream": true`` and ``model=<policy name>`` (or the model id a ``model_map`` gives for it). Only
the standard library (urllib) is used.

A vLLM server holding the SFT base and the LoRA versions serves every policy of the arena:

    vllm serve <base model dir> --served-model-name sft --enable-lora \\
        --lora-modules rlhf-v1=<data dir>/versions/rlhf-v1 rlhf-v2=<data dir>/versions/rlhf-v2
    python app.py --backend openai --openai-url http://127.0.0.1:8000/v1

A server that cannot hold adapters (``transformers serve``) serves a version merged into a full
model directory: ``python -m rlhf_demo.openai_backend merge --policy rlhf-v1 --out merged/rlhf-v1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from .generation import GenerationError, Group, Request, Stream
from .registry import SFT, Registry

log = logging.getLogger(__name__)
FINISH = {"stop": "eos", "length": "length", "eos": "eos"}


class OpenAIBackend:
    """Streams answers of the arena's policies from an OpenAI-compatible ``/v1`` endpoint."""

    def __init__(self, base_url: str, registry: Registry | None = None, model_map: dict[str, str] | None = None,
                 api_key: str | None = None, timeout_s: float = 600.0, models_ttl_s: float = 5.0):
        base_url = base_url.rstrip("/")
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.registry = registry
        self.model_map = dict(model_map or {})  # arena policy name -> the server's model id
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.models_ttl_s = models_ttl_s
        self.loaded: dict[str, str] = {}  # policy -> content hash (from the registry when it knows the version)
        self.broken: dict = {}
        self.tokenizer = None
        self._models: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.send_repetition_penalty = True  # vLLM's extension; turned off when a server refuses the field

    # -- http ---------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None, timeout: float | None = None):
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
        return urllib.request.urlopen(req, timeout=timeout or self.timeout_s)  # noqa: S310 - a configured URL

    def models(self) -> list[str]:
        """The server's model ids (``GET /v1/models``), cached for a few seconds."""
        with self._lock:
            if self._models and time.monotonic() - self._models[0] < self.models_ttl_s:
                return self._models[1]
        try:
            with self._request("/models", timeout=10) as resp:
                ids = [m["id"] for m in json.load(resp).get("data", [])]
        except (OSError, ValueError, KeyError) as exc:
            raise GenerationError(f"the generation server at {self.base_url} is unreachable: {exc}") from exc
        with self._lock:
            self._models = (time.monotonic(), ids)
        return ids

    # -- the PolicyServer surface --------------------------------------------------------------
    def model_for(self, policy: str) -> str:
        return self.model_map.get(policy, policy)

    def policies(self) -> list[str]:
        """Arena policies (SFT first): the ``model_map``'s when one is given (servers that load models on
        demand list none), else the server's models (``GET /v1/models``), else the registry's names."""
        if self.model_map:
            names = list(self.model_map)
        else:
            try:
                names = self.models()
            except GenerationError as exc:
                log.warning("%s", exc)
                names = []
            if not names and self.registry is not None:
                names = self.registry.names("policy")
        names = list(dict.fromkeys(names))
        return sorted(names, key=lambda n: (n != SFT,))

    def ensure_policy(self, name: str) -> None:
        if name not in self.policies():
            raise GenerationError(f"unknown policy {name!r}: the server at {self.base_url} does not serve it")
        if name not in self.loaded:
            content = "remote"
            if self.registry is not None:
                try:
                    content = self.registry.get(name, kind="policy").content_hash
                except Exception:  # noqa: BLE001 - a version only the server knows
                    pass
            self.loaded[name] = content

    def submit(self, requests: Sequence[Request]) -> list[Stream]:
        if self._closed:
            raise GenerationError("the backend is closed")
        group = Group()
        streams = [Stream(r, group) for r in requests]
        group.streams = streams
        for s in streams:
            if not any(str(m.get("content", "")).strip() for m in s.request.messages if m.get("role") == "user"):
                raise GenerationError("empty prompt: write a message first")
        for s in streams:
            threading.Thread(target=self._run, args=(s,), daemon=True, name="openai-stream").start()
        return streams

    def generate(self, requests: Sequence[Request]) -> list[str]:
        return [s.result(self.timeout_s) for s in self.submit(requests)]

    def close(self) -> None:
        self._closed = True

    # -- one streamed answer ---------------------------------------------------------------------
    def body(self, request: Request) -> dict:
        p = request.params
        body = {"model": self.model_for(request.policy), "messages": [
                    {"role": m["role"], "content": m["content"]} for m in request.messages],
                "stream": True, "max_tokens": p.max_new_tokens}
        if p.greedy or p.temperature <= 0:
            body["temperature"] = 0.0
        else:
            body.update(temperature=p.temperature, top_p=p.top_p)
        if p.seed is not None:
            body["seed"] = int(p.seed)
        if self.send_repetition_penalty and p.repetition_penalty and p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty  # vLLM's extension; others ignore it
        return body

    def _run(self, stream: Stream) -> None:
        group = stream.group
        try:
            try:
                self._stream_into(stream)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", errors="replace")[:300]
                if exc.code in (400, 422) and "repetition_penalty" in detail and not stream.text:
                    log.info("%s refuses repetition_penalty; sending requests without it", self.base_url)
                    self.send_repetition_penalty = False  # e.g. `transformers serve` allows no extra fields
                    self._stream_into(stream)
                else:
                    raise GenerationError(f"generation server answered {exc.code}: {detail}") from None
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:300]
            stream.error = GenerationError(f"generation server answered {exc.code}: {detail}")
        except GenerationError as exc:
            stream.error = exc
        except (OSError, ValueError) as exc:
            stream.error = GenerationError(f"generation server at {self.base_url} failed: {exc}")
        finally:
            stream.finish_reason = stream.finish_reason or ("error" if stream.error else "eos")
            stream.total_s = time.monotonic() - stream.submitted
            stream.done = True
            group.notify()

    def _stream_into(self, stream: Stream) -> None:
        """POST the request and append the streamed deltas (Server-Sent Events) to ``stream``."""
        with self._request("/chat/completions", self.body(stream.request)) as resp:
            for raw in resp:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if chunk.get("error"):
                    raise GenerationError(f"generation server: {chunk['error']}")
                for choice in chunk.get("choices", []):
                    delta = (choice.get("delta") or {}).get("content") or ""
                    if delta:
                        if stream.first_token_s is None:
                            stream.first_token_s = time.monotonic() - stream.submitted
                        stream.text += delta
                        stream.group.notify()
                    if choice.get("finish_reason"):
                        stream.finish_reason = FINISH.get(choice["finish_reason"], choice["finish_reason"])


# ------------------------------------------------------------------------------------------------
# serving a version from a server without LoRA support: merge it into a full model directory
# ------------------------------------------------------------------------------------------------
def merge_policy(settings, policy: str, out_dir: Path, registry: Registry | None = None) -> Path:
    """The base model with ``policy``'s LoRA adapter merged in, saved (safetensors) with its tokenizer."""
    from peft import PeftModel

    from .base_model import load_base_model

    registry = registry or Registry(settings.versions_dir)
    model, tokenizer = load_base_model(settings)
    if policy != SFT:
        model = PeftModel.from_pretrained(model, str(registry.get(policy, kind="policy").path)).merge_and_unload()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "rlhf_arena_policy.json").write_text(json.dumps({"policy": policy, "base_model": settings.base_model}))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    from .config import add_settings_args, settings_from_args

    p = argparse.ArgumentParser(prog="python -m rlhf_demo.openai_backend", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge a policy's adapter into a full model directory (for servers without LoRA)")
    m.add_argument("--policy", required=True, help="version to merge (e.g. rlhf-v1; 'sft' copies the base)")
    m.add_argument("--out", required=True, type=Path, help="output model directory")
    add_settings_args(m)
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    out = merge_policy(settings, args.policy, args.out)
    print(f"merged {args.policy} into {out}; serve it with e.g. `transformers serve {out}`")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
