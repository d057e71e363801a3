"""One base model, many LoRA adapters: batched, streamed generation for several policies.

:func:`decode_batch` is the decode loop (left-padded prompts, one KV cache, per-row sampling
parameters and seeds, peft's mixed-adapter batches via ``adapter_names``). It drops rows that have
finished from the batch and the cache, and it reports every step through a callback, which is how
text streams. :class:`PolicyServer` holds ONE base model plus the registry's adapters and runs a
worker thread: requests that arrive together (e.g. the two sides of an arena comparison) share a
batch. It is safe for concurrent callers.
"""

from __future__ import annotations

import atexit
import logging
import queue
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .config import Settings
from .packed import _PACKED, PackedLinear, _pack_weight, serving_dtype_cpu, use_packed_linears  # noqa: F401
from .padding import left_pad
from .registry import SFT, Registry, RegistryError

log = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


class GenerationError(ValueError):
    """A request that cannot be served (empty prompt, unknown policy, …)."""


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    greedy: bool = False
    seed: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodeResult:
    token_ids: list[int]
    finish_reason: str  # "eos" or "length"


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------
def build_prompt_ids(tokenizer, messages: list[dict], max_prompt_tokens: int = 2048) -> list[int]:
    """Chat-template a conversation; keep the newest ``max_prompt_tokens`` tokens."""
    if not messages or not any(str(m.get("content", "")).strip() for m in messages if m.get("role") == "user"):
        raise GenerationError("empty prompt: write a message first")
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = list(enc["input_ids"])
    return ids[-max_prompt_tokens:]


def encode_conversation(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-template a whole conversation (prompt and answer) into token ids."""
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as in transformers): divide positive, multiply negative logits of seen tokens."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=True)
    probs = sorted_logits.softmax(-1)
    cum = probs.cumsum(-1)
    remove = (cum - probs) > top_p  # keep the smallest set whose mass reaches top_p (at least one)
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


def next_token(logits: torch.Tensor, seen: torch.Tensor, params: GenerationParams,
               generator: torch.Generator | None) -> int:
    """Pick one token from one row of logits (1-D)."""
    logits = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.greedy or params.temperature <= 0:
        return int(logits.argmax())
    logits = top_p_filter(logits / params.temperature, params.top_p)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def end_of_turn_id(tokenizer) -> int | None:
    """The chat template's end-of-turn token, looked up once per tokenizer (get_vocab() builds a
    49k-entry dict: ~17 ms, at every batch otherwise)."""
    if not hasattr(tokenizer, "_rlhf_arena_im_end"):
        vocab = tokenizer.get_vocab()
        tokenizer._rlhf_arena_im_end = vocab.get("<|im_end|>")
    return tokenizer._rlhf_arena_im_end


def stop_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    ids.add(end_of_turn_id(tokenizer))
    return {i for i in ids if i is not None}


# ---------------------------------------------------------------------------------------------
# the decode loop
# ---------------------------------------------------------------------------------------------
def _appending_cache(room: int):
    """A transformers ``DynamicCache`` whose layers append each step's keys/values into spare room
    (``room`` positions past the prompt, grown in chunks if needed) instead of concatenating the
    whole cache into a new tensor at every token. Attention reads a view of the filled part: the same
    values in the same layout, so the same outputs."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class AppendingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            filled = self.keys.shape[-2] if self.keys.numel() else 0
            need = filled + key_states.shape[-2]
            buf = getattr(self, "_room", None)
            if (buf is None or buf[0].shape[:2] != key_states.shape[:2] or buf[0].shape[-2] < need
                    or (filled and buf[0].data_ptr() != self.keys.data_ptr())):  # e.g. after batch_select_indices
                size = (*key_states.shape[:2], need + max(room, 16), key_states.shape[-1])
                buf = (key_states.new_empty(size), value_states.new_empty(size))
                if filled:
                    buf[0][:, :, :filled].copy_(self.keys)
                    buf[1][:, :, :filled].copy_(self.values)
                self._room = buf
            buf[0][:, :, filled:need].copy_(key_states)
            buf[1][:, :, filled:need].copy_(value_states)
            self.keys, self.values = buf[0][:, :, :need], buf[1][:, :, :need]
            return self.keys, self.values

    cache = DynamicCache()
    cache.layer_class_to_replicate = AppendingLayer
    return cache


