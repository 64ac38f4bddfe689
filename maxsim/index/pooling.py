"""Token pooling: fewer vectors per document, stored and searched in place of all of them.

As PyLate's ``pool_factor`` (after Answer.AI's "token pooling", 2024): a chunk's token vectors,
its first (the [CLS] token) left as it is, are clustered hierarchically (Ward linkage, scipy)
into ``len // factor`` clusters; each cluster becomes the mean of its vectors, renormalised to
unit length. Factor 2 halves the vectors an index stores, with little loss in retrieval
quality (docs/indexes.md has SciFact's figures); factor 1 leaves them as they are.
"""

from __future__ import annotations

import numpy as np

#: leading tokens of a chunk never pooled (the [CLS] token, as PyLate's protected_tokens=1)
PROTECTED_TOKENS = 1


def pool_tokens(vectors: np.ndarray, factor: int) -> np.ndarray:
    """One chunk's token vectors, (n, dim) float32 unit vectors, pooled by ``factor``: (m, dim)
    float32 unit vectors, m = 1 + max((n - 1) // factor, 1) for n > 2, else n.

    >>> v = np.eye(4, dtype=np.float32)[[0, 1, 1, 2, 2]]
    >>> pool_tokens(v, 2).tolist()
    [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    """
    if factor <= 1 or len(vectors) - PROTECTED_TOKENS <= 1:
        return vectors
    from scipy.cluster.hierarchy import fcluster, linkage

    rest = np.asarray(vectors[PROTECTED_TOKENS:], dtype=np.float64)
    clusters = max(len(rest) // factor, 1)
    labels = fcluster(linkage(rest, method="ward"), t=clusters, criterion="maxclust") - 1
    sums = np.zeros((labels.max() + 1, rest.shape[1]))
    np.add.at(sums, labels, rest)
    pooled = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return np.concatenate([vectors[:PROTECTED_TOKENS], pooled.astype(np.float32)])
