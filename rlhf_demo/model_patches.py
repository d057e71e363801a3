"""Where the project reaches into transformers' and peft's private API — in one place, with a version guard.

Each patch has an equivalence test against the library's own path (tests/test_roles.py):

* :class:`AdapterSwitch` — writes peft LoRA layers' ``_active_adapter`` / ``_disable_adapters`` directly instead
  of ``set_adapter`` / ``disable_adapter`` (test_adapter_switch_gives_peft_s_forward_without_touching_requires_grad);
* :func:`float32_attention` — registers an attention function and sets the config's ``_attn_implementation``
  (test_float32_attention_matches_sdpa_at_any_padded_width);
* :func:`decoder_slice` — runs a slice of the decoder by replacing ``body.layers`` / ``body.norm`` for a block
  (test_frozen_hidden_and_continuation; the reward trainer also checks the split against a full forward).

:func:`check_versions` warns once when transformers or peft is outside the versions these were tested with.
Also the accessors every caller needs to find the pieces of a (peft-wrapped) model: :func:`is_peft`,
:func:`causal_lm`, :func:`decoder`. Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)

TESTED = {"transformers": (5, 24), "peft": (0, 21)}  # major.minor the patches were checked against
_checked = False


def check_versions() -> bool:
    """True when transformers and peft have the major.minor versions of :data:`TESTED`; otherwise a warning
    (once per process) that the private-API patches may no longer match the libraries."""
    global _checked
    import peft
    import transformers

    found = {"transformers": transformers.__version__, "peft": peft.__version__}
    ok = all(tuple(int(x) for x in found[k].split(".")[:2]) == v for k, v in TESTED.items())
    if not ok and not _checked:
        log.warning("rlhf_demo.model_patches was tested with transformers %s.%s and peft %s.%s, found %s: "
                    "run tests/test_roles.py (the patches' equivalence tests) before trusting the results",
                    *TESTED["transformers"], *TESTED["peft"], found)
    _checked = True
    return ok


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
        check_versions()
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

    check_versions()
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


@contextlib.contextmanager
def decoder_slice(model, start: int = 0, stop: int | None = None, final_norm: bool = True) -> Iterator[None]:
    """Make the decoder run only its layers ``[start, stop)`` (and skip its final norm if asked).

    With ``start > 0`` the decoder's input must be the hidden states entering layer ``start``
    (``inputs_embeds=``). This is how frozen bottom layers are computed once and cached (LoRA only on
    the top layers): the bottom slice runs once, the top slice every step. The decoder must keep
    its blocks in ``.layers`` and its final norm in ``.norm`` (Llama, Mistral, Qwen, SmolLM, …);
    callers verify the split against a full forward once (see ``training.reward_model``).
    """
    check_versions()
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
