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
    qmask = query_mask.to(torch.float32)[:, :, None]  # (Q, Lq, 1)
    parts = []
    for start in range(0, n_d, chunk):
        best = _token_maxima(
            queries, documents[start : start + chunk], document_mask[start : start + chunk]
        )
        parts.append((best.float() * qmask).sum(dim=1))
    if not parts:
        return queries.new_zeros((n_q, 0), dtype=torch.float32)
    return torch.cat(parts, dim=1)



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
    document = torch.repeat_interleave(torch.arange(len(lengths), device=tokens.device), lengths)  # (T,)
    return scatter_max(sim.float(), document, len(lengths)).sum(dim=1)


def scatter_max(values: torch.Tensor, target: torch.Tensor, n: int) -> torch.Tensor:
    """Row-wise maxima by target: (E, L) values, (E,) int64 targets in [0, n) -> (n, L), with 0
    where no row reaches a target (as a document with no valid token scores 0 in MaxSim)."""
    best = torch.full((n, values.shape[1]), float("-inf"), dtype=values.dtype, device=values.device)
    best.scatter_reduce_(0, target[:, None].expand(-1, values.shape[1]), values, "amax")
    return torch.where(torch.isneginf(best), torch.zeros_like(best), best)
