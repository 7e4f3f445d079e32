"""Several processes computing one statistic: the process group torchrun sets up, and the sums.

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in the environment), each
process streams its share of the corpus and the sums of k kᵀ and the counts are added with
``all_reduce``: gloo on CPUs, nccl on GPUs (one per process, ``cuda:LOCAL_RANK``). The sums are
float64, so the result differs from one process's only by the order of float64 additions; Σ is stored
as float32, where that difference almost never shows (the tests find the same object id).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def world() -> tuple[int, int]:
    """(rank, number of processes): (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA under torchrun, ``device`` otherwise."""
    if device.type == "cuda" and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration (a no-op for a single process or one already joined)."""
    import torch.distributed as dist

    if world()[1] == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_reduce_sums(sums: list[torch.Tensor], counts: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    """Every process's sums (float64) and counts added up, the same on every process."""
    import torch.distributed as dist

    for s in sums:
        dist.all_reduce(s)  # (d_in, d_in), in place
    total = torch.tensor(counts, dtype=torch.int64, device=sums[0].device)
    dist.all_reduce(total)
    return sums, [int(n) for n in total.tolist()]


def barrier() -> None:
    """Wait for every process (a no-op for one)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
