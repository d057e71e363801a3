"""One base model, several roles as LoRA adapters (the design card's "one base, four roles").

* **policy**    — a LoRA adapter (``rlhf-vN`` in the registry);
* **reference** — the same base with every adapter disabled (:func:`adapters_disabled`);
* **critic**    — a LoRA adapter plus a :class:`ScalarHead` read at EVERY token (:func:`token_values`);
* **reward**    — a LoRA adapter plus a :class:`ScalarHead` read at the LAST token of a
  chat-templated conversation (:class:`RewardModel`), frozen during PPO.

All adapters live on one peft model over one base (bf16/fp32, or NF4 with ``--load-in-4bit``), so
memory is one base model whatever the number of roles. Heads are tiny ``Linear(hidden, 1)`` kept in
float32 and saved as ``score_head.safetensors`` beside the adapter files.

A reward model in the registry (``kind: "reward"``) is a directory with ``adapter_config.json``,
``adapter_model.safetensors`` (standard PEFT), ``score_head.safetensors`` and ``card.json``.
:func:`load_reward_scorer` loads one (``reward-v0`` by default, which ships with the package, or the
newest) as a :class:`RewardScorer` — the default judge of the evaluation suite and PPO's reward.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from rlhf_demo.safety_term import SafetyTerm
from training.losses import last_token_index

log = logging.getLogger(__name__)

HEAD_FILE = "score_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = ATTENTION + MLP
DEFAULT_REWARD = "reward-v0"


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# adapters on the shared base
# ---------------------------------------------------------------------------------------------
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


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def causal_lm(model):
    """The transformers model under a peft wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if is_peft(model) else model


def decoder(model):
    """The decoder body (e.g. ``LlamaModel``): hidden states without the LM head."""
    lm = causal_lm(model)
    body = getattr(lm, "base_model", lm)
    return body if body is not lm else lm.get_decoder()


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


class AdapterSwitch:
    """Switch the active LoRA adapter (or disable all) by setting each LoRA layer's flags directly.

    Why: peft's ``set_adapter`` and ``disable_adapter`` walk every module of the model and reset every
    adapter parameter's ``requires_grad`` (which :func:`preserve_requires_grad` then walks
    ``named_parameters`` twice to undo) — about 10 ms per switch on SmolLM2-135M, and a PPO iteration
    switches roles a dozen times. Here the LoRA layers are collected once; a switch writes the two
    flags peft's forward reads (``_active_adapter``, ``_disable_adapters``) on those layers plus the
    models' ``active_adapter`` bookkeeping, and no ``requires_grad`` is touched. The forward pass is
    exactly the one peft's own switch gives.

    Only for plain LoRA on an unmerged model without auxiliary (``modules_to_save``) wrappers:
    :meth:`supported` says whether a model qualifies (otherwise use :func:`use_adapter` and
    :func:`adapters_disabled`). Adapters added after construction are not seen: build it last.
    """

    def __init__(self, model):
        from peft.tuners.tuners_utils import BaseTunerLayer

        if not self.supported(model):
            raise ValueError("AdapterSwitch needs a peft model with plain, unmerged LoRA layers only")
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]

    @staticmethod
    def supported(model) -> bool:
        if not is_peft(model):
            return False
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        return bool(layers) and all(isinstance(m, LoraLayer) and not m.merged for m in layers)

    def _state(self):
        return ([(m._active_adapter, m._disable_adapters) for m in self.layers],
                self.model.active_adapter, self.model.base_model.active_adapter)

    def _restore(self, state) -> None:
        layers, outer, inner = state
        for m, (active, disabled) in zip(self.layers, layers):
            m._active_adapter, m._disable_adapters = active, disabled
        self.model.active_adapter, self.model.base_model.active_adapter = outer, inner

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """``name``: route the forward pass through that adapter; ``None``: the base, every adapter off."""
        if name is not None and name not in self.model.peft_config:
            raise ValueError(f"unknown adapter {name!r}")
        state = self._state()
        try:
            for m in self.layers:
                if name is None:
                    m._disable_adapters = True
                else:
                    m._active_adapter, m._disable_adapters = [name], False
            if name is not None:
                self.model.active_adapter = self.model.base_model.active_adapter = name
            yield
        finally:
            self._restore(state)


FLOAT32_ATTENTION = "rlhf_float32_eager"  # transformers attention-implementation name of float32_attention_forward


