"""Losses over MaxSim scores: contrastive (own and in-batch negatives) and distillation (KL to a teacher)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ContrastiveOutput:
    """The loss and its parts, each a scalar tensor (means over the queries).

    ``loss = positive_term + logsumexp_term``, where ``positive_term`` is ``-S(q, d+)/T`` and
    ``logsumexp_term`` is ``log(e^{S(q,d+)/T} + sum_{d in N} e^{S(q,d)/T})``.
    """

    loss: torch.Tensor
    positive_term: torch.Tensor
    logsumexp_term: torch.Tensor
    positive_score: torch.Tensor
    negative_score: torch.Tensor
    accuracy: torch.Tensor


def contrastive_loss(
    scores: torch.Tensor,
    positive_column: torch.Tensor,
    candidate_mask: torch.Tensor,
    temperature: float = 1.0,
    normaliser: float | None = None,
) -> ContrastiveOutput:
    """Cross-entropy of each query's positive against its negative set.

    L_i = -log e^{S(q_i,d_i+)/T} / (e^{S(q_i,d_i+)/T} + sum_{d in N_i} e^{S(q_i,d)/T})

    Parameters
    ----------
    scores: (B, M) float scores of B queries against M documents.
    positive_column: (B,) long, the column of each query's positive.
    candidate_mask: (B, M) bool, True for the positive and for every document in N_i. Columns
        that are False (documents outside the query's negative set, or other copies of the
        query's known positives) take no part.
    temperature: T, scores are divided by it.
    normaliser: the loss is ``sum_i L_i / normaliser`` (default B). Distributed training passes
        the global batch size divided by the world size, so averaged gradients match one process.

    Returns
    -------
    ContrastiveOutput with the loss and its logged parts.
    """
    batch = scores.shape[0]
    rows = torch.arange(batch, device=scores.device)
    # (checked on the host only: on a GPU the check would make every step wait for the forward
    # pass before queueing the backward; candidate_mask_for_batch always sets those columns)
    if not scores.is_cuda and not bool(candidate_mask[rows, positive_column].all()):
        raise ValueError("candidate_mask must be True at each query's positive column")
    logits = scores.float() / temperature
    masked = logits.masked_fill(~candidate_mask, float("-inf"))
    positive = logits[rows, positive_column]
    lse = torch.logsumexp(masked, dim=1)
    per_query = lse - positive
    norm = float(batch if normaliser is None else normaliser)
    negatives = candidate_mask.clone()
    negatives[rows, positive_column] = False
    n_neg = negatives.sum().clamp(min=1)
    best_negative = masked.masked_fill(~negatives, float("-inf")).max(dim=1).values
    loss = per_query.sum() / norm
    with torch.no_grad():
        return ContrastiveOutput(
            loss=loss,
            positive_term=(-positive).mean().detach(),
            logsumexp_term=lse.mean().detach(),
            positive_score=scores[rows, positive_column].float().mean().detach(),
            negative_score=(scores.float() * negatives).sum().detach() / n_neg,
            accuracy=(positive > best_negative).float().mean().detach(),
        )


def candidate_mask_for_batch(
    document_ids: torch.Tensor,
    positive_ids: list[set[int]],
    query_offset: int,
    nway: int,
    use_ib_negatives: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which documents of a batch each query is scored against.

    The batch holds ``nway`` documents per query, query ``g`` (global index) owning columns
    ``g*nway`` (its positive) to ``g*nway + nway - 1`` (its own negatives).

    Parameters
    ----------
    document_ids: (M,) long, corpus index of each document in the (global) batch.
    positive_ids: for each local query, the corpus indices of all its known positives.
    query_offset: global index of the first local query.
    nway: documents per query.
    use_ib_negatives: whether other queries' documents join the negative set.

    Returns
    -------
    (positive_column (B,), candidate_mask (B, M) bool). A document that is one of the query's
    known positives is masked out everywhere except at the query's own positive column.
    """
    n_local = len(positive_ids)
    n_docs = document_ids.shape[0]
    device = document_ids.device
    positive_column = (torch.arange(n_local, device=device) + query_offset) * nway
    if use_ib_negatives:
        mask = torch.ones(n_local, n_docs, dtype=torch.bool, device=device)
    else:
        own = torch.arange(n_docs, device=device)[None, :] // nway
        mask = own == (torch.arange(n_local, device=device)[:, None] + query_offset)
    width = max((len(p) for p in positive_ids), default=0)
    if width:  # (B, P) known positives padded with -1 (no corpus index), one copy to the device
        known = torch.tensor([sorted(p) + [-1] * (width - len(p)) for p in positive_ids], dtype=document_ids.dtype)
        if device.type == "cuda":  # pinned, so the copy does not wait for the GPU to drain
            known = known.pin_memory()
        known = known.to(device, non_blocking=True)
        mask &= ~(document_ids[None, None, :] == known[:, :, None]).any(dim=1)
    mask[torch.arange(n_local, device=device), positive_column] = True
    return positive_column, mask


def distillation_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    teacher_temperature: float = 1.0,
    normaliser: float | None = None,
) -> torch.Tensor:
    """KL(teacher || student) over each query's candidate list.

    KL_i = sum_j p_ij (log p_ij - log s_ij), with p_i = softmax(teacher_i / teacher_temperature)
    and s_i = softmax(student_i), over the candidates that ``mask`` keeps (padding takes no part).
    The loss is ``sum_i KL_i / normaliser`` (default B): PyLate's Distillation loss without its
    min-max normalisation of the student scores, and colbert-ai's with ``distillation_alpha =
    1 / teacher_temperature``.

    student_scores, teacher_scores: (B, n) float; mask: (B, n) bool, True for a real candidate.

    >>> distillation_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]])).item()
    0.0
    """
    if mask is None:
        mask = torch.ones_like(student_scores, dtype=torch.bool)
    student = torch.log_softmax(student_scores.float().masked_fill(~mask, float("-inf")), dim=1)
    teacher = torch.log_softmax((teacher_scores.float() / teacher_temperature).masked_fill(~mask, float("-inf")), dim=1)
    terms = torch.where(mask, teacher.exp() * (teacher - student), torch.zeros_like(student))
    norm = float(student_scores.shape[0] if normaliser is None else normaliser)
    return terms.sum() / norm
