"""One padding helper for every batch of token-id rows (generation, the judges, the trainers).

:func:`pad_rows` puts rows of different lengths into one ``[B, W]`` tensor with an attention mask:
``side="left"`` aligns the rows' ends (prompts to decode from), ``side="right"`` their starts (answers,
suffixes). Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

from typing import Sequence

import torch


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str = "left", width: int | None = None,
             min_width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, W], mask [B, W])``, W the longest row (at least ``min_width``; ``width`` fixes it, and a
    longer row is an error). Padding positions hold ``pad_id`` and mask 0."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max([len(r) for r in rows] + [min_width])
    if width is None:
        width = longest
    elif longest > width:
        raise ValueError(f"a row of {longest} tokens does not fit width {width}")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not len(r):
            continue
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, cols] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows aligned at their ends (prompts to continue): :func:`pad_rows` with ``side="left"``."""
    return pad_rows(rows, pad_id, "left")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last valid token of each row of a ``[B, T]`` mask (``-1`` for an empty row)."""
    valid = mask if mask.dtype == torch.bool else mask != 0
    positions = torch.arange(valid.shape[-1], device=valid.device).expand_as(valid)
    return torch.where(valid, positions, -1).amax(-1)


def used_columns(attention_mask: torch.Tensor) -> slice:
    """The columns of a ``[B, T]`` mask that are not padding in every row (a mini-batch's work, trimmed)."""
    used = attention_mask.any(0).nonzero()
    return slice(int(used.min()), int(used.max()) + 1)
