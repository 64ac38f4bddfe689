"""How token vectors are compressed: k-means centroids and a residual quantiser.

Every token vector is stored as the id of its nearest centroid plus its residual (vector minus
centroid) quantised to ``nbits`` per dimension: bucket cutoffs are quantiles of all residual
values, and each bucket decodes to the median of its values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from maxsim.model import cpu_computes_bf16


def n_centroids_for(n_tokens: int) -> int:
    """``2 ** floor(log2(16 * sqrt(n_tokens)))``, as PLAID, never more than the tokens.

    >>> n_centroids_for(815_000), n_centroids_for(100), n_centroids_for(1)
    (8192, 100, 1)
    """
    if n_tokens <= 1:
        return 1
    return int(min(n_tokens, 2 ** math.floor(math.log2(16 * math.sqrt(n_tokens)))))


def train_centroids(vectors: np.ndarray, k: int, seed: int = 0, max_points_per_centroid: int = 16,
                    niter: int = 4) -> np.ndarray:
    """Spherical k-means (faiss) over at most ``k * max_points_per_centroid`` sampled vectors.

    The cost is about ``2 * sample * k * dim * niter`` flops: on SciFact (815k tokens, 8,192
    centroids) 64 points per centroid and 20 iterations took 10 minutes on 2 cores; these
    defaults (16 points, 4 iterations, as colbert-ai's kmeans_niters) take about a twentieth.

    vectors: (T, dim) float32 unit vectors. Returns (k, dim) float32 unit vectors.
    """
    import faiss

    rng = np.random.default_rng(seed)
    sample = vectors
    if len(vectors) > k * max_points_per_centroid:
        sample = vectors[np.sort(rng.choice(len(vectors), k * max_points_per_centroid, replace=False))]
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=max_points_per_centroid)
    kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
    return kmeans.centroids.astype(np.float32)


def nearest_centroids(vectors: np.ndarray, centroids: np.ndarray, batch: int = 1 << 15,
                      dtype: torch.dtype | None = None) -> np.ndarray:
    """Id of the most similar centroid (inner product) for each vector: (T,) int32.

    ``dtype``: of the similarity product; default bf16 where the CPU multiplies bf16 natively
    (several times faster; only near-ties can change, which changes a residual by next to
    nothing), else float32.
    """
    if dtype is None:
        dtype = torch.bfloat16 if cpu_computes_bf16() else torch.float32
    out = np.empty(len(vectors), dtype=np.int32)
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(dtype)
    for start in range(0, len(vectors), batch):
        v = torch.from_numpy(np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)).to(dtype)
        sim = v @ c.T
        # (on this kind of CPU, max().indices is faster than argmax() in bf16, and slower in float32)
        out[start : start + batch] = (sim.max(dim=1).indices if dtype == torch.bfloat16 else sim.argmax(dim=1)).numpy()
    return out


@dataclass
class Codec:
    """Residual quantiser: ``cutoffs`` (2**nbits - 1,) and ``values`` (2**nbits,) float32."""

    nbits: int
    cutoffs: np.ndarray
    values: np.ndarray

    @classmethod
    def fit(cls, residuals: np.ndarray, nbits: int, sample: int = 1 << 22, seed: int = 0) -> Codec:
        """Cutoffs and values from the quantiles of (at most ``sample``) residual values."""
        levels = 2**nbits
        flat = residuals.reshape(-1)
        if len(flat) > sample:
            flat = flat[np.random.default_rng(seed).choice(len(flat), sample, replace=False)]
        cutoffs = np.quantile(flat, np.arange(1, levels) / levels).astype(np.float32)
        values = np.quantile(flat, (np.arange(levels) + 0.5) / levels).astype(np.float32)
        return cls(nbits, cutoffs, values)

    def encode(self, residuals: np.ndarray) -> np.ndarray:
        """(T, dim) float residuals -> (T, dim * nbits / 8) uint8 packed bucket ids."""
        buckets = np.searchsorted(self.cutoffs, residuals, side="right").astype(np.uint8)  # (T, dim)
        bits = ((buckets[..., None] >> np.arange(self.nbits, dtype=np.uint8)) & 1).astype(np.uint8)
        return np.packbits(bits.reshape(len(residuals), -1), axis=1)

    def decode(self, packed: np.ndarray, dim: int) -> np.ndarray:
        """(T, dim * nbits / 8) uint8 -> (T, dim) float32 residuals, one table lookup per byte."""
        return self.table[packed].reshape(len(packed), -1)[:, :dim]

    @cached_property
    def table(self) -> np.ndarray:
        """(256, 8 / nbits) float32: the residual values that each byte value holds."""
        per_byte = 8 // self.nbits
        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).reshape(256, per_byte, self.nbits)
        buckets = (bits << np.arange(self.nbits, dtype=np.uint8)).sum(axis=2)
        return self.values[buckets].astype(np.float32)

    def to_array(self) -> np.ndarray:
        return np.concatenate([self.cutoffs, self.values]).astype(np.float32)

    @classmethod
    def from_array(cls, array: np.ndarray, nbits: int) -> Codec:
        levels = 2**nbits
        return cls(nbits, array[: levels - 1], array[levels - 1 :])
