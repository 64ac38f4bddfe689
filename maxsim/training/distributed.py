"""torch.distributed helpers for training: gathers with gradients, gradient averaging (the process
group itself: :mod:`maxsim.process_group`).

Launch with torchrun (``torchrun --nproc_per_node 2 -m maxsim train ...``); a plain process is
world size 1 and none of this talks to anything.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from maxsim.process_group import Context, setup, teardown  # noqa: F401 - the trainer takes them from here


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor)
        ctx.rank = dist.get_rank()
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


def gather_documents(
    context: Context, vectors: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's documents, in rank order, keeping gradients to each rank's own vectors.

    vectors: (n_r, L_r, dim); mask: (n_r, L_r) bool; ids: (n_r,) long. Ranks may hold different
    counts and lengths. Returns (sum n_r, max L_r, dim), (sum n_r, max L_r), (sum n_r,).
    """
    if not context.distributed:
        return vectors, mask, ids
    shape = torch.tensor(vectors.shape[:2], device=vectors.device)
    shapes = [torch.empty_like(shape) for _ in range(context.world_size)]
    dist.all_gather(shapes, shape)
    counts = [int(s[0]) for s in shapes]
    n_max, l_max = max(counts), max(int(s[1]) for s in shapes)
    pad_n, pad_l = n_max - vectors.shape[0], l_max - vectors.shape[1]
    vectors = torch.nn.functional.pad(vectors, (0, 0, 0, pad_l, 0, pad_n))
    mask = torch.nn.functional.pad(mask, (0, pad_l, 0, pad_n), value=False)
    ids = torch.nn.functional.pad(ids, (0, pad_n), value=-1)
    all_vectors = _GatherWithGrad.apply(vectors)
    all_masks = [torch.empty_like(mask) for _ in counts]
    all_ids = [torch.empty_like(ids) for _ in counts]
    dist.all_gather(all_masks, mask)
    dist.all_gather(all_ids, ids)
    return (
        torch.cat([all_vectors[r, :n] for r, n in enumerate(counts)]),
        torch.cat([all_masks[r][:n] for r, n in enumerate(counts)]),
        torch.cat([all_ids[r][:n] for r, n in enumerate(counts)]),
    )


def average_gradients(context: Context, parameters: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks in one flat all_reduce (a no-op for one process)."""
    if not context.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= context.world_size
    for grad, synced in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(synced.view_as(grad))


def all_sum(context: Context, values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (for logging)."""
    if context.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def broadcast_object(context: Context, value):
    """Rank 0's value on every rank."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
