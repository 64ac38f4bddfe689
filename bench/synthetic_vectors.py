"""Clustered synthetic token vectors for index benchmarks, with the encoder bypassed.

Needs numpy only, so that another library's virtual environment (fast-plaid's) can make the
very same vectors.

The generator (seeded, deterministic per block of passages, whatever the block sizes asked):

- ``CLUSTERS`` = 32,768 cluster centres, uniform on the unit sphere in ``DIM`` = 128 dimensions;
- ``TOPICS`` = 4,096 topics, each a set of 48 of those clusters;
- a passage has ``TOKENS`` = 64 tokens and one topic: each token takes a cluster of its topic
  (three in four) or any cluster (one in four), and is that centre plus Gaussian noise of norm
  about 0.6, renormalised (cosine about 0.85 with its centre);
- a query is 32 tokens about one passage (the target): 16 drawn from the target's own token
  clusters and 16 from its topic's, with fresh noise.

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
TOPICS = 4_096
TOPIC_CLUSTERS = 48
NOISE = 0.6
BLOCK = 4096  # passages made from one seed (any range is made block by block)


class Synthetic:
    """Passages ``0..n-1`` and queries, from ``seed``."""

    def __init__(self, n_passages: int, seed: int = 0) -> None:
        self.n, self.seed = n_passages, seed
        rng = np.random.default_rng([seed, 0])
        centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.topic_clusters = rng.integers(0, CLUSTERS, size=(TOPICS, TOPIC_CLUSTERS))

    def _noisy(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        v = rng.standard_normal((len(clusters), DIM), dtype=np.float32)
        v *= float(NOISE / np.sqrt(DIM))
        v += self.centres[clusters]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """Block ``b``'s passages: (topics (n,), token clusters (n, TOKENS), the rng that then
        draws their noise)."""
        rng = np.random.default_rng([self.seed, 1, b])
        n = min(BLOCK, self.n - b * BLOCK)
        topics = rng.integers(0, TOPICS, size=n)
        own = self.topic_clusters[topics[:, None], rng.integers(0, TOPIC_CLUSTERS, size=(n, TOKENS))]
        anywhere = rng.integers(0, CLUSTERS, size=(n, TOKENS))
        clusters = np.where(rng.random((n, TOKENS)) < 0.75, own, anywhere)
        return topics, clusters, rng

    def passages(self, start: int, end: int) -> np.ndarray:
        """(end - start, TOKENS, DIM) float32 unit vectors of passages start..end-1."""
        out = []
        for b in range(start // BLOCK, (end - 1) // BLOCK + 1):
            _, clusters, rng = self._block(b)
            vectors = self._noisy(rng, clusters.ravel()).reshape(len(clusters), TOKENS, DIM)
            lo, hi = max(start - b * BLOCK, 0), min(end - b * BLOCK, len(clusters))
            out.append(vectors[lo:hi])
        return np.concatenate(out)

    def queries(self, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(n, QUERY_TOKENS, DIM) float32 query vectors and (n,) their target passages."""
        rng = np.random.default_rng([self.seed, 2, seed])
        targets = rng.choice(self.n, size=n, replace=False)
        out = np.empty((n, QUERY_TOKENS, DIM), dtype=np.float32)
        for i, target in enumerate(targets.tolist()):
            topics, clusters, _ = self._block(target // BLOCK)
            row = target % BLOCK
            own = clusters[row][rng.integers(0, TOKENS, size=QUERY_TOKENS // 2)]
            topical = self.topic_clusters[topics[row]][rng.integers(0, TOPIC_CLUSTERS, size=QUERY_TOKENS // 2)]
            out[i] = self._noisy(rng, np.concatenate([own, topical]))
        return out, targets


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
