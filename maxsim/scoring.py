"""MaxSim: the late-interaction score, in one place for training, evaluation and search.

For a query with token vectors ``q_i`` and a document with token vectors ``d_j``::

    S(q, d) = sum_i  max_j  <q_i, d_j>

over the query tokens that take part (``query_mask``) and the document tokens that take part
(``document_mask``). Document positions outside the mask are set to ``-inf`` before the max, so a
padded or punctuation position can never win (multiplying by zero would let a 0 beat a negative
similarity). The per-token maxima are summed in float32 whatever the input dtype, so bf16
activations do not lose precision in the sum.
"""

from __future__ import annotations

import torch

#: Upper bound on the number of elements of the (queries, Lq, documents, Ld) similarity block
#: computed at once; larger inputs are processed in document chunks. On a CPU a block that
#: stays in cache is fastest (8M elements measured best on a 2-core Xeon); on a GPU larger
#: blocks mean fewer kernel launches.
BLOCK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 28}
#: Above this many (query token, document) pairs, a MaxSim that needs gradients recomputes its
#: blocks in backward (:class:`_MaxSim`) rather than keep autograd's argmax indices and maxima
#: (about 12 bytes a pair: 0.4 GB here, gigabytes for batches of thousands); below it, autograd's
#: own backward is faster (on an H100, batch 256 trained at 1,819 and 2,070 triplets/s in two
#: runs without the recomputation, 1,618 with it: ``bench/grad_cache_memory.py``).
RECOMPUTE_ABOVE = 1 << 25


def _token_maxima(
    queries: torch.Tensor, documents: torch.Tensor, document_mask: torch.Tensor
) -> torch.Tensor:
    """Best document-token similarity for each query token.

    queries: (Q, Lq, dim); documents: (D, Ld, dim); document_mask: (D, Ld) bool.
    Returns (Q, Lq, D) in the input dtype. A document with no valid token gives 0.
    """
    n_q, len_q, dim = queries.shape
    n_d, len_d, _ = documents.shape
    # one (Q*Lq, dim) @ (dim, D*Ld) matmul; the result is already laid out as (Q, Lq, D, Ld)
    sim = (queries.reshape(n_q * len_q, dim) @ documents.reshape(n_d * len_d, dim).T).view(n_q, len_q, n_d, len_d)
    if torch.is_grad_enabled() and (queries.requires_grad or documents.requires_grad):
        sim = sim.masked_fill(~document_mask[None, None], float("-inf"))
    else:
        sim.masked_fill_(~document_mask[None, None], float("-inf"))  # no copy when nothing needs gradients
    # ``max`` (not ``amax``) keeps only the argmax indices for backward, so the 4-D block is
    # freed as soon as this chunk is done, even when gradients are needed.
    best = sim.max(dim=-1).values
    return torch.where(torch.isneginf(best), torch.zeros_like(best), best)


