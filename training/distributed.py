"""Data parallelism for the trainers: the process group and the few collectives they need.

``accelerate launch`` (or ``torchrun``) starts N copies of a trainer and gives each one RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. :func:`init` joins them into one
``torch.distributed`` process group: gloo on CPU, NCCL on GPUs (one GPU per process).

Our models are a frozen base plus small trainable adapters (LoRA, a scalar head), so what DDP does
for us is small and explicit here:

* every rank starts from the same trainable weights (:func:`broadcast_params_`, as DDP does when it
  wraps a model),
* after ``backward()`` the trainable gradients are averaged across ranks (:func:`all_reduce_mean_`),
  so every rank takes the same optimizer step and the weights stay identical,
* each rank works on its own share of the data (:func:`shard`), logged metrics are averaged
  (:func:`all_reduce_mean`), and only the main rank writes files (:func:`is_main`, :func:`barrier`).

In a single process (no WORLD_SIZE > 1 in the environment) no process group is created and every
function here is a no-op or the identity: a trainer behaves, and computes, exactly as without this
module.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def launched() -> bool:
    """Started by ``accelerate launch``/``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(settings):
    """Join the process group when launched with several processes; returns the settings this rank uses.

    The backend follows the trainer's device: NCCL when it is CUDA (each rank then pins its own GPU,
    ``cuda:<LOCAL_RANK>``; with fewer GPUs than ranks they share them through gloo), gloo otherwise (``--device auto`` means CPU under ACCELERATE_USE_CPU=true).
    Without a launcher: the settings unchanged, no group.
    """
    if not launched():
        return settings
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    device = "cpu" if use_cpu and settings.device == "auto" else settings.resolved_device()
    on_gpu = device.startswith("cuda")
    backend = "gloo"
    if on_gpu:
        gpus = torch.cuda.device_count()
        # one GPU per process with NCCL; fewer GPUs than processes (a check on a one-GPU machine):
        # ranks share the GPUs round-robin and talk through gloo, since NCCL refuses two ranks on one device
        backend = "nccl" if gpus >= world_size() else "gloo"
        device = f"cuda:{local_rank() % max(gpus, 1)}"
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    return dataclasses.replace(settings, device=device)


def cleanup() -> None:
    """Leave the process group (at the end of a launched run)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's contiguous share of ``items`` (sizes differ by at most one; world 1: all of them)."""
    n = len(items)
    return list(items[rank * n // world:(rank + 1) * n // world])


def _by_device_and_dtype(tensors: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


@torch.no_grad()
def all_reduce_mean_(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` across ranks, in place (call after backward, before the step).

    Every rank runs the same code, so the same parameters have a gradient on every rank; those
    without one (``grad is None``) are skipped. One flat all-reduce per device/dtype.
    """
    if not is_distributed():
        return
    world = world_size()
    for grads in _by_device_and_dtype([p.grad for p in params if p.grad is not None]).values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def broadcast_params_(params: list[torch.nn.Parameter]) -> None:
    """Copy the main rank's values of ``params`` to every rank (the same start everywhere)."""
    if not is_distributed():
        return
    for tensors in _by_device_and_dtype([p.data for p in params]).values():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T) -> T:
    """The main rank's ``obj`` on every rank (e.g. a run directory named after the clock)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(values: torch.Tensor) -> torch.Tensor:
    """The 1-D tensors of every rank concatenated in rank order (sizes may differ), on ``values``' device."""
    if not is_distributed():
        return values
    parts = all_gather_object(values.detach().cpu())
    return torch.cat(parts).to(values.device)


def all_reduce_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the ranks that have it (same keys, same order as this rank's)."""
    if not is_distributed():
        return metrics
    every = all_gather_object(dict(metrics))
    return {k: sum(m[k] for m in every if k in m) / sum(k in m for m in every) for k in metrics}


def fingerprint(params: list[torch.Tensor]) -> str:
    """SHA-256 of the parameters' bytes: equal on two ranks iff their weights are bitwise equal."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_in_sync(params: list[torch.Tensor], what: str = "trainable weights") -> list[str]:
    """Every rank's :func:`fingerprint`; raises if the ranks' weights differ (data parallelism broke).
    A single process has nothing to compare: ``[]``."""
    if not is_distributed():
        return []
    prints = all_gather_object(fingerprint(params))
    if len(set(prints)) > 1:
        raise RuntimeError(f"the ranks' {what} differ (fingerprints {prints}): gradients were not averaged")
    return prints
