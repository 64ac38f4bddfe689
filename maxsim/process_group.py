"""The processes of one command under torchrun: which rank this is, of how many, on which
device, and joining or leaving their process group. A plain process is world size 1 and none
of this talks to anything. (Training's gathers live in :mod:`maxsim.training.distributed`.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    #: whether :func:`setup` started the process group (then :func:`teardown` ends it; a group
    #: the caller started is left to the caller)
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Join the process group that torchrun describes in the environment, if any.

    ``device`` is ``auto`` (CUDA where present, else CPU), ``cpu`` or ``cuda``. NCCL is used
    on CUDA, gloo on CPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device(device)
    owns = world_size > 1 and not dist.is_initialized()
    if owns:
        # rank 0 validates alone while the others wait: allow for a long evaluation
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo",
                                timeout=timedelta(hours=2))
    return Context(rank=rank, world_size=world_size, device=torch_device, owns_group=owns)


def teardown(context: Context, completed: bool = True) -> None:
    """Leave the process group. After a ``completed`` run every rank first waits for the others
    (a rank that destroys its group while another still talks to it, e.g. while rank 0 saves, can
    make gloo abort the process at exit); after an error it leaves at once, as the others may be
    gone."""
    if context.distributed and context.owns_group and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def joined(device: str = "auto") -> Iterator[Context]:
    """:func:`setup`, then :func:`teardown` when the block ends: completed (every rank waits for
    the others before leaving) when it returns, at once when it raises."""
    context = setup(device)
    completed = False
    try:
        yield context
        completed = True
    finally:
        teardown(context, completed)


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def barrier(context: Context) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if context.distributed and dist.is_initialized():
        dist.barrier()