@torch.inference_mode()
def decode_batch(model, tokenizer, prompts: Sequence[Sequence[int]], params: Sequence[GenerationParams],
                 adapter_names: Sequence[str] | None = None,
                 on_step: Callable[[int, list[int], str | None], None] | None = None) -> list[DecodeResult]:
    """Decode every prompt to EOS or its own ``max_new_tokens``, in one batch.

    ``adapter_names`` (one per row; ``"__base__"`` for the SFT base) makes peft route each row
    through its own LoRA adapter. ``on_step(row, tokens_so_far, finished)`` is called whenever a
    row gains a token. Finished rows leave the batch and the KV cache.
    """
    n = len(prompts)
    device = next(model.parameters()).device
    eos = stop_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    gens = []
    for p in params:
        g = torch.Generator(device="cpu")
        g.manual_seed(p.seed if p.seed is not None else random.randrange(2**31))
        gens.append(g)
    ids, mask = left_pad(prompts, pad)
    ids, mask = ids.to(device), mask.to(device)
    seen = [torch.tensor(list(p), dtype=torch.long) for p in prompts]
    out: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    alive = list(range(n))  # original row index of each batch row
    extra = {}
    if adapter_names is not None:
        extra["adapter_names"] = list(adapter_names)
    max_steps = max(p.max_new_tokens for p in params)
    cache = _appending_cache(room=max_steps)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    step_input, step_pos = ids, position
    for _ in range(max_steps):
        logits = model(input_ids=step_input, attention_mask=mask, position_ids=step_pos,
                       cache=cache, use_cache=True, logits_to_keep=1, **extra).logits[:, -1, :]
        logits = logits.float().cpu()
        keep, new_tokens = [], []
        for b, row in enumerate(alive):
            tok = next_token(logits[b], seen[row], params[row], gens[row])
            out[row].append(tok)
            seen[row] = torch.cat([seen[row], torch.tensor([tok])])
            done = tok in eos or len(out[row]) >= params[row].max_new_tokens
            if tok in eos:
                out[row].pop()
                finish[row] = "eos"
            if on_step:
                on_step(row, out[row], finish[row] if done else None)
            if not done:
                keep.append(b)
                new_tokens.append(tok)
        if not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask = mask.index_select(0, index)
            step_pos = step_pos.index_select(0, index)
            alive = [alive[b] for b in keep]
            if "adapter_names" in extra:
                extra["adapter_names"] = [extra["adapter_names"][b] for b in keep]
        step_input = torch.tensor(new_tokens, device=device).unsqueeze(-1)
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
    return [DecodeResult(out[i], finish[i]) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# streams and the server
# ---------------------------------------------------------------------------------------------
@dataclass
class Request:
    messages: list[dict]
    policy: str = SFT
    params: GenerationParams = field(default_factory=GenerationParams)


class Stream:
    """The text of one request as it decodes. Iterate for text deltas, or read ``.text``."""

    def __init__(self, request: Request, group: "Group"):
        self.request = request
        self.group = group
        self.text = ""
        self.token_ids: list[int] = []
        self.done = False
        self.error: Exception | None = None
        self.finish_reason: str | None = None
        self.submitted = time.monotonic()
        self.first_token_s: float | None = None
        self.total_s: float | None = None

    def __iter__(self) -> Iterator[str]:
        sent = 0
        for _ in self.group.updates():
            if len(self.text) > sent:
                yield self.text[sent:]
                sent = len(self.text)
        if self.error:
            raise self.error

    def result(self, timeout: float | None = None) -> str:
        self.group.wait(timeout)
        if self.error:
            raise self.error
        return self.text


class Group:
    """Requests submitted together; the worker notifies the group after every decode step."""

    def __init__(self):
        self.cond = threading.Condition()
        self.version = 0
        self.streams: list[Stream] = []

    def notify(self) -> None:
        with self.cond:
            self.version += 1
            self.cond.notify_all()

    @property
    def done(self) -> bool:
        return all(s.done for s in self.streams)

    def updates(self, timeout: float = 600.0) -> Iterator[None]:
        """Yield after each change until every stream of the group is done."""
        seen = -1
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                while self.version == seen and not self.done:
                    if not self.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise TimeoutError("generation timed out")
                seen = self.version
                finished = self.done
            yield
            if finished:
                return

    def wait(self, timeout: float | None = None) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.done, timeout=timeout):
                raise TimeoutError("generation timed out")

    def texts(self) -> list[str]:
        return [s.text for s in self.streams]


