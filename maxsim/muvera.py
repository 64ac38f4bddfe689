"""MUVERA fixed-dimensional encodings (Dhulipala et al., 2024, arXiv 2405.19504): one vector
per query and per document whose inner product approximates their MaxSim (Chamfer) score, for
a single-vector first stage (an HNSW search) before exact MaxSim on the candidates.

For each of ``repetitions`` independent draws:

- SimHash partitions: ``k_sim`` Gaussian vectors ``g_1..g_k``; a token ``x`` falls in partition
  ``phi(x) = sum_i [<g_i, x> > 0] * 2**(i-1)``, one of ``B = 2**k_sim``;
- each partition's block: for a query, the *sum* of its tokens there; for a document, their
  *mean*; a document partition with no token takes the token whose partition is nearest in
  Hamming distance to it (the paper's fill_empty_clusters; queries leave empty blocks 0);
- the inner projection: each block is multiplied by a random ``(d_proj, dim)`` matrix of
  ``+-1 / sqrt(d_proj)`` (none when ``d_proj == dim``).

The encoding is the blocks of every partition of every repetition, back to back:
``repetitions * 2**k_sim * d_proj`` values. (The paper's optional final projection is not
applied.) The same ``seed`` gives the same encoding on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Muvera:
    """The encoder for ``dim``-dimensional token vectors (shapes: the module docstring)."""

    dim: int
    k_sim: int = 4
    d_proj: int = 16
    repetitions: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1 or not 0 <= self.k_sim <= 16 or not 1 <= self.d_proj <= self.dim or self.repetitions < 1:
            raise ValueError(f"MUVERA needs dim >= 1, 0 <= k_sim <= 16, 1 <= d_proj <= dim and repetitions >= 1, "
                             f"got dim {self.dim}, k_sim {self.k_sim}, d_proj {self.d_proj}, "
                             f"repetitions {self.repetitions}")

    @property
    def partitions(self) -> int:
        return 1 << self.k_sim

    @property
    def output_dim(self) -> int:
        return self.repetitions * self.partitions * self.d_proj

    @cached_property
    def _draws(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(gaussians (R, k_sim, dim) float64, projections (R, d_proj, dim) float64 or None)."""
        rng = np.random.default_rng(self.seed)
        gaussians = rng.standard_normal((self.repetitions, self.k_sim, self.dim))
        if self.d_proj == self.dim:
            return gaussians, None
        signs = rng.integers(0, 2, size=(self.repetitions, self.d_proj, self.dim)) * 2 - 1
        return gaussians, signs / np.sqrt(self.d_proj)

    def partition_of(self, vectors: np.ndarray) -> np.ndarray:
        """(R, n) int64 the partition of each of ``vectors`` (n, dim) in each repetition."""
        gaussians, _ = self._draws
        bits = np.einsum("rkd,nd->rnk", gaussians, np.asarray(vectors, dtype=np.float64)) > 0
        return (bits * (1 << np.arange(self.k_sim))).sum(axis=2).astype(np.int64)

    def encode_query(self, vectors: np.ndarray) -> np.ndarray:
        """(output_dim,) float32 of a query's token vectors (n, dim)."""
        return self._encode(vectors, query=True)

    def encode_document(self, vectors: np.ndarray) -> np.ndarray:
        """(output_dim,) float32 of a document's token vectors (n, dim), n >= 1."""
        return self._encode(vectors, query=False)

    def _encode(self, vectors: np.ndarray, query: bool) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, self.dim)
        _, projections = self._draws
        where = self.partition_of(vectors)
        out = np.zeros((self.repetitions, self.partitions, self.d_proj), dtype=np.float64)
        for r in range(self.repetitions):
            blocks = np.zeros((self.partitions, self.dim))
            np.add.at(blocks, where[r], vectors)
            if not query:
                counts = np.bincount(where[r], minlength=self.partitions)
                held = counts > 0
                blocks[held] /= counts[held, None]
                if len(vectors) and not held.all():
                    empty = np.flatnonzero(~held)
                    # Hamming distance between each empty partition's bits and each token's
                    distance = _popcount(empty[:, None] ^ where[r][None, :])
                    blocks[empty] = vectors[distance.argmin(axis=1)]
            out[r] = blocks if projections is None else blocks @ projections[r].T
        return out.reshape(-1).astype(np.float32)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each of ``values`` (non-negative int64 below 2**16)."""
    values = np.asarray(values, dtype=np.int64)
    count = np.zeros(values.shape, dtype=np.int64)
    for bit in range(16):
        count += (values >> bit) & 1
    return count
