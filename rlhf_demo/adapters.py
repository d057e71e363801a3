"""One base model, LoRA adapters on it, and scalar heads: the PEFT plumbing every role uses (the arena's
policies, PPO's policy/critic/reference, the reward model).

Adapters are added, loaded, saved (standard PEFT files), switched (:func:`use_adapter`) or all disabled
(:func:`adapters_disabled`, the reference policy) without disturbing any parameter's ``requires_grad``.
:class:`ScalarHead` is a tiny float32 ``Linear(hidden, 1)`` saved as ``score_head.safetensors``;
:func:`token_values` reads it at every token (a critic), :func:`last_token_scores` at the last one (a reward).
The private-API patches (:class:`AdapterSwitch`, :func:`float32_attention`, :func:`decoder_slice`) live in
:mod:`rlhf_demo.model_patches`. Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from .model_patches import causal_lm, decoder, decoder_slice, is_peft
from .padding import last_token_index


HEAD_FILE = "score_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = ATTENTION + MLP


class ScalarHead(nn.Module):
    """``Linear(hidden_size, 1)`` in float32: a reward (last token) or a value (every token)."""

    def __init__(self, hidden_size: int, init_std: float | None = None):
        """``init_std``: std of the initial weights (default ``1/sqrt(hidden_size + 1)``; 0 = zeros, a head
        that predicts 0 everywhere until it learns)."""
        super().__init__()
        self.hidden_size = hidden_size
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        std = 1.0 / math.sqrt(hidden_size + 1) if init_std is None else float(init_std)
        if std > 0:
            nn.init.normal_(self.linear.weight, std=std)
        else:
            nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., hidden] -> [...]`` (float32, whatever the dtype of ``hidden``)."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.linear(hidden.float()).squeeze(-1)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({"weight": self.linear.weight.detach().float().cpu().contiguous(),
                   "bias": self.linear.bias.detach().float().cpu().contiguous()},
                  str(path), metadata={"hidden_size": str(self.hidden_size), "format": "pt"})

    @classmethod
    def load(cls, path: Path, device=None) -> "ScalarHead":
        from safetensors.torch import load_file

        state = load_file(str(path))
        if set(state) != {"weight", "bias"} or state["weight"].dim() != 2 or state["weight"].shape[0] != 1:
            raise ValueError(f"{path}: not a scalar head (expected 'weight' [1, hidden] and 'bias' [1])")
        head = cls(state["weight"].shape[1])
        head.linear.load_state_dict(state)
        return head.to(device) if device is not None else head


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: Sequence[str] = DEFAULT_TARGETS,
                layers: int | None = None, num_layers: int | None = None):
    """A LoRA config; ``layers=N`` puts the adapter on the last N decoder layers only."""
    from peft import LoraConfig

    kw = {}
    if layers is not None:
        if num_layers is None:
            raise ValueError("lora_config(layers=N) needs num_layers (the base's decoder layer count)")
        kw["layers_to_transform"] = list(range(max(0, num_layers - layers), num_layers))
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", **kw)


def hidden_size(model) -> int:
    config = causal_lm(model).config
    return getattr(config.get_text_config(), "hidden_size")


def num_layers(model) -> int:
    return causal_lm(model).config.get_text_config().num_hidden_layers


def add_adapter(model, name: str, config):
    """Add a fresh LoRA adapter ``name``; wraps the base in a PeftModel on first use. Returns the model."""
    from peft import get_peft_model

    if not is_peft(model):
        model = get_peft_model(model, config, adapter_name=name)
    else:
        if name in model.peft_config:
            raise ValueError(f"adapter {name!r} exists already")
        with preserve_requires_grad(model):
            model.add_adapter(name, config)
        for n, p in model.named_parameters():
            if f".{name}." in n and "lora_" in n:
                p.requires_grad_(True)
    return model


def load_adapter(model, path: Path, name: str, trainable: bool = False):
    """Load a PEFT adapter directory as ``name`` onto ``model`` (wrapping it if needed). Returns the model."""
    from peft import PeftModel

    path = Path(path)
    if not is_peft(model):
        model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=trainable)
    else:
        if name in model.peft_config:
            raise ValueError(f"adapter {name!r} exists already")
        with preserve_requires_grad(model):
            model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
    set_adapter_trainable(model, name, trainable)
    return model


def set_adapter_trainable(model, name: str, trainable: bool) -> None:
    for n, p in model.named_parameters():
        if f".{name}." in n and "lora_" in n:
            p.requires_grad_(trainable)


def save_adapter(model, name: str, out_dir: Path) -> None:
    """Write ``name`` as a standard PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=name)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out_dir / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    config = model.peft_config[name]
    data = config.to_dict()
    data["inference_mode"] = True
    for k, v in list(data.items()):
        if isinstance(v, set):
            data[k] = sorted(v)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def preserve_requires_grad(model) -> Iterator[None]:
    """peft's ``set_adapter`` freezes every other adapter: keep each parameter's flag as it was."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])


def set_active_adapter(model, name: str) -> None:
    """Route the forward pass through adapter ``name`` (requires_grad flags are left as they were)."""
    if not is_peft(model):
        raise ValueError("the model has no adapters")
    if model.active_adapter == name:
        return
    with preserve_requires_grad(model):
        model.set_adapter(name)


@contextlib.contextmanager
def use_adapter(model, name: str) -> Iterator[None]:
    """Temporarily make ``name`` the active adapter."""
    previous = model.active_adapter
    set_active_adapter(model, name)
    try:
        yield
    finally:
        set_active_adapter(model, previous)


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """The reference policy: the base with every adapter switched off."""
    if not is_peft(model):
        yield
        return
    # peft re-enables the layers on exit through set_adapter, which un-freezes the active adapter and
    # freezes every other one: keep each parameter's requires_grad as it was.
    with preserve_requires_grad(model), model.disable_adapter():
        yield


def contiguous_lm_head_input(model) -> None:
    """rlhf_demo.base_model.contiguous_lm_head_input on the causal LM inside a (peft-wrapped) model."""
    from rlhf_demo.base_model import contiguous_lm_head_input as hook_head

    hook_head(causal_lm(model))


def attention_mask_for(model, mask: torch.Tensor, dtype=None) -> torch.Tensor:
    """A 2-D padding mask passes through; a 4-D bool mask is made additive for eager attention."""
    if mask.dim() != 4:
        return mask
    impl = getattr(causal_lm(model).config, "_attn_implementation", "sdpa") or "sdpa"
    if impl == "sdpa":
        return mask
    if impl == "eager":
        dtype = dtype or (torch.get_autocast_dtype(mask.device.type) if torch.is_autocast_enabled(mask.device.type)
                          else next(causal_lm(model).parameters()).dtype)
        if not dtype.is_floating_point:
            dtype = torch.float32
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    raise ValueError(f"packed pairs need sdpa or eager attention, not {impl!r}")


def forward_hidden(model, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                   position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                   start_layer: int = 0) -> torch.Tensor:
    """Last hidden states ``[B, T, H]`` of the decoder (the active adapter applies; no LM head).

    ``inputs_embeds`` + ``start_layer=k``: continue from cached hidden states entering layer ``k``.
    """
    mask = attention_mask_for(model, attention_mask)
    if start_layer:
        with decoder_slice(model, start_layer):
            out = decoder(model)(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                                 use_cache=False)
    else:
        out = decoder(model)(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask,
                             position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


@torch.no_grad()
def frozen_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None,
                  stop_layer: int) -> torch.Tensor:
    """Hidden states entering layer ``stop_layer`` (the output of the frozen bottom layers)."""
    with decoder_slice(model, 0, stop_layer, final_norm=False):
        out = decoder(model)(input_ids=input_ids, attention_mask=attention_mask_for(model, attention_mask),
                             position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


@torch.no_grad()
def frozen_hidden_and_continuation(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                   position_ids: torch.Tensor, stop_layer: int, rows: torch.Tensor,
                                   more_ids: torch.Tensor, more_mask: torch.Tensor, more_positions: torch.Tensor,
                                   past_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`frozen_hidden` of a batch, then of ``more_ids [R, S]`` continuing its rows ``rows`` (KV cache).

    The first result is bitwise the one :func:`frozen_hidden` gives for ``input_ids`` (a wider batch
    would not be: CPU flash attention rounds differently for another sequence length). Continuation
    row ``j`` follows batch row ``rows[j]``: it attends to that row's tokens where ``past_mask`` (default
    ``attention_mask``) is set, then to its own (``more_mask``), at positions ``more_positions`` — as if
    it had been written after those tokens. Returns ``(hidden [B, T, H], more_hidden [R, S, H])``.
    """
    from transformers import DynamicCache

    past_mask = attention_mask if past_mask is None else past_mask
    body = decoder(model)
    with decoder_slice(model, 0, stop_layer, final_norm=False):
        cache = DynamicCache(config=causal_lm(model).config)
        first = body(input_ids=input_ids, attention_mask=attention_mask_for(model, attention_mask),
                     position_ids=position_ids, cache=cache, use_cache=True).last_hidden_state
        if rows.numel() != input_ids.shape[0] or not torch.equal(rows.cpu(), torch.arange(input_ids.shape[0])):
            cache.batch_select_indices(rows)
        full_mask = torch.cat([past_mask.index_select(0, rows), more_mask.to(past_mask.dtype)], dim=1)
        more = body(input_ids=more_ids, attention_mask=full_mask, position_ids=more_positions, cache=cache,
                    use_cache=True).last_hidden_state
    return first, more


def token_values(model, head: ScalarHead, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The critic: ``values[b, t] = head(hidden[b, t])`` at every position (float32 ``[B, T]``)."""
    return head(forward_hidden(model, input_ids, attention_mask, position_ids))


def last_token_scores(model, head: ScalarHead, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Score of each right-padded row at its last non-pad token (float32 ``[B]``)."""
    hidden = forward_hidden(model, input_ids, attention_mask)
    last = last_token_index(attention_mask).clamp_min(0)
    return head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