def float32_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                              **kwargs):
    """Attention computed in float32 with plain matmuls (transformers' attention-function interface).

    Why: on CPU, SDPA's flash kernel is accurate but slow in the backward pass (~7 ms per layer for
    4 x 9 heads x 95 tokens on one core, 4x the matmul form) and for one-token decode steps.
    transformers' own "eager" attention is fast but rounds the scores and probabilities to bfloat16
    (5x flash's error). Here q·kᵀ, the softmax and p·v run in float32 (as flash accumulates); only the
    output is cast back: flash's accuracy at the matmul form's speed. Grouped-query attention is done
    by grouping the query heads of each key/value head (no copies of K and V). The mask is
    transformers' additive "eager" mask (finite minimum, so fully padded rows stay finite).
    """
    B, H, Q, D = query.shape
    Hk, L = key.shape[1], key.shape[2]
    g = H // Hk
    q = query.float().reshape(B, Hk, g * Q, D)                     # query heads grouped by their K/V head
    scores = torch.matmul(q, key.float().transpose(2, 3))          # [B, Hk, g*Q, L]
    if scaling is not None:
        scores = scores * scaling
    if attention_mask is not None:                                 # additive [B, 1, Q, >=L]
        mask = attention_mask[:, :, :, :L].float().unsqueeze(2)    # [B, 1, 1, Q, L]
        scores = (scores.view(B, Hk, g, Q, L) + mask).view(B, Hk, g * Q, L)
    probs = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        probs = nn.functional.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs, value.float()).view(B, H, Q, D).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def float32_attention(model) -> Iterator[None]:
    """Run the model's attention with :func:`float32_attention_forward` inside the block."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if FLOAT32_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(FLOAT32_ATTENTION, float32_attention_forward)
        AttentionMaskInterface.register(FLOAT32_ATTENTION, eager_mask)
    config = causal_lm(model).config
    previous = config._attn_implementation
    config._attn_implementation = FLOAT32_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


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


@contextlib.contextmanager
def decoder_slice(model, start: int = 0, stop: int | None = None, final_norm: bool = True) -> Iterator[None]:
    """Make the decoder run only its layers ``[start, stop)`` (and skip its final norm if asked).

    With ``start > 0`` the decoder's input must be the hidden states entering layer ``start``
    (``inputs_embeds=``). This is how frozen bottom layers are computed once and cached (LoRA only on
    the top layers): the bottom slice runs once, the top slice every step. The decoder must keep
    its blocks in ``.layers`` and its final norm in ``.norm`` (Llama, Mistral, Qwen, SmolLM, …);
    callers verify the split against a full forward once (see ``training.reward_model``).
    """
    body = decoder(model)
    layers, norm = body.layers, body.norm
    body.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        body.norm = nn.Identity()
    try:
        yield
    finally:
        body.layers = layers
        body.norm = norm


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


# ---------------------------------------------------------------------------------------------
# the reward model
# ---------------------------------------------------------------------------------------------
class RewardModel:
    """A LoRA adapter (``adapter_name``) + :class:`ScalarHead` on the shared base."""

    def __init__(self, model, head: ScalarHead, adapter_name: str = "reward"):
        self.model = model
        self.head = head
        self.adapter_name = adapter_name

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, base, config, adapter_name: str = "reward", kbit_training: bool = False,
               gradient_checkpointing: bool = False) -> "RewardModel":
        """A fresh reward adapter + head on ``base`` (a transformers or peft model)."""
        if kbit_training and not is_peft(base):
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            causal_lm(base).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            causal_lm(base).enable_input_require_grads()
        model = add_adapter(base, adapter_name, config)
        set_active_adapter(model, adapter_name)
        head = ScalarHead(hidden_size(model)).to(next(p.device for p in model.parameters()))
        return cls(model, head, adapter_name)

    @classmethod
    def from_dir(cls, base, path: Path, adapter_name: str = "reward", trainable: bool = False) -> "RewardModel":
        """Load a saved reward model (adapter files + ``score_head.safetensors``) onto ``base``."""
        path = Path(path)
        for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_FILE):
            if not (path / f).is_file():
                raise FileNotFoundError(f"{path} is not a reward model: {f} is missing")
        shared = is_peft(base)
        model = load_adapter(base, path, adapter_name, trainable=trainable)
        if not shared:  # on a model with other adapters, the active one stays active (scoring switches)
            set_active_adapter(model, adapter_name)
        head = ScalarHead.load(path / HEAD_FILE, device=next(p.device for p in model.parameters()))
        head.requires_grad_(trainable)
        return cls(model, head, adapter_name)

    # -- parameters -----------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        params = [(n, p) for n, p in self.model.named_parameters()
                  if p.requires_grad and f".{self.adapter_name}." in n]
        return params + [(f"head.{n}", p) for n, p in self.head.named_parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "RewardModel":
        self.model.train(mode)
        self.head.train(mode)
        return self

    def eval(self) -> "RewardModel":
        return self.train(False)

    @property
    def device(self) -> torch.device:
        return self.head.linear.weight.device

    # -- scoring --------------------------------------------------------------------------
    def pair_rewards(self, batch, lm_loss: bool = False, inputs_embeds: torch.Tensor | None = None,
                     start_layer: int = 0):
        """Rewards of a packed :class:`~training.data.PairBatch`: ``(chosen [B], rejected [B], lm_logits)``.

        One forward pass per batch: each row holds ``[prefix | chosen | rejected]``.
        ``lm_logits`` (``[B, C, V]`` at ``batch.lm_index``, or None) feed the LM loss on ``chosen``.
        ``inputs_embeds``/``start_layer``: start from cached hidden states of the frozen bottom layers.
        """
        set_active_adapter(self.model, self.adapter_name)
        hidden = forward_hidden(self.model, None if inputs_embeds is not None else batch.input_ids,
                                batch.attention_mask, batch.position_ids, inputs_embeds, start_layer)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        chosen = self.head(hidden[rows, batch.chosen_index])
        rejected = self.head(hidden[rows, batch.rejected_index])
        logits = None
        if lm_loss:
            picked = hidden.gather(1, batch.lm_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            logits = causal_lm(self.model).get_output_embeddings()(picked)
        return chosen, rejected, logits

    def lora_start_layer(self) -> int:
        """The first decoder layer with this adapter's LoRA weights (layers below it are frozen)."""
        cfg = self.model.peft_config[self.adapter_name]
        layers = cfg.layers_to_transform
        if layers is None:
            return 0
        return min([layers] if isinstance(layers, int) else layers)

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards of right-padded conversations ``[B, T]`` at their last non-pad token.

        The reward adapter is active for this call only; the previously active adapter is restored.
        """
        with use_adapter(self.model, self.adapter_name):
            return last_token_scores(self.model, self.head, input_ids, attention_mask)

    # -- saving ---------------------------------------------------------------------------
    def save(self, out_dir: Path) -> Path:
        """PEFT adapter files + ``score_head.safetensors`` (a registry ``reward`` version's files)."""
        out_dir = Path(out_dir)
        save_adapter(self.model, self.adapter_name, out_dir)
        self.head.save(out_dir / HEAD_FILE)
        return out_dir


class RewardScorer:
    """Batched, no-grad scoring of whole conversations: ``.score([[msgs…], …]) -> [float, …]``."""

    def __init__(self, reward_model: RewardModel, tokenizer, max_length: int = 1024, batch_size: int = 8,
                 name: str = "", card: dict | None = None, safety=None):
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.card = card or {}
        # a composed version's safety term (rlhf_demo.safety_term.SafetyTerm), added by finish(); None = plain
        self.safety = safety

    def finish(self, conversations: Sequence[list[dict]], raw_scores) -> list[float]:
        """The version's reward from the reward head's raw scores: plus the safety term for a composed version."""
        raw = [float(x) for x in raw_scores]
        return raw if self.safety is None else self.safety.compose(conversations, raw)

    @property
    def model(self):
        return self.reward_model.model

    def encode(self, conversation: list[dict]) -> list[int]:
        from training.data import encode_conversation

        if not conversation or conversation[-1].get("role") != "assistant":
            raise ValueError("a conversation to score must end with an assistant message")
        ids = encode_conversation(self.tokenizer, conversation)
        return ids[-self.max_length:]

    @torch.no_grad()
    def score(self, conversations: Sequence[list[dict]]) -> list[float]:
        """One reward per conversation (prompt messages + the assistant's answer), in input order
        (for a composed version: the head's score plus the safety term)."""
        return self.finish(conversations, self.score_raw(conversations))

    @torch.no_grad()
    def score_raw(self, conversations: Sequence[list[dict]]) -> list[float]:
        """The reward head's scores alone (no safety term)."""
        if not conversations:
            return []
        rows = [self.encode(c) for c in conversations]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out = [0.0] * len(rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = self.reward_model.device
        was_training = self.model.training
        self.reward_model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                width = max(len(rows[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for b, i in enumerate(chunk):
                    ids[b, :len(rows[i])] = torch.tensor(rows[i])
                    mask[b, :len(rows[i])] = 1
                scores = self.reward_model.score_ids(ids.to(device), mask.to(device))
                for b, i in enumerate(chunk):
                    out[i] = float(scores[b])
        finally:
            self.reward_model.train(was_training)
        return out

    def score_pairs(self, pairs) -> tuple[list[float], list[float]]:
        """(chosen rewards, rejected rewards) of :class:`~training.data.PreferencePair` s."""
        chosen = self.score([p.conversation("chosen") for p in pairs])
        rejected = self.score([p.conversation("rejected") for p in pairs])
        return chosen, rejected


TOY_PREFIX = "toy:"


class ToyReward:
    """A reward with a known answer, for diagnosing PPO: ``toy:WORD`` pays 1 for an answer that contains
    WORD as a whole word (case-insensitive), else 0 — the optimal policy says WORD in every answer.

    Same interface as :class:`RewardScorer` (``.score(conversations) -> [float]``, ``.name``, ``.card``)
    but no adapter and no model: PPO with it runs without a reward model (its critic starts fresh).
    """

    reward_model = None

    def __init__(self, word: str):
        import re

        word = word.strip()
        if not word or not re.fullmatch(r"[\w'-]+", word):
            raise ValueError(f"toy reward {TOY_PREFIX}{word!r}: WORD must be one word (letters, digits, ' or -)")
        self.word = word
        self.name = f"{TOY_PREFIX}{word}"
        self.card = {"kind": "toy-reward", "word": word}
        self._pattern = re.compile(rf"(?<![\w'-]){re.escape(word)}(?![\w'-])", re.IGNORECASE)

    @staticmethod
    def parse(spec: str | None) -> "ToyReward | None":
        """The toy reward named by ``spec`` (``toy:WORD``), or None for a registry name."""
        if not spec or not spec.startswith(TOY_PREFIX):
            return None
        return ToyReward(spec[len(TOY_PREFIX):])

    def answer_score(self, text: str) -> float:
        return 1.0 if self._pattern.search(text or "") else 0.0

    def score(self, conversations: Sequence[list[dict]]) -> list[float]:
        out = []
        for c in conversations:
            if not c or c[-1].get("role") != "assistant":
                raise ValueError("a conversation to score must end with an assistant message")
            out.append(self.answer_score(c[-1].get("content", "")))
        return out


def resolve_reward_version(settings, name: str | None = None, registry=None, allow_judge: bool = False):
    """The registry version of a reward model.

    ``name`` picks one. Otherwise: among the reward models trained on ``settings.base_model`` (or
    whose card names no base), ``reward-v0`` (the shipped default) if present, else the newest.
    A judge (card ``"role": "judge"``) is never a default, and naming one is refused unless
    ``allow_judge`` (the evaluation's helpfulness judge): nothing trains against a judge.
    """
    from rlhf_demo.registry import Registry, RegistryError

    registry = registry or Registry(settings.versions_dir)
    if name:
        version = registry.get(name, kind="reward")
        if version.card.get("role") == "judge" and not allow_judge:
            raise RegistryError(f"{name} is a judge (its card has role 'judge'): it grades policies in the "
                                "evaluation and is never trained against or trained further; pick a reward-vN")
        return version
    versions = [v for v in registry.list("reward") if v.card.get("role") != "judge"]  # a judge is never a default
    fits = [v for v in versions if v.card.get("base_model") in (None, settings.base_model)]
    if not fits:
        other = f" (there are reward models for other bases: {', '.join(v.name for v in versions)})" if versions else ""
        raise RegistryError(f"no reward model for base {settings.base_model!r}{other}: train one with "
                            "`python -m training.reward_model` (or `make train-reward`)")
    for v in fits:
        if v.name == DEFAULT_REWARD:
            return v
    return max(fits, key=lambda v: (v.number, v.card.get("created", "")))


def load_reward_scorer(settings, name: str | None = None, model=None, tokenizer=None, batch_size: int = 8,
                       adapter_name: str = "reward", allow_judge: bool = False) -> RewardScorer:
    """Load a reward model from the registry as a :class:`RewardScorer`.

    ``name``: a registry version (default: ``reward-v0``, or the newest reward model if that is
    missing; only models trained on ``settings.base_model`` are considered by default). ``model``/``tokenizer``: an already loaded base (or peft model, e.g. PPO's policy) to put
    the reward adapter on — one base in memory for every role; otherwise the base is loaded from
    ``settings`` (``--load-in-4bit`` applies).
    """
    version = resolve_reward_version(settings, name, allow_judge=allow_judge)
    card_base = version.card.get("base_model")
    if card_base and card_base != settings.base_model:
        log.warning("reward model %s was trained on base %s, scoring with %s", version.name, card_base,
                    settings.base_model)
    if model is None:
        from rlhf_demo.base_model import load_base_model

        model, loaded_tokenizer = load_base_model(settings)
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        from rlhf_demo.base_model import load_tokenizer

        tokenizer = load_tokenizer(settings)
    reward = RewardModel.from_dir(model, version.path, adapter_name=adapter_name, trainable=False)
    reward.eval()
    max_length = int(version.card.get("config", {}).get("max_length", 1024))
    return RewardScorer(reward, tokenizer, max_length=max_length, batch_size=batch_size, name=version.name,
                        card=version.card, safety=SafetyTerm.load(version.path))
