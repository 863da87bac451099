"""The same scripts run alone or under `torchrun`: process group set-up, sharding and merging.

    with distributed_context() as dist_info:        # gloo on CPU, NCCL on GPU; no-op when alone
        shard = shard_items(items, dist_info)        # this rank's share of a cohort
        merged = gather_to_rank0(results, dist_info) # rank 0 gets every rank's results
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextlib.contextmanager
def distributed_context(device: str = "auto", timeout_s: float = 600) -> Iterator[DistInfo]:
    """Initialise the process group when launched by torchrun (else a single-process DistInfo)."""
    want_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not launched_by_torchrun():
        yield DistInfo(device=torch.device("cuda" if want_cuda else "cpu" if device == "auto" else device))
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield DistInfo(rank, world, local, dev)
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def shard_items(items: Sequence[T], info: DistInfo) -> list[T]:
    """Round-robin share of `items` for this rank (every item on exactly one rank)."""
    return list(items[info.rank::info.world_size])


def gather_to_rank0(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (a list by rank), None elsewhere."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
