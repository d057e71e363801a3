"""Packed bfloat16 linears for CPU serving: oneDNN's pre-packed weights give the same numbers as
``F.linear``, faster at batch 1 (bench/generation.py). Used by :class:`rlhf_demo.generation.PolicyServer`."""

from __future__ import annotations

import weakref

import torch

_PACKED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _pack_weight(weight: torch.Tensor, bias: torch.Tensor | None):
    """oneDNN's pre-packed (blocked) copy of a bf16 weight, or None where it does not give bit for bit
    what ``F.linear`` gives (checked on random inputs of 1 and 3 rows when packing)."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        gen = torch.Generator().manual_seed(0)
        for rows in (1, 3):
            x = torch.randn(rows, weight.shape[1], generator=gen).to(weight.dtype)
            fast = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
            if not torch.equal(fast, torch.nn.functional.linear(x, weight, bias)):
                return None
        return packed
    except (RuntimeError, AttributeError):  # no oneDNN / no bf16 kernels in this build
        return None


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` that, for bf16 inference on CPU, multiplies by a pre-packed copy of its weight.

    Unpacked ``F.linear`` re-blocks the weight at every call; at batch 1 that is most of the decode
    step. The packed copy is made on first use, re-made whenever the weight changes (data pointer or
    in-place version), and only used where it was checked to give the same bits as ``F.linear``; under
    autograd, in other dtypes or on other devices this is a plain ``nn.Linear``. The packed copies live
    outside the module (a weak dictionary), so ``state_dict``, ``deepcopy`` and peft see an ordinary
    Linear. Cost: one extra copy of the packed weights in memory.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype is torch.bfloat16 and w.dtype is torch.bfloat16 and x.device.type == "cpu"
                and not torch.is_grad_enabled()):
            key = (w.data_ptr(), w._version)
            entry = _PACKED.get(self)
            if entry is None or entry[0] != key:
                entry = _PACKED[self] = (key, _pack_weight(w, self.bias))
            if entry[1] is not None:
                return torch.ops.mkldnn._linear_pointwise(x, entry[1], self.bias, "none", [], "")
        return super().forward(x)


def use_packed_linears(model: torch.nn.Module, enabled: bool = True) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` (LoRA adapters' base layers included) into a
    :class:`PackedLinear`, or back with ``enabled=False``. Returns how many modules changed. Outputs
    are unchanged bit for bit; only bf16 CPU inference takes the packed path."""
    changed = 0
    for module in model.modules():
        if enabled and type(module) is torch.nn.Linear:
            module.__class__ = PackedLinear
            changed += 1
        elif not enabled and type(module) is PackedLinear:
            module.__class__ = torch.nn.Linear
            _PACKED.pop(module, None)
            changed += 1
    return changed


def serving_dtype_cpu():
    """bf16 where the CPU has native bf16 (AVX512-BF16/AMX), else fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32
