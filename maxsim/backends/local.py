"""maxsim's own index as a backend: a segmented, compressed index in a folder (:mod:`maxsim.index`).

Items are chunk numbers of the version held (:class:`~maxsim.index.IndexData`); each search
reads that one version, and writes go through the index's writer lock on the newest version on
disk (:mod:`maxsim.index.writer`), the view held changing only once a write is saved.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from maxsim.backends.base import Chunking, EncodedDocuments, Passage, check_model
from maxsim.errors import SettingsError, UnknownIdError
from maxsim.fusion import Hybrid, fuse
from maxsim.index import IndexData, IndexLoadError, chunk_scores, index_lock, search, search_pool
from maxsim.index.bm25_search import bm25_matches, bm25_top, require_bm25, scores_of
from maxsim.index.search import best_chunks
from maxsim.index.writer import save, with_documents, without_documents
from maxsim.lexical import Analyzer
from maxsim.limits import MAX_METADATA_DEPTH, within_bounds
from maxsim.model import ColBERT
from maxsim.ranking import Ranking

logger = logging.getLogger(__name__)

__all__ = ["LocalIndex", "search_pool"]  # search_pool: threads that search() spreads queries over


class LocalIndex:
    """The index in folder ``path``, as ``data`` (one loaded version) shows it."""

    kind = "maxsim"

    def __init__(self, data: IndexData, path: str | Path, analyzers: dict[str, Analyzer] | None = None) -> None:
        self.data, self.path = data, Path(path)
        #: BM25's tokeniser per language, made on first use (shared with the views :meth:`pinned` makes)
        self._analyzers: dict[str, Analyzer] = analyzers if analyzers is not None else {}
        self._writes, self._writes_lock = 0, threading.Lock()  # writes in progress (from any thread)

    @classmethod
    def open(cls, path: str | Path) -> LocalIndex:
        return cls(IndexData.load(path), path)

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def dim(self) -> int:
        return self.data.dim

    @property
    def model_digest(self) -> str | None:
        return self.data.settings.model_digest

    @property
    def model_path(self) -> str | None:
        return self.data.settings.model_path

    def check_model(self, model: ColBERT, allow_mismatch: bool = False) -> None:
        check_model(self, model, self.path, allow_mismatch)

    @property
    def chunking(self) -> Chunking:
        settings = self.data.settings
        return Chunking(settings.split_documents, settings.max_document_tokens, settings.pool_factor)

    # ------------------------------------------------------------------ reading
    def check_filter(self, filter: Mapping) -> None:
        self.data.allowed(filter)

    def search(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int, filter: Mapping | None = None,
               ncells: int | None = None, centroid_score_threshold: float | None = None, ndocs: int | None = None,
               pool=None) -> Ranking:
        """:func:`maxsim.index.search` over the version held (which says what each setting does)."""
        return search(self.data, q_vectors, q_mask, k, ncells, centroid_score_threshold, ndocs, pool, filter)

    def search_among(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, document_ids: Sequence[str],
                     k: int) -> Ranking:
        """The ``k`` best of some documents (by id; those not held are left out) for each query,
        every chunk of theirs scored exactly."""
        data = self.data
        chunk_ids = data.chunks_of(sorted(data.positions_of([str(d) for d in document_ids]).values()))
        return Ranking.from_rows([best_chunks(data, q_vectors[i : i + 1], q_mask[i : i + 1], chunk_ids, k)
                                  for i in range(len(q_vectors))], k)

    def exact_scores(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, chunk_ids: Sequence[int]) -> torch.Tensor:
        """Exact MaxSim of one encoded query ((1, Lq, dim), (1, Lq)) with some chunks, from their
        decompressed vectors: (n,) float32."""
        return chunk_scores(self.data, q_vectors, q_mask, np.asarray(chunk_ids, dtype=np.int64))

    def _analyzer(self, language: str) -> Analyzer:
        if self._analyzers.get(language) is None:
            self._analyzers[language] = Analyzer(language)
        return self._analyzers[language]

    def require_bm25(self) -> None:
        require_bm25(self.data, self.path)

    def search_bm25(self, texts: Sequence[str], k: int, filter: Mapping | None = None) -> Ranking:
        """The ``k`` best documents (by number) of each query by BM25 alone (statistics of the
        whole index); fewer when fewer documents hold a query term."""
        data = self.data
        require_bm25(data, self.path)
        allowed = data.allowed(filter) if filter is not None else None
        analyzer = self._analyzer(data.settings.bm25_language)
        return Ranking.from_rows([bm25_top(*bm25_matches(data, *analyzer.query(text), allowed), k) for text in texts])

    def search_hybrid(self, texts: Sequence[str], q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int,
                      settings: Hybrid, filter: Mapping | None = None, ncells: int | None = None,
                      centroid_score_threshold: float | None = None,
                      ndocs: int | None = None) -> tuple[Ranking, list[tuple[list[float], list[float]]]]:
        """MaxSim's and BM25's ``settings.depth`` best documents of each query, fused
        (:func:`maxsim.fusion.fuse`): the ranking of each document's best chunk, and both
        component scores, those a ranking did not hold computed exactly (a document's best
        chunk by MaxSim; BM25 of its text)."""
        data = self.data
        require_bm25(data, self.path)
        depth = max(k, settings.depth)
        if ndocs is None:  # MaxSim's candidates scored exactly, as those only BM25 brings are
            ndocs = depth
        dense = search(data, q_vectors, q_mask, depth, ncells, centroid_score_threshold, ndocs, filter=filter)
        allowed = data.allowed(filter) if filter is not None else None
        analyzer = self._analyzer(data.settings.bm25_language)
        rows, components = [], []
        for i, text in enumerate(texts):
            chunks, maxsim_scores = dense.row(i)
            owners = data.chunk_documents(chunks)
            numbers, scores = bm25_matches(data, *analyzer.query(text), allowed)
            items, fused = fuse(owners, maxsim_scores, *bm25_top(numbers, scores, depth), settings)
            items, fused = items[:k], fused[:k]
            best = dict(zip(owners.tolist(), zip(chunks.tolist(), maxsim_scores.tolist())))
            missing = [d for d in items.tolist() if d not in best]
            if missing:
                candidates = data.chunks_of(missing)
                exact = chunk_scores(data, q_vectors[i : i + 1], q_mask[i : i + 1], candidates).tolist()
                for chunk, owner, value in zip(candidates.tolist(), data.chunk_documents(candidates).tolist(), exact):
                    if owner not in best or value > best[owner][1]:
                        best[owner] = (chunk, value)
            rows.append(([best[d][0] for d in items.tolist()], fused))
            components.append(([best[d][1] for d in items.tolist()], scores_of(numbers, scores, items).tolist()))
        return Ranking.from_rows(rows), components

    def passages(self, ranking: Ranking, whole: bool = False) -> list[list[Passage]]:
        """Each ranked chunk's document, with the chunk's text (``whole``: the ranking is of
        document numbers, and the text is the document's)."""
        data = self.data
        rows = [ranking.row(i)[0] for i in range(len(ranking))]
        items = np.concatenate([np.zeros(0, dtype=np.int64), *(np.asarray(r, dtype=np.int64) for r in rows)])
        owners = items if whole else data.chunk_documents(items)
        spans = None if whole else data.chunk_spans(items).tolist()
        places = None if whole else data.chunk_places(items).tolist()
        wanted = np.unique(owners)
        record_of = dict(zip(wanted.tolist(), data.documents_at(wanted.tolist())))  # one lookup per document
        out, at = [], 0
        for row in rows:
            found = []
            for _ in range(len(row)):
                record = record_of[int(owners[at])]
                if whole:
                    found.append(Passage(record["id"], record["content"], _returnable(record)))
                else:
                    start, end = spans[at]
                    found.append(Passage(record["id"], record["content"][start:end], _returnable(record), places[at],
                                         start, end))
                at += 1
            out.append(found)
        return out

    def document(self, document_id: str) -> Passage | None:
        position = self.data.positions_of([document_id]).get(document_id)
        if position is None:
            return None
        (record,) = self.data.documents_at([position])
        return Passage(record["id"], record["content"], _returnable(record))

    # ------------------------------------------------------------------ writing
    def prepare(self, encoded: EncodedDocuments) -> EncodedDocuments:
        """The vectors compressed with the index's centroids of now (redone at the write only
        if the index was rebuilt meanwhile)."""
        self._refuse_present(self.data, encoded.records)
        encoded.stored = (*self.data.compress(encoded.vectors), self.data.centroids)
        return encoded

    def add(self, encoded: EncodedDocuments) -> None:
        """Under the writer lock, on the newest version, the documents put into the index as a
        new segment, saved, and only then seen here: a failed save (a full disk, say) leaves
        both the folder and this view as they were."""
        with self._writing() as data:
            self._refuse_present(data, encoded.records)
            codes, residuals, centroids = encoded.stored if encoded.stored is not None else (None, None, None)
            if centroids is None or not np.array_equal(centroids, data.centroids):
                codes, residuals = data.compress(encoded.vectors)
            changed = with_documents(data, codes, residuals, encoded.doclens, encoded.records, encoded.chunk_docs,
                                     encoded.spans)
            self._take(save(changed, self.path))

    @staticmethod
    def _refuse_present(data: IndexData, records: list[dict]) -> None:
        existing = data.positions_of([r["id"] for r in records])
        clash = [r["id"] for r in records if r["id"] in existing]
        if clash:
            raise SettingsError(f"already in the index: {clash[:5]}; delete them first to replace them")

    def delete(self, document_ids: Sequence[str]) -> int:
        """Like :meth:`add`: under the writer lock, on the newest version, saved before it is seen."""
        wanted = list(dict.fromkeys(document_ids))
        if not wanted:
            return 0
        with self._writing() as data:
            position = data.positions_of(wanted)
            missing = [i for i in wanted if i not in position]
            if missing:
                raise UnknownIdError(f"not in the index: {missing[:5]}")
            self._take(save(without_documents(data, {position[i] for i in wanted}), self.path))
        return len(wanted)

    def present(self, document_ids: Sequence[str]) -> set[str]:
        return set(self.data.positions_of(list(document_ids)))

    def count(self) -> int:
        return self.data.n_documents

    def status(self) -> dict:
        return {"index": str(self.path), "documents": self.data.n_documents, "chunks": self.data.n_chunks,
                "version": self.data.version}

    def refresh(self) -> bool:
        """Reload the index if another process changed it since it was loaded; True if it did.
        While a write of this object is under way (from another thread) it does nothing: the
        folder may already hold the write's new version, which the write takes when it ends."""
        if self._writes:
            return False
        return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        if IndexData.current_version(self.path) == self.data.version:
            return False
        fresh = IndexData.load(self.path)
        if fresh.settings.model_digest != self.data.settings.model_digest:
            raise IndexLoadError(f"{self.path} was rebuilt with another model since it was loaded: "
                                 "open it again with Retriever.from_index")
        self._take(fresh)
        return True

    def _take(self, fresh: IndexData) -> None:
        """Hold a newer version, keeping the centroid selection made for the one held where the
        centroids are the same (making it again costs about 0.5 s at 65,536 centroids)."""
        old, digest = self.data, fresh.shared_digests.get("centroids.npy")
        if "selector" in old.__dict__ and digest is not None and digest == old.shared_digests.get("centroids.npy"):
            fresh.selector = old.selector
        self.data = fresh

    @contextlib.contextmanager
    def _writing(self) -> Iterator[IndexData]:
        """A write: the writer lock held, the newest version loaded (and yielded), and
        :meth:`refresh` idle until the write has saved and taken its new version."""
        with self._writes_lock:
            self._writes += 1
        try:
            with index_lock(self.path):
                self._reload_if_changed()
                yield self.data
        finally:
            with self._writes_lock:
                self._writes -= 1

    def pinned(self) -> LocalIndex:
        """This index as the version held now, for a batch of searches that must all read one
        version while writes go on (sharing this object's BM25 analyzers)."""
        return LocalIndex(self.data, self.path, self._analyzers)

    def changed_on_disk(self) -> bool:
        """Whether another version than the one held is in the folder now."""
        return IndexData.current_version(self.path) != self.data.version

    def close(self) -> None:
        for segment in self.data.segments:
            segment.documents.close()


def _returnable(record: dict) -> dict | None:
    """A stored document's metadata, or None (logged) for metadata nested deeper than the bound
    that an index written before it may hold: every search still answers."""
    metadata = record["metadata"]
    if within_bounds(metadata):
        return metadata
    logger.warning("document %r: its metadata nests deeper than %d levels and is not returned (delete and add the "
                   "document again with flatter metadata)", record["id"], MAX_METADATA_DEPTH)
    return None
