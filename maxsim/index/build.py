"""Building an index from token vectors: k-means, the residual codec, the inverted file."""

from __future__ import annotations

import numpy as np

from maxsim.index.codec import Codec, n_centroids_for, nearest_centroids, train_centroids
from maxsim.index.segment import Segment
from maxsim.index.store import IndexData, IndexSettings


def build(vectors: np.ndarray, doclens: np.ndarray, chunk_docs: np.ndarray, spans: list[tuple[int, int]],
          documents: list[dict], settings: IndexSettings) -> IndexData:
    """An index in memory, of one segment (save it with :meth:`IndexData.save`, under :func:`index_lock`).

    vectors: (T, dim) float32 unit vectors, the chunks' tokens back to back; doclens: (N,) int32
    tokens per chunk; chunk_docs: (N,) int32 position of each chunk's document in
    ``documents`` ({"id", "content", "metadata"}); spans: (start, end) characters of each
    chunk in its document. ``2 ** floor(log2(16 * sqrt(T)))`` centroids are trained with
    ``settings.seed``, and residuals quantised to ``settings.nbits`` bits per dimension.
    """
    k = n_centroids_for(len(vectors))
    centroids = train_centroids(vectors, k, settings.seed)
    codes = nearest_centroids(vectors, centroids)
    residual = vectors - centroids[codes]
    codec = Codec.fit(residual, settings.nbits)
    segment = Segment.from_arrays(codes, codec.encode(residual), doclens, chunk_docs, spans, documents, k)
    return IndexData(settings, centroids, codec, [segment])
