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


#: similarities (vectors x centroids) held at once by :func:`nearest_centroids`: 64 million,
#: 128 MB in bf16 (a batch of 32,768 vectors against 65,536 centroids would hold 4 GB)
SIMILARITY_BUDGET = 1 << 26


def nearest_centroids(vectors: np.ndarray, centroids: np.ndarray, batch: int = 1 << 15,
                      dtype: torch.dtype | None = None) -> np.ndarray:
    """Id of the most similar centroid (inner product) for each vector: (T,) int32, ``batch``
    vectors at a time (fewer where that many would hold more than ``SIMILARITY_BUDGET``
    similarities).

    ``dtype``: of the similarity product; default bf16 where the CPU multiplies bf16 natively
    (several times faster; only near-ties can change, which changes a residual by next to
    nothing), else float32.
    """
    if dtype is None:
        dtype = torch.bfloat16 if cpu_computes_bf16() else torch.float32
    batch = max(256, min(batch, SIMILARITY_BUDGET // max(len(centroids), 1)))  # the (batch, C) scores' memory
    out = np.empty(len(vectors), dtype=np.int32)
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(dtype)
    for start in range(0, len(vectors), batch):
        v = torch.from_numpy(np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)).to(dtype)
        sim = v @ c.T
        # (on this kind of CPU, max().indices is faster than argmax() in bf16, and slower in float32)
        out[start : start + batch] = (sim.max(dim=1).indices if dtype == torch.bfloat16 else sim.argmax(dim=1)).numpy()
    return out


class CentroidSearch:
    """The nearest centroid of many vectors, in a fraction of an exhaustive search's work, for
    builds with tens of thousands of centroids (there, assigning every token to its centroid
    is most of a build: 64 million tokens against 65,536 centroids are 10^15 flops).

    The centroids are themselves clustered into about sqrt(C) groups (k-means over the
    centroids); a vector is compared with the group centres, then with the centroids of its
    ``probes`` best groups only, each group's vectors in one matrix product: about
    ``probes / groups`` of the exhaustive work (32/256 at 65,536 centroids). The answer is the
    exact nearest centroid for most vectors, and otherwise one nearly as near: on the synthetic
    vectors of ``bench/scale.py`` (uniform on the sphere, the hard case), 97.2% exact at 32,768
    centroids, a mean loss of 0.008 in cosine to the centroid, 4.4 times faster than the
    exhaustive search. Under ``EXACT_BELOW`` centroids the search is exhaustive
    (:func:`nearest_centroids`).
    """

    #: centroids under which every vector is compared with every centroid
    EXACT_BELOW = 8192

    def __init__(self, centroids: np.ndarray, probes: int = 32, seed: int = 0) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.probes = probes
        self.exhaustive = len(centroids) < self.EXACT_BELOW
        if self.exhaustive:
            return
        groups = 2 ** round(math.log2(math.sqrt(len(centroids))))
        self.group_centres = train_centroids(self.centroids, groups, seed, max_points_per_centroid=len(centroids))
        group_of = nearest_centroids(self.centroids, self.group_centres)
        self.order = np.argsort(group_of, kind="stable")  # centroid ids, group after group
        self.starts = np.searchsorted(group_of[self.order], np.arange(groups + 1))

    def nearest(self, vectors: np.ndarray, batch: int = 1 << 15, dtype: torch.dtype | None = None) -> np.ndarray:
        """Id of the (nearly always) most similar centroid of each vector: (T,) int32.
        ``dtype``: as :func:`nearest_centroids` takes it."""
        if self.exhaustive:
            return nearest_centroids(vectors, self.centroids, batch, dtype)
        if dtype is None:
            dtype = torch.bfloat16 if cpu_computes_bf16() else torch.float32
        centres = torch.from_numpy(self.group_centres).to(dtype)
        centroids = torch.from_numpy(self.centroids).to(dtype)
        out = np.empty(len(vectors), dtype=np.int32)
        for start in range(0, len(vectors), batch):
            v = torch.from_numpy(np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)).to(dtype)
            probed = (v @ centres.T).topk(min(self.probes, len(centres)), dim=1).indices  # (B, probes)
            best = torch.full((len(v),), -torch.inf)
            best_id = torch.zeros(len(v), dtype=torch.int64)
            rows = torch.arange(len(v)).repeat_interleave(probed.shape[1])
            groups = probed.reshape(-1)
            by_group = torch.argsort(groups, stable=True)
            rows, counts = rows[by_group], torch.bincount(groups, minlength=len(centres)).tolist()
            at = 0
            for g, count in enumerate(counts):
                if not count:
                    continue
                mine = rows[at : at + count]
                at += count
                members = torch.from_numpy(self.order[self.starts[g] : self.starts[g + 1]])
                if not len(members):
                    continue
                top = (v[mine] @ centroids[members].T).float().max(dim=1)
                better = top.values > best[mine]
                best[mine[better]] = top.values[better]
                best_id[mine[better]] = members[top.indices[better]]
            out[start : start + batch] = best_id.numpy()
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

    def encode(self, residuals: np.ndarray, block: int = 1 << 15) -> np.ndarray:
        """(T, dim) float residuals -> (T, dim * nbits / 8) uint8 packed bucket ids, ``block``
        rows at a time (the bucket ids are int64 while they are found: 8 bytes a value)."""
        out = np.empty((len(residuals), residuals.shape[1] * self.nbits // 8), dtype=np.uint8)
        for start in range(0, len(residuals), block):
            part = residuals[start : start + block]
            buckets = np.searchsorted(self.cutoffs, part, side="right").astype(np.uint8)  # (t, dim)
            bits = ((buckets[..., None] >> np.arange(self.nbits, dtype=np.uint8)) & 1).astype(np.uint8)
            out[start : start + block] = np.packbits(bits.reshape(len(part), -1), axis=1)
        return out

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
