"""GradCache: a batch of any size in the memory of a chunk (Gao et al., 2021).

The loss of a contrastive batch needs every query's and document's vectors at once, but not
their graphs. So (1) every chunk of ``chunk`` sequences is encoded without a graph, keeping only
its vectors and the random state it started from; (2) the loss is computed from those vectors
made leaves, and back-propagated to them alone; (3) each chunk is encoded again, with a graph and
the same random state (the same dropout), and back-propagated with its vectors' gradients. The
gradients are those of the whole batch at once; memory holds one chunk's graph, plus (B, L, dim)
vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

from maxsim.model import ColBERT, TokenBatch

RngState = tuple[torch.Tensor, torch.Tensor | None]


def _rng_state(device: torch.device) -> RngState:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def _replayed(state: RngState, device: torch.device):
    """Run the block from ``state`` (CPU and CUDA generators), then put the streams back."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _chunks(batch: TokenBatch, chunk: int):
    for start in range(0, batch.input_ids.shape[0], chunk):
        yield slice(start, start + chunk)


def encode_without_graph(model: ColBERT, batch: TokenBatch, chunk: int,
                         autocast: Callable) -> tuple[torch.Tensor, list[RngState]]:
    """(vectors (B, L, dim), the random state each chunk started from); no graph is kept."""
    device = batch.input_ids.device
    states, parts = [], []
    with torch.no_grad():
        for rows in _chunks(batch, chunk):
            states.append(_rng_state(device))
            with autocast():
                parts.append(model(batch.input_ids[rows], batch.attention_mask[rows]))
    return torch.cat(parts), states


def backward_through_chunks(model: ColBERT, batch: TokenBatch, chunk: int, grads: torch.Tensor,
                            states: list[RngState], autocast: Callable) -> None:
    """Encode each chunk again with a graph and the random state it had, and back-propagate
    ``grads`` (B, L, dim), the loss's gradient with respect to the vectors, through it."""
    device = batch.input_ids.device
    for rows, state in zip(_chunks(batch, chunk), states):
        with _replayed(state, device), autocast():
            vectors = model(batch.input_ids[rows], batch.attention_mask[rows])
        vectors.backward(grads[rows].to(vectors.dtype))
