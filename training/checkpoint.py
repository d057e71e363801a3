"""Atomic training checkpoints, shared by the reward-model and PPO trainers.

A checkpoint is a directory ``<run dir>/checkpoints/step-<N>/`` with

* ``adapter-<name>.safetensors`` + ``adapter-<name>.json`` — each LoRA adapter's weights and config,
* ``module-<name>.safetensors`` — each extra module (heads),
* ``optimizer.pt``, ``scheduler.pt`` — their ``state_dict()``,
* ``rng.pt`` — Python, NumPy and torch (CPU and CUDA) random states,
* ``extra.pt`` — any other state (running moments, data position, …: tensors, numbers, lists, dicts),
* ``state.json`` — step, format version, and the SHA-256 of every file above.

It is written into a hidden temporary directory, fsynced and renamed into place, so a crash leaves
either the whole checkpoint or nothing. :func:`load_checkpoint` verifies every file's hash BEFORE
touching the model; a corrupt or partial checkpoint is reported with a clear message and the
previous one is used instead. :func:`save_checkpoint` keeps the newest ``keep_last`` checkpoints.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf_demo.atomic import atomic_dir, read_manifest, verify_files
from rlhf_demo.registry import sha256_file as _sha256

log = logging.getLogger(__name__)

FORMAT = 1
STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """No usable checkpoint (all missing or corrupt), or one that does not fit the model."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    extra: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # corrupt newer checkpoints that were passed over


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint directory in the run, oldest first (validity not checked)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return sorted(found)


def rng_state() -> dict:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, *, model=None, adapters: list[str] | tuple[str, ...] = (),
                    modules: dict[str, torch.nn.Module] | None = None, optimizer=None, scheduler=None,
                    extra: dict[str, Any] | None = None, keep_last: int = 2) -> Path:
    """Write checkpoint ``step-<step>`` atomically; keep the newest ``keep_last`` (0 = all)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    with atomic_dir(final, replace=True, prefix=f".tmp-step-{step:07d}-") as tmp:  # the same step written again
        for name in adapters:
            state = get_peft_model_state_dict(model, adapter_name=name)
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      str(tmp / f"adapter-{name}.safetensors"), metadata={"format": "pt"})
            config = model.peft_config[name].to_dict()
            (tmp / f"adapter-{name}.json").write_text(json.dumps(config, sort_keys=True, default=sorted_default))
        for name, module in (modules or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      str(tmp / f"module-{name}.safetensors"), metadata={"format": "pt"})
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        torch.save(extra or {}, tmp / "extra.pt")
        files = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / "state.json").write_text(json.dumps({"format": FORMAT, "step": step, "adapters": list(adapters),
                                                    "modules": sorted(modules or {}), "files": files}, indent=2))
    if keep_last > 0:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".tmp-step-*"):  # an interrupted earlier save
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def sorted_default(value):
    if isinstance(value, set):
        return sorted(value)
    return str(value)


def verify_checkpoint(path: Path) -> dict:
    """The checkpoint's ``state.json`` if every file is present and matches its hash; else CheckpointError."""
    path = Path(path)
    state = read_manifest(path / "state.json", CheckpointError, f"{path}: no state.json (an interrupted save?)",
                          "unreadable")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
    verify_files(path, state.get("files", {}), CheckpointError)
    return state


def _torch_load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(run_dir_or_path: Path, *, model=None, modules: dict[str, torch.nn.Module] | None = None,
                    optimizer=None, scheduler=None, restore_rng: bool = True) -> Checkpoint:
    """Restore the newest valid checkpoint of a run (or the checkpoint directory given).

    Checkpoints are verified newest first; a corrupt one is reported (``log.warning`` and
    ``Checkpoint.skipped``) and the previous one is tried. Raises :class:`CheckpointError` when none is
    usable. Adapters are loaded into the adapters of the same name already on ``model``.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    target = Path(run_dir_or_path)
    if STEP_RE.match(target.name) and target.is_dir():
        candidates = [(int(STEP_RE.match(target.name).group(1)), target)]
    else:
        candidates = list_checkpoints(target)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {checkpoints_dir(target)}")
    skipped: list[str] = []
    for step, path in reversed(candidates):
        try:
            state = verify_checkpoint(path)
        except CheckpointError as exc:
            older = [p.name for s, p in candidates if s < step]
            msg = f"checkpoint {path.name} is unusable: {exc}" + (
                f"; falling back to {older[-1]}" if older else "; no older checkpoint")
            log.warning(msg)
            skipped.append(msg)
            continue
        for name in state.get("adapters", []):
            if model is None or name not in getattr(model, "peft_config", {}):
                raise CheckpointError(f"{path}: has adapter {name!r}, which the model does not have")
            result = set_peft_model_state_dict(model, load_file(str(path / f"adapter-{name}.safetensors")),
                                               adapter_name=name)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise CheckpointError(f"{path}: adapter {name!r} does not fit the model ({unexpected[:3]} …)")
        for name, module in (modules or {}).items():
            f = path / f"module-{name}.safetensors"
            if not f.is_file():
                raise CheckpointError(f"{path}: no saved state for module {name!r}")
            module.load_state_dict(load_file(str(f)))
        if optimizer is not None:
            if not (path / "optimizer.pt").is_file():
                raise CheckpointError(f"{path}: no optimizer state")
            optimizer.load_state_dict(_torch_load(path / "optimizer.pt"))
        if scheduler is not None and (path / "scheduler.pt").is_file():
            scheduler.load_state_dict(_torch_load(path / "scheduler.pt"))
        if restore_rng:
            set_rng_state(_torch_load(path / "rng.pt"))
        extra = _torch_load(path / "extra.pt") if (path / "extra.pt").is_file() else {}
        return Checkpoint(path, int(state["step"]), extra, skipped)
    raise CheckpointError("every checkpoint is corrupt:\n  " + "\n  ".join(skipped))
