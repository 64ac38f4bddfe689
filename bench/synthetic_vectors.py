"""Clustered synthetic token vectors for index benchmarks, with the encoder bypassed.

Needs numpy only, so that another library's virtual environment (fast-plaid's) can make the
very same vectors.

The generator (seeded, deterministic per block of passages, whatever the block sizes asked):

- ``CLUSTERS`` = 32,768 cluster centres, uniform on the unit sphere in ``DIM`` = 128 dimensions;
  ``TOPICS`` = 1,024 topics, each a pool of 256 of those clusters;
- passages come in families of ``FAMILY`` = 10 (passage ``i`` is in family ``perm(i) // 10``
  for a seeded permutation, so a family's passages lie anywhere in the corpus); a family has a
  topic and a base of 64 clusters, 32 from its topic's pool and 32 from anywhere;
- a passage has ``TOKENS`` = 64 tokens: 52 take a cluster of its family's base, 12 any
  cluster; a token is its cluster's centre plus Gaussian noise of norm about 0.6, renormalised
  (cosine about 0.85 with the centre);
- a query is 32 tokens about one family: 32 distinct clusters of its base, fresh noise.

So each query has ten passages that share most of its clusters (its family), then passages of
the same topic, then the rest; the exact top 10 is the family with a clear margin, and recall@10
against exact MaxSim says whether an engine finds those ten, not how it orders near-ties (with
token clusters drawn independently of any such structure, the exact top 10 is mostly a tie
among equals that 2-bit residuals cannot resolve: a ceiling of 0.70 measured here).

Real ColBERT vectors are not uniform on the sphere, and token clusters in real text are far
more uneven than these (a few centroids hold most tokens); read the latency figures as the
engine's cost on vectors of this shape, not as a promise for text.
"""

from __future__ import annotations

import numpy as np

DIM = 128
TOKENS = 64
QUERY_TOKENS = 32
CLUSTERS = 32_768
TOPICS = 1_024
TOPIC_POOL = 256
FAMILY = 10
BASE = 64
FROM_BASE = 52
NOISE = 0.6
BLOCK = 4096  # passages made from one seed (any range is made block by block)
#: names this generator in cached files (change it with the generator)
GENERATOR = "families-1"


class Synthetic:
    """Passages ``0..n-1`` and queries, from ``seed``."""

    def __init__(self, n_passages: int, seed: int = 0) -> None:
        self.n, self.seed = n_passages, seed
        rng = np.random.default_rng([seed, 0])
        centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        pools = rng.integers(0, CLUSTERS, size=(TOPICS, TOPIC_POOL))
        n_families = -(-n_passages // FAMILY)
        topic = rng.integers(0, TOPICS, size=n_families)
        from_topic = pools[topic[:, None], rng.integers(0, TOPIC_POOL, size=(n_families, BASE // 2))]
        self.base = np.concatenate([from_topic, rng.integers(0, CLUSTERS, size=(n_families, BASE // 2))], axis=1)
        self.family = rng.permutation(n_families * FAMILY)[:n_passages] // FAMILY

    def members(self, family: int) -> np.ndarray:
        """The passages of one family (up to FAMILY of them)."""
        return np.flatnonzero(self.family == family)

    def _noisy(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        v = rng.standard_normal((len(clusters), DIM), dtype=np.float32)
        v *= float(NOISE / np.sqrt(DIM))
        v += self.centres[clusters]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def passages(self, start: int, end: int) -> np.ndarray:
        """(end - start, TOKENS, DIM) float32 unit vectors of passages start..end-1."""
        out = []
        for b in range(start // BLOCK, (end - 1) // BLOCK + 1):
            rng = np.random.default_rng([self.seed, 1, b])
            ids = np.arange(b * BLOCK, min((b + 1) * BLOCK, self.n))
            base = self.base[self.family[ids]]
            own = base[np.arange(len(ids))[:, None], rng.integers(0, BASE, size=(len(ids), TOKENS))]
            anywhere = rng.integers(0, CLUSTERS, size=(len(ids), TOKENS))
            clusters = np.where(np.arange(TOKENS) < FROM_BASE, own, anywhere)
            vectors = self._noisy(rng, clusters.ravel()).reshape(len(ids), TOKENS, DIM)
            lo, hi = max(start - b * BLOCK, 0), min(end - b * BLOCK, len(ids))
            out.append(vectors[lo:hi])
        return np.concatenate(out)

    def queries(self, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(n, QUERY_TOKENS, DIM) float32 query vectors and (n,) the family each is about."""
        rng = np.random.default_rng([self.seed, 2, seed])
        families = rng.choice(int(self.family.max()) + 1, size=n, replace=False)
        out = np.empty((n, QUERY_TOKENS, DIM), dtype=np.float32)
        for i, family in enumerate(families.tolist()):
            out[i] = self._noisy(rng, rng.choice(self.base[family], size=QUERY_TOKENS, replace=False))
        return out, families


def exact_top(synthetic: Synthetic, queries: np.ndarray, k: int = 10, block: int = 4096, chunk: int = 256
              ) -> np.ndarray:
    """(Q, k) the passages of best exact MaxSim for each query, over every passage (float32)."""
    import torch

    n_queries, lq, _ = queries.shape
    q = torch.from_numpy(queries).reshape(-1, DIM)  # (Q * Lq, dim)
    best_scores = torch.full((n_queries, k), -1e9)
    best_ids = torch.zeros((n_queries, k), dtype=torch.int64)
    for start in range(0, synthetic.n, block):
        end = min(start + block, synthetic.n)
        passages = torch.from_numpy(synthetic.passages(start, end))  # (B, Ld, dim)
        parts = []
        for c in range(0, len(passages), chunk):
            d = passages[c : c + chunk]
            sim = (q @ d.reshape(-1, DIM).T).reshape(n_queries, lq, len(d), TOKENS)
            parts.append(sim.amax(dim=3).sum(dim=1))  # (Q, b)
        scores = torch.cat(parts, dim=1)  # (Q, B)
        both = torch.cat([best_scores, scores], dim=1)
        ids = torch.cat([best_ids, torch.arange(start, end).expand(len(queries), -1)], dim=1)
        top = both.topk(k, dim=1)
        best_scores, best_ids = top.values, ids.gather(1, top.indices)
    return best_ids.numpy()
