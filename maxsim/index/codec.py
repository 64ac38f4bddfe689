"""How token vectors are compressed: k-means centroids and a residual quantiser.

Every token vector is stored as the id of its nearest centroid plus its residual (vector minus
centroid) quantised to ``nbits`` per dimension: bucket cutoffs are quantiles of all residual
values (those of tokens on their centroids left out), and each bucket decodes to the mean of
its values (for those cutoffs, the value with the least squared error: on SciFact's dev slice at
2 bits, recall@10 against exact MaxSim with every chunk scored 0.880 -> 0.905 against the middle
quantile, and no change at 4 bits).
"""

from __future__ import annotations

import hashlib
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


#: centroids from which k-means assigns its sample through a :class:`CentroidSearch` of the
#: current centroids (faiss's k-means compares every sampled vector with every centroid: about 7
#: minutes on 2 cores for a million sampled tokens into 65,536 centroids)
SEARCHED_KMEANS_FROM = 32768


def train_centroids(vectors: np.ndarray, k: int, seed: int = 0, max_points_per_centroid: int = 16,
                    niter: int = 4) -> np.ndarray:
    """Spherical k-means over at most ``k * max_points_per_centroid`` sampled vectors: faiss's
    under ``SEARCHED_KMEANS_FROM`` centroids, else :func:`searched_kmeans`.

    The cost of faiss's is about ``2 * sample * k * dim * niter`` flops: on SciFact (815k
    tokens, 8,192 centroids) 64 points per centroid and 20 iterations took 10 minutes on 2
    cores; these defaults (16 points, 4 iterations, as colbert-ai's kmeans_niters) take about a
    twentieth.

    vectors: (T, dim) float32 unit vectors. Returns (k, dim) float32 unit vectors.
    """
    import faiss

    rng = np.random.default_rng(seed)
    sample = vectors
    if len(vectors) > k * max_points_per_centroid:
        sample = vectors[np.sort(rng.choice(len(vectors), k * max_points_per_centroid, replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if k >= SEARCHED_KMEANS_FROM:
        return searched_kmeans(sample, k, seed, niter)
    # (min_points_per_centroid only decides whether faiss prints a warning about a small sample;
    # the sample is small on purpose, so it is kept quiet)
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    kmeans.train(sample)
    return kmeans.centroids.astype(np.float32)


def searched_kmeans(sample: np.ndarray, k: int, seed: int = 0, niter: int = 4) -> np.ndarray:
    """Spherical k-means (Lloyd's iterations from ``k`` distinct sampled vectors) where each
    iteration assigns the sample through a :class:`CentroidSearch` of the current centroids:
    about ``probes / groups`` of faiss's work (1/8 at 65,536 centroids), and a centroid nearly as
    near where it misses the nearest. A centroid left without vectors restarts at a sampled
    vector, as faiss's does at a split.

    sample: (n >= k, dim) float32 unit vectors. Returns (k, dim) float32 unit vectors.
    """
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(sample)
    centroids = sample[rng.choice(len(sample), k, replace=False)]
    for iteration in range(niter):
        assigned = CentroidSearch(centroids, seed=seed + iteration).nearest(sample)
        sums = torch.zeros((k, sample.shape[1])).index_add_(0, torch.from_numpy(assigned.astype(np.int64)), x)
        empty = np.flatnonzero(np.bincount(assigned, minlength=k) == 0)
        sums[empty] = x[rng.choice(len(sample), len(empty), replace=False)]
        centroids = torch.nn.functional.normalize(sums, dim=1).numpy()
    return np.ascontiguousarray(centroids, dtype=np.float32)


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


def as_stored(centroids: np.ndarray) -> np.ndarray:
    """Centroids ((C, dim)) as an index stores them, float16, back in float32: a build assigns
    tokens and takes their residuals against these, so that a reader decodes what was encoded
    and a document added later is stored as the same document built in.

    >>> as_stored(np.array([[0.1]])).tolist()
    [[0.0999755859375]]
    """
    return np.asarray(centroids, dtype=np.float16).astype(np.float32)


def centroid_groups(centroids: np.ndarray, groups: int | None = None, seed: int = 0,
                    dtype: torch.dtype | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centroids clustered into ``groups`` (default 2 ** round(log2(sqrt(C)))) by spherical
    k-means over the centroids, each in the group of its nearest centre (``dtype``: as
    :func:`nearest_centroids` takes it). centroids: (C, dim) float32. Returns (centres (G, dim)
    float32, order (C,) int64 the centroid ids group after group, bounds (G + 1,) int64 where
    each group starts in ``order``)."""
    groups = groups or 2 ** round(math.log2(math.sqrt(len(centroids))))
    centres = train_centroids(centroids, groups, seed, max_points_per_centroid=len(centroids))
    group_of = nearest_centroids(centroids, centres, dtype=dtype)
    order = np.argsort(group_of, kind="stable").astype(np.int64)
    return centres, order, np.searchsorted(group_of[order], np.arange(groups + 1)).astype(np.int64)


#: rows of the matrix products of :class:`CentroidSearch`, rounded up to a multiple of these
#: (oneDNN compiles a kernel for each new shape: 0.5 ms each, more than the product itself)
GROUP_ROUNDING, PAIR_ROUNDING = 32, 256


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class CentroidSearch:
    """The nearest centroid of many vectors, in a fraction of an exhaustive search's work, for
    builds with tens of thousands of centroids (there, assigning every token to its centroid
    is most of a build: 64 million tokens against 65,536 centroids are 10^15 flops).

    The centroids are themselves clustered into about sqrt(C) groups (k-means over the
    centroids); a vector is compared with the group centres, then with the centroids of its
    ``probes`` best groups only, each group's vectors in one matrix product: about
    ``probes / groups`` of the exhaustive work (32/256 at 65,536 centroids). The answer is the
    exact nearest centroid for most vectors, and otherwise one nearly as near: on the synthetic
    vectors of ``bench/scale.py`` at 65,536 centroids, 87.3% exact, a mean loss of 0.010 in
    cosine to the centroid, and 8.6 to 8.9 s a million tokens against the exhaustive search's
    19.3 on 2 cores (2.2 times faster; recall@10 of the index unchanged). Under ``EXACT_BELOW``
    centroids the search is exhaustive
    (:func:`nearest_centroids`).

    The products keep to a few shapes: each group's centroids are padded to a multiple of
    ``GROUP_ROUNDING`` with copies of its first, and each group's vectors to a multiple of
    ``PAIR_ROUNDING`` with copies of its first.
    """

    #: centroids under which every vector is compared with every centroid
    EXACT_BELOW = 8192

    def __init__(self, centroids: np.ndarray, probes: int = 32, seed: int = 0, groups: int | None = None) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.probes = probes
        self.exhaustive = len(centroids) < self.EXACT_BELOW
        if self.exhaustive:
            return
        self.group_centres, order, bounds = centroid_groups(self.centroids, groups, seed)
        members = [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        padded = [np.resize(m, _round_up(len(m), GROUP_ROUNDING)) for m in members]
        #: centroid ids, group after group, each group padded with repeats of its own ids
        self.order = np.concatenate(padded).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum([len(m) for m in padded])])

    def nearest(self, vectors: np.ndarray, batch: int = 1 << 15, dtype: torch.dtype | None = None) -> np.ndarray:
        """Id of the (nearly always) most similar centroid of each vector: (T,) int32.
        ``dtype``: as :func:`nearest_centroids` takes it."""
        if self.exhaustive:
            return nearest_centroids(vectors, self.centroids, batch, dtype)
        if dtype is None:
            dtype = torch.bfloat16 if cpu_computes_bf16() else torch.float32
        centres = torch.from_numpy(self.group_centres).to(dtype)
        centroids = torch.from_numpy(self.centroids[self.order]).to(dtype)  # group after group, padded
        out = np.empty(len(vectors), dtype=np.int32)
        for start in range(0, len(vectors), batch):
            v = torch.from_numpy(np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)).to(dtype)
            out[start : start + batch] = self._nearest_batch(v, centres, centroids)
        return out

    def _nearest_batch(self, v: torch.Tensor, centres: torch.Tensor, centroids: torch.Tensor) -> np.ndarray:
        """(B, dim) vectors -> (B,) int32 centroid ids, in two passes. First, each (vector, probed
        group) pair gets the best score in that group (one product per group, its column maxima:
        no indices, which cost four times as much to find); each vector keeps its best group.
        Then each vector is compared again with that one group's centroids, for the id."""
        probes = min(self.probes, len(centres))
        probed = (v @ centres.T).topk(probes, dim=1, sorted=False).indices.reshape(-1)  # (B * probes,)
        by_group = torch.argsort(probed, stable=True)
        rows = torch.div(by_group, probes, rounding_mode="floor")
        values = torch.full((len(by_group),), -torch.inf)  # (a group may hold no centroid)
        for at, count, lo, hi in self._groups(probed):
            mine = _padded(rows[at : at + count])
            values[at : at + count] = (centroids[lo:hi] @ v[mine].T).amax(dim=0)[:count].float()
        best = torch.empty_like(values)
        best[by_group] = values  # back to (vector, probe) order
        winner = probed.reshape(-1, probes).gather(1, best.reshape(-1, probes).argmax(dim=1, keepdim=True))[:, 0]
        order = torch.argsort(winner, stable=True)
        ids = torch.empty(len(v), dtype=torch.int64)
        for at, count, lo, hi in self._groups(winner):
            mine = order[at : at + count]
            ids[mine] = (v[_padded(mine)] @ centroids[lo:hi].T).max(dim=1).indices[:count] + lo
        return self.order[ids.numpy()].astype(np.int32)

    def _groups(self, group_of: torch.Tensor):
        """(first pair, pairs, first row, end row in the padded centroids) of each group that
        ``group_of`` (the group of each pair, sorted by it) names and that holds centroids."""
        at = 0
        for g, count in enumerate(torch.bincount(group_of, minlength=len(self.starts) - 1).tolist()):
            lo, hi = int(self.starts[g]), int(self.starts[g + 1])
            if count and hi > lo:
                yield at, count, lo, hi
            at += count


def _padded(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` padded to a multiple of ``PAIR_ROUNDING`` with copies of its first."""
    extra = _round_up(len(rows), PAIR_ROUNDING) - len(rows)
    return torch.cat([rows, rows[:1].expand(extra)]) if extra else rows


#: residuals no longer than this (a token within cosine 0.99995 of its centroid, as every token
#: of a centroid of its own is) are left out when a codec is fitted
NEAR_ZERO = 0.01


@dataclass
class Codec:
    """Residual quantiser: ``cutoffs`` (2**nbits - 1,) and ``values`` (2**nbits,) float32."""

    nbits: int
    cutoffs: np.ndarray
    values: np.ndarray

    @classmethod
    def fit(cls, residuals: np.ndarray, nbits: int, sample: int = 1 << 22, seed: int = 0) -> Codec:
        """Cutoffs at the quantiles of (at most ``sample``) residual values, each bucket's value
        the mean of those in it (its middle quantile where it holds none).

        residuals: (T, dim). Rows no longer than ``NEAR_ZERO`` are left out (unless all are):
        where many tokens sit on their centroids (a small corpus, near-duplicate texts), their
        zeros would pull every cutoff to zero and leave the other residuals one outer bucket
        each side. Measured where nine tokens in ten did so (tiny random model, 72 near-duplicate
        texts): agreement with exact MaxSim's top 15 at 4 bits 0.59 -> 0.94; on SciFact abstracts
        (under 0.4% such rows) no change.

        >>> Codec.fit(np.array([[0.0, 0.1, 0.2, 0.9]]), 1).values.astype(float).round(3).tolist()
        [0.05, 0.55]
        """
        levels = 2**nbits
        rng = np.random.default_rng(seed)
        residuals = np.asarray(residuals, dtype=np.float32).reshape(len(residuals), -1)
        if residuals.size > sample:  # whole rows, so that each one's length can be judged
            rows = max(1, sample // residuals.shape[1])
            residuals = residuals[np.sort(rng.choice(len(residuals), rows, replace=False))]
        away = np.linalg.norm(residuals, axis=1) > NEAR_ZERO
        flat = (residuals[away] if away.any() else residuals).reshape(-1)
        cutoffs = np.quantile(flat, np.arange(1, levels) / levels).astype(np.float32)
        values = np.quantile(flat, (np.arange(levels) + 0.5) / levels).astype(np.float32)
        bucket = np.searchsorted(cutoffs, flat, side="right")
        counts = np.bincount(bucket, minlength=levels)
        sums = np.bincount(bucket, weights=flat, minlength=levels)
        held = counts > 0
        values[held] = (sums[held] / counts[held]).astype(np.float32)
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


def centroids_fingerprint(centroids: np.ndarray) -> str:
    """A short fingerprint of an index's centroids ((C, dim), as stored: float16), which each
    segment keeps to say which index it was written for: the shape and the first and last 256
    centroids, so that it costs the same whatever C is.

    >>> c = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> centroids_fingerprint(c) == centroids_fingerprint(c.astype(np.float16)) != centroids_fingerprint(c + 1)
    True
    """
    stored = np.ascontiguousarray(centroids, dtype=np.float16)
    digest = hashlib.sha256(repr(stored.shape).encode())
    digest.update(stored[:256].tobytes())
    digest.update(stored[-256:].tobytes())
    return digest.hexdigest()[:32]