def maxsim(
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    documents: torch.Tensor,
    document_mask: torch.Tensor,
    block_elements: int | None = None,
) -> torch.Tensor:
    """Score every query against every document.

    Parameters
    ----------
    queries: (Q, Lq, dim) token vectors (normally L2-normalised).
    query_mask: (Q, Lq) bool, True where a query token takes part.
    documents: (D, Ld, dim) token vectors.
    document_mask: (D, Ld) bool, True where a document token takes part.
    block_elements: most elements of the (Q, Lq, D_chunk, Ld) similarity block held at once
        (default: :data:`BLOCK_ELEMENTS` for the device).

    Returns
    -------
    (Q, D) float32 scores.

    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> d = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    >>> maxsim(q, torch.ones(1, 2, dtype=torch.bool), d, torch.ones(1, 2, dtype=torch.bool))
    tensor([[1.8000]])
    """
    n_q, len_q, _ = queries.shape
    n_d, len_d, _ = documents.shape
    if block_elements is None:
        block_elements = BLOCK_ELEMENTS.get(queries.device.type, 1 << 25)
    chunk = max(1, block_elements // max(1, n_q * len_q * len_d))
    needs_grad = torch.is_grad_enabled() and (queries.requires_grad or documents.requires_grad)
    if needs_grad and n_q * len_q * n_d > RECOMPUTE_ABOVE:
        return _MaxSim.apply(queries, query_mask, documents, document_mask, chunk)
    return _scores(queries, query_mask, documents, document_mask, chunk)


def _scores(queries: torch.Tensor, query_mask: torch.Tensor, documents: torch.Tensor, document_mask: torch.Tensor,
            chunk: int) -> torch.Tensor:
    """(Q, D) float32 scores, ``chunk`` documents at a time."""
    qmask = query_mask.to(torch.float32)[:, :, None]  # (Q, Lq, 1)
    parts = []
    for start in range(0, documents.shape[0], chunk):
        best = _token_maxima(
            queries, documents[start : start + chunk], document_mask[start : start + chunk]
        )
        parts.append((best.float() * qmask).sum(dim=1))
    if not parts:
        return queries.new_zeros((queries.shape[0], 0), dtype=torch.float32)
    return torch.cat(parts, dim=1)


class _MaxSim(torch.autograd.Function):
    """MaxSim whose backward recomputes each block instead of keeping it: memory holds the inputs
    and one (Q, Lq, D_chunk, Ld) block, whatever the batch (autograd's own backward of ``max``
    would keep (Q, Lq, D) argmax indices and values, gigabytes for thousands of in-batch
    documents). The gradient is the same: each query token's gradient goes to its best document
    token, through the same two products as autograd's."""

    @staticmethod
    def forward(ctx, queries, query_mask, documents, document_mask, chunk):
        ctx.save_for_backward(queries, query_mask, documents, document_mask)
        ctx.chunk = chunk
        with torch.no_grad():
            return _scores(queries, query_mask, documents, document_mask, chunk)

    @staticmethod
    def backward(ctx, grad):
        queries, query_mask, documents, document_mask = ctx.saved_tensors
        n_q, len_q, dim = queries.shape
        len_d = documents.shape[1]
        grad_q = torch.zeros_like(queries) if ctx.needs_input_grad[0] else None
        grad_d = torch.zeros_like(documents) if ctx.needs_input_grad[2] else None
        qmask = query_mask.to(grad.dtype)[:, :, None]  # (Q, Lq, 1)
        flat_q = queries.reshape(n_q * len_q, dim)
        for start in range(0, documents.shape[0], ctx.chunk):
            block = documents[start : start + ctx.chunk]
            n_d = block.shape[0]
            sim = (flat_q @ block.reshape(n_d * len_d, dim).T).view(n_q, len_q, n_d, len_d)
            sim.masked_fill_(~document_mask[start : start + ctx.chunk][None, None], float("-inf"))
            best, where = sim.max(dim=-1)  # (Q, Lq, n_d)
            weight = (grad[:, None, start : start + n_d] * qmask).masked_fill(torch.isneginf(best), 0)
            # d score / d sim: the weight at each query token's best document token, 0 elsewhere
            d_sim = sim.zero_().scatter_(-1, where[..., None], weight.to(sim.dtype)[..., None])
            d_sim = d_sim.view(n_q * len_q, n_d * len_d)
            if grad_q is not None:
                grad_q += (d_sim @ block.reshape(n_d * len_d, dim)).view(n_q, len_q, dim)
            if grad_d is not None:
                grad_d[start : start + n_d] += (d_sim.T @ flat_q).view(n_d, len_d, dim)
        return grad_q, None, grad_d, None, None


def maxsim_packed(
    query: torch.Tensor,
    query_mask: torch.Tensor,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    token_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same MaxSim for one query against documents stored back to back, without padding.

    Search decompresses candidate documents from an index as one (T, dim) block; scoring it in
    place skips building a padded (n, Ld, dim) copy. Equal to :func:`maxsim` on the padded form.

    query: (Lq, dim); query_mask: (Lq,) bool; tokens: (T, dim), document after document;
    lengths: (n,) int64 tokens per document, summing to T; token_scale: optional (T,) factor
    applied to each token's similarities (``1 / norm`` scores unnormalised vectors as if they
    were unit vectors). Returns (n,) float32; a document with no token scores 0.
    """
    sim = tokens @ query[query_mask].T  # (T, Lq')
    if token_scale is not None:
        sim = sim * token_scale[:, None]
    return segment_maxsim(sim, lengths)


def segment_maxsim(similarities: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """MaxSim from token similarities of documents stored back to back.

    similarities: (T, Lq) of each document token with each query token, document after
    document; lengths: (n,) int64 tokens per document, summing to T. Returns (n,) float32: each
    document's sum over query tokens of its best token's similarity (0 for a document with no
    tokens).
    """
    document = torch.repeat_interleave(torch.arange(len(lengths), device=similarities.device), lengths)  # (T,)
    return scatter_max(similarities.float(), document, len(lengths)).sum(dim=1)


def scatter_max(values: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """Row-wise maxima by target: (E, L) values, (E,) int64 targets in [0, n) -> (n, L), with 0
    where no row reaches a target (as a document with no valid token scores 0 in MaxSim)."""
    best = torch.full((n, values.shape[1]), float("-inf"), dtype=values.dtype, device=values.device)
    best.scatter_reduce_(0, target[:, None].expand(-1, values.shape[1]), values, "amax")
    return torch.where(torch.isneginf(best), torch.zeros_like(best), best)
