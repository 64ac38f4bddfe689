"""Turning a checked training folder into batches: order, shards, sampling and padding.

Every text is tokenised once (:class:`TokenCache`); a batch is padded from cached ids. Which
positive and which negatives an example contributes in an epoch depends only on
``(seed, epoch, example)``, so every rank and every resumed run draws the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from maxsim.data.training_folder import TrainingData
from maxsim.model import ColBERT, TokenBatch


def epoch_order(n_examples: int, seed: int, epoch: int) -> np.ndarray:
    """A fresh permutation of the examples for each epoch, the same on every rank."""
    return np.random.default_rng([seed, epoch]).permutation(n_examples)


def global_batches(order: np.ndarray, batch_size: int, world_size: int = 1) -> list[np.ndarray]:
    """Cut an epoch's order into global batches of ``batch_size`` (the last may be smaller).

    A final batch with fewer examples than there are ranks is dropped.
    """
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if batches and len(batches[-1]) < world_size:
        batches.pop()
    return batches


def micro_batches(batch: np.ndarray, accumulation_steps: int, world_size: int) -> list[np.ndarray]:
    """Split a global batch into accumulation steps, each still holding one example per rank."""
    n = max(1, min(accumulation_steps, len(batch) // world_size))
    return np.array_split(batch, n)


def shard(micro_batch: np.ndarray, rank: int, world_size: int) -> tuple[np.ndarray, int]:
    """This rank's contiguous part of a micro-batch, and its offset in the micro-batch.

    The parts of all ranks are disjoint and together cover the micro-batch, in order.
    """
    parts = np.array_split(micro_batch, world_size)
    offset = sum(len(p) for p in parts[:rank])
    return parts[rank], offset


def sample_documents(
    data: TrainingData, example_index: int, nway: int, seed: int, epoch: int
) -> list[int]:
    """The documents an example contributes in an epoch: one positive, then ``nway - 1`` negatives."""
    example = data.examples[example_index]
    rng = np.random.default_rng([seed, epoch, int(example_index)])
    positive = example.positives[int(rng.integers(len(example.positives)))]
    chosen = rng.choice(len(example.negatives), size=nway - 1, replace=False) if nway > 1 else []
    return [positive] + [example.negatives[int(i)] for i in chosen]


class TokenCache:
    """Token ids of every query and every document the examples use, tokenised once."""

    def __init__(self, model: ColBERT, data: TrainingData) -> None:
        used_queries = sorted({ex.query for ex in data.examples})
        used_docs = sorted({d for ex in data.examples for d in ex.positives + ex.negatives})
        self.queries = dict(zip(used_queries, model.tokenize_queries(
            [data.queries.texts[i] for i in used_queries])))
        self.documents = dict(zip(used_docs, model.tokenize_documents(
            [data.corpus.texts[i] for i in used_docs])))


@dataclass
class TrainBatch:
    """One rank's share of a micro-batch.

    queries: padded query tokens, (b, query_maxlen).
    documents: padded document tokens, (b * nway, Ld); query i owns rows i*nway .. i*nway+nway-1,
        its positive first.
    document_ids: (b * nway,) long, corpus positions of those documents.
    positives: for each query, the corpus positions of all its known positives.
    teacher_scores: (b, nway) float32, the teacher's score of each query's documents, in the
        same order, when the training data carries scores; else None.
    """

    queries: TokenBatch
    documents: TokenBatch
    document_ids: torch.Tensor
    positives: list[set[int]]
    teacher_scores: torch.Tensor | None = None

    def n_tokens(self) -> int:
        return int(self.queries.attention_mask.sum() + self.documents.attention_mask.sum())

    def pin_memory(self) -> TrainBatch:
        """The same batch with its tensors in page-locked host memory (for asynchronous copies to a GPU)."""
        return TrainBatch(self.queries.pin_memory(), self.documents.pin_memory(), self.document_ids.pin_memory(),
                          self.positives, None if self.teacher_scores is None else self.teacher_scores.pin_memory())


def build_batch(
    model: ColBERT,
    data: TrainingData,
    cache: TokenCache,
    positives_of: dict[int, set[int]],
    example_indices: np.ndarray,
    nway: int,
    seed: int,
    epoch: int,
) -> TrainBatch:
    """Pad the cached tokens of some examples into a :class:`TrainBatch`."""
    query_tokens, doc_tokens, doc_ids, positives, teacher = [], [], [], [], []
    for index in example_indices:
        example = data.examples[int(index)]
        docs = sample_documents(data, int(index), nway, seed, epoch)
        query_tokens.append(cache.queries[example.query])
        doc_tokens.extend(cache.documents[d] for d in docs)
        doc_ids.extend(docs)
        positives.append(positives_of[example.query])
        if example.scores is not None:
            teacher.append([example.scores[d] for d in docs])
    return TrainBatch(
        queries=model.pad_queries(query_tokens),
        documents=model.pad_documents(doc_tokens),
        document_ids=torch.tensor(doc_ids, dtype=torch.long),
        positives=positives,
        teacher_scores=torch.tensor(teacher, dtype=torch.float32) if teacher else None,
    )


def step_batches(
    build: Callable[[np.ndarray], TrainBatch],
    batches: list[np.ndarray],
    steps: Iterable[int],
    accumulation_steps: int,
    rank: int,
    world_size: int,
    pin: bool = False,
) -> Iterator[tuple[int, list[tuple[TrainBatch, int]]]]:
    """For each step (an index into ``batches``, the global batches of an epoch): the index and
    this rank's micro-batches, each padded by ``build`` from its example indices (pinned for a
    GPU with ``pin``) and paired with the micro-batch position of its first query."""
    for index in steps:
        inputs = []
        for micro in micro_batches(batches[index], accumulation_steps, world_size):
            local, offset = shard(micro, rank, world_size)
            batch = build(local)
            inputs.append((batch.pin_memory() if pin else batch, offset))
        yield index, inputs