class PolicyServer:
    """Holds one base model and every policy adapter of the registry; batches concurrent requests."""

    def __init__(self, model, tokenizer, registry: Registry | None = None, max_batch: int = 16,
                 batch_window_s: float = 0.01, max_prompt_tokens: int = 2048):
        self.base = model
        self.model = model
        self.tokenizer = tokenizer
        self.registry = registry
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.max_prompt_tokens = max_prompt_tokens
        self.loaded: dict[str, str] = {}  # policy name -> content hash of the loaded adapter
        self.broken: dict[str, tuple[str, str]] = {}  # policy name -> (content hash, why) of adapters that failed
        self._lock = threading.Lock()
        self._pending: "queue.Queue[Group]" = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="policy-server", daemon=True)
        self._worker.start()
        self._closed = False
        atexit.register(self.close)
        model.eval()
        use_packed_linears(model)  # same outputs bit for bit; bf16 decoding on CPU faster (bench/generation.py)

    @classmethod
    def from_settings(cls, settings: Settings, registry: Registry | None = None, **kw) -> "PolicyServer":
        from .base_model import load_base_model

        dtype = None
        if settings.dtype == "auto" and not settings.load_in_4bit and settings.resolved_device() == "cpu":
            dtype = serving_dtype_cpu()
        model, tokenizer = load_base_model(settings, dtype=dtype)
        registry = registry or Registry(settings.versions_dir)
        return cls(model, tokenizer, registry, **kw)

    # -- adapters -------------------------------------------------------------------------
    def policies(self) -> list[str]:
        """Servable policies: the registry's, less adapters that failed to load (wrong shapes, …)."""
        if not self.registry:
            return [SFT]
        return [v.name for v in self.registry.list("policy")
                if self.broken.get(v.name, ("",))[0] != v.content_hash]

    def ensure_policy(self, name: str) -> None:
        """Load a policy's adapter if needed (thread-safe; the registry is re-read each time)."""
        if name == SFT:
            return
        if self.registry is None:
            raise GenerationError(f"unknown policy {name!r}: no registry")
        try:
            version = self.registry.get(name, kind="policy")
        except RegistryError as exc:
            raise GenerationError(str(exc)) from exc
        with self._lock:
            if name in self.loaded:
                return
            if self.broken.get(name, ("",))[0] == version.content_hash:
                raise GenerationError(self.broken[name][1])
            try:
                self.add_adapter(name, version.path)
            except GenerationError as exc:
                self.broken[name] = (version.content_hash, str(exc))
                log.error("%s", exc)
                raise
            self.loaded[name] = version.content_hash

    def add_adapter(self, name: str, path) -> None:
        from peft import PeftModel

        try:
            if self.model is self.base:
                self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name, is_trainable=False)
            else:
                self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except Exception as exc:  # wrong shapes, missing files
            # a failed load leaves the adapter half-injected (and, on the bare base, ACTIVE): take it out,
            # or every other policy — SFT included — would answer through it
            if self.model is self.base:
                _strip_lora_layers(self.base)
            elif name in getattr(self.model, "peft_config", {}):
                self.model.delete_adapter(name)
            raise GenerationError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
        self.model.eval()

    # -- requests -------------------------------------------------------------------------
    def submit(self, requests: Sequence[Request]) -> list[Stream]:
        """Queue requests as one group (they decode in the same batch); returns their streams."""
        if self._closed:
            raise GenerationError("the policy server is closed")
        group = Group()
        for r in requests:
            self.ensure_policy(r.policy)
        prompt_ids = [build_prompt_ids(self.tokenizer, r.messages, self.max_prompt_tokens) for r in requests]
        group.streams = [Stream(r, group) for r in requests]
        for s, ids in zip(group.streams, prompt_ids):
            s.prompt_ids = ids
        self._pending.put(group)
        return group.streams

    def generate(self, requests: Sequence[Request]) -> list[str]:
        streams = self.submit(requests)
        return [s.result() for s in streams]

    # -- the worker -----------------------------------------------------------------------
    def _take_batch(self) -> list[Group]:
        first = self._pending.get()
        if first is None:
            return None
        groups = [first]
        size = len(groups[0].streams)
        deadline = time.monotonic() + self.batch_window_s
        while size < self.max_batch:
            try:
                g = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if g is None:  # closing: finish what was taken, then stop
                self._pending.put(None)
                break
            groups.append(g)
            size += len(g.streams)
        return groups

    def close(self) -> None:
        """Stop the worker after the batch in flight (also called at interpreter exit)."""
        if not self._closed:
            self._closed = True
            self._pending.put(None)
            self._worker.join(timeout=30)

    def _run(self) -> None:
        while True:
            groups = self._take_batch()
            if groups is None:
                return
            streams = [s for g in groups for s in g.streams]
            try:
                self._decode(streams)
            except Exception as exc:  # noqa: BLE001 - report to every caller, keep serving
                log.exception("generation failed")
                for s in streams:
                    if not s.done:
                        s.error, s.done = GenerationError(f"generation failed: {exc}"), True
            finally:
                for g in groups:
                    g.notify()

    def _decode(self, streams: list[Stream]) -> None:
        # Loading an adapter injects LoRA layers into the base in place, so no adapter may load while a
        # batch decodes, and once any adapter exists every row names its own ("__base__" for SFT).
        with self._lock:
            self._decode_locked(streams)

    def _decode_locked(self, streams: list[Stream]) -> None:
        names = [s.request.policy for s in streams]
        use_adapters = self.model is not self.base
        adapter_names = [BASE_ADAPTER if n == SFT else n for n in names] if use_adapters else None
        start = time.monotonic()

        def on_step(row: int, tokens: list[int], finished: str | None) -> None:
            s = streams[row]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if not finished and text.endswith("\ufffd"):
                return  # half a multi-byte character: wait for the rest
            if s.first_token_s is None:
                s.first_token_s = time.monotonic() - s.submitted
            s.text, s.token_ids = text, list(tokens)
            if finished:
                s.finish_reason = finished
                s.done = True
                s.total_s = time.monotonic() - s.submitted
            s.group.notify()

        results = decode_batch(self.model, self.tokenizer, [s.prompt_ids for s in streams],
                               [s.request.params for s in streams], adapter_names, on_step)
        for s, r in zip(streams, results):
            s.finish_reason = r.finish_reason
            s.done = True
            if s.total_s is None:
                s.total_s = time.monotonic() - s.submitted
        log.debug("decoded %d requests in %.2fs", len(streams), time.monotonic() - start)


def _strip_lora_layers(model) -> None:
    """Undo a failed ``PeftModel.from_pretrained`` on ``model``: put every wrapped base layer back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
