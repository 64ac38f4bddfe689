"""A PLAID-style compressed index: the whole lifecycle, build, store, search.

- :mod:`~maxsim.index.codec`: k-means centroids and the residual quantiser;
- :mod:`~maxsim.index.ivf`: the inverted file (centroid -> chunks);
- :mod:`~maxsim.index.documents`: a segment's documents (SQLite), fetched by position or id;
- :mod:`~maxsim.index.segment`: one immutable segment's files, written once, memory-mapped;
- :mod:`~maxsim.index.manifest`: ``index.json`` (:class:`IndexSettings`, the segment entries),
  its atomic replacement and the writer lock;
- :mod:`~maxsim.index.reader`: :class:`IndexData`, one version's immutable view (numbering,
  documents, decompression; :mod:`~maxsim.index.allowed`: what a filter lets through);
- :mod:`~maxsim.index.writer`: changes (add, delete, compact) as new views, saved, then merged
  as :mod:`~maxsim.index.merge_policy` plans; :mod:`~maxsim.index.cleanup` deletes what no
  manifest names;
- :mod:`~maxsim.index.legacy`: reading indexes of the previous format;
- :mod:`~maxsim.index.build`: :func:`build`, from token vectors to an index;
- :mod:`~maxsim.index.search`: :func:`search`, from query vectors to chunk ids and scores.

Chunks are the units stored and searched; documents own chunks. Text never enters here: the
model turns text into vectors, :class:`maxsim.retriever.Retriever` turns chunk ids into hits.
"""

from maxsim.index.build import build
from maxsim.index.codec import Codec, n_centroids_for, nearest_centroids, train_centroids
from maxsim.index.compaction import compact_index
from maxsim.index.ivf import build_ivf
from maxsim.index.manifest import IndexLoadError, IndexSettings, index_lock, is_index, read_settings
from maxsim.index.reader import IndexData
from maxsim.index.search import best_chunks, chunk_scores, search, search_defaults, search_pool

__all__ = [
    "Codec",
    "IndexData",
    "IndexLoadError",
    "IndexSettings",
    "best_chunks",
    "build",
    "build_ivf",
    "chunk_scores",
    "compact_index",
    "index_lock",
    "is_index",
    "n_centroids_for",
    "read_settings",
    "nearest_centroids",
    "search",
    "search_defaults",
    "search_pool",
    "train_centroids",
]
