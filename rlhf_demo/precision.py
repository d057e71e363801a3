"""Run a model in a wider float dtype for a while, then put it back exactly as it was.

Why: in bfloat16 a greedy answer depends on its batch neighbours (padding, the rounding of each batched
matmul): on this project's CPU 42–47 of 60 answers of one policy changed with the batch layout, none in
float32 (``docs/decode-noise/README.md``). A run that trains in bfloat16 but chooses its checkpoint on greedy
validation answers should decode those answers in float32 — :func:`computing_in` does that around the
validation and puts every parameter and buffer back in its own dtype afterwards. Only *widening* is allowed
(bfloat16/float16 → float32 → back is exact, bit for bit), so training continues from the same numbers;
trainable float32 tensors (LoRA adapters, heads) are not touched, and non-float or quantised tensors (4-bit
weights) are never cast. The parameter objects stay the same (``.data`` is swapped), so optimisers keep them.
Two *different* tensor objects that share one storage (views) would each get their own copy and stop sharing;
transformers ties weights by sharing one Parameter object, which is cast once.

Core module: imports nothing from training, eval or the app.
"""

from __future__ import annotations

import contextlib
from itertools import chain

import torch


def _castable(t: torch.Tensor) -> bool:
    # bitsandbytes' Params4bit are uint8 (not floating) and carry a quant_state: never cast
    return t.is_floating_point() and getattr(t, "quant_state", None) is None


def widens_exactly(src: torch.dtype, dst: torch.dtype) -> bool:
    """Is every ``src`` value a ``dst`` value (so ``src -> dst -> src`` is the identity)? bfloat16/float16 -> float32
    yes; float16 <-> bfloat16 no (each has range or precision the other lacks)."""
    a, b = torch.finfo(src), torch.finfo(dst)
    return b.bits >= a.bits and b.eps <= a.eps and b.max >= a.max and b.smallest_normal <= a.smallest_normal


def narrower_tensors(module: torch.nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
    """The float parameters and buffers of ``module`` whose dtype is not ``dtype`` (each tensor object once; a tied
    weight is one Parameter object, so it is cast once)."""
    seen, out = set(), []
    for t in chain(module.parameters(), module.buffers()):
        if id(t) in seen or not _castable(t) or t.dtype == dtype:
            continue
        seen.add(id(t))
        if not widens_exactly(t.dtype, dtype):
            raise ValueError(f"computing_in({dtype}): a {t.dtype} tensor could not be restored exactly from "
                             f"{dtype}; only exact widening (e.g. bfloat16 -> float32) is allowed")
        out.append(t)
    return out


@contextlib.contextmanager
def computing_in(module: torch.nn.Module, dtype: torch.dtype | None):
    """Within the block every float parameter/buffer of ``module`` is ``dtype``; afterwards each is back in its own
    dtype with its exact former values. ``dtype=None`` (or a module already in ``dtype``) does nothing.
    Gradients are left alone: use it under ``torch.no_grad()``, between optimiser steps."""
    if dtype is None:
        yield
        return
    tensors = narrower_tensors(module, dtype)
    former = [t.dtype for t in tensors]
    done = 0
    try:
        for t in tensors:  # inside the try: an out-of-memory error half-way still puts back what was widened
            t.data = t.data.to(dtype)
            done += 1
        yield
    finally:
        for t, d in zip(tensors[:done], former):
            t.data = t.data.to(d)
