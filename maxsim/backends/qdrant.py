"""A Qdrant collection as a backend (:mod:`maxsim.qdrant` says how maxsim lays one out).

Items are numbered per search: a row's positions index the points that search returned (the
ranking's ``items``), each carrying its document's id, its chunk's text and the metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch

from maxsim.backends.base import Chunking, EncodedDocuments, Passage
from maxsim.errors import SettingsError, UnknownIdError
from maxsim.index.filters import Filter
from maxsim.model import ColBERT
from maxsim.muvera import Muvera
from maxsim.progress import progress
from maxsim.qdrant import QdrantIndex, QdrantSettings, connect
from maxsim.ranking import Ranking

#: documents encoded and written to Qdrant at a time
QDRANT_SHARD = 1024


class QdrantBackend:
    """The collection ``collection`` (a :class:`~maxsim.qdrant.QdrantIndex`).

    ``first_stage`` (default True): search through the MUVERA vector's HNSW first, then MaxSim;
    False scores every point by exact MaxSim. ``ndocs`` sets the candidates the first stage
    passes on (default max(100, 10 k)); ``ncells`` and hybrid search have no meaning here."""

    kind = "qdrant"

    def __init__(self, collection: QdrantIndex, first_stage: bool = True) -> None:
        self.collection, self.first_stage = collection, first_stage

    @property
    def location(self) -> str:
        return f"Qdrant collection {self.collection.collection!r}"

    @property
    def dim(self) -> int:
        return self.collection.settings.dim

    @property
    def model_digest(self) -> str | None:
        return self.collection.settings.model_digest

    @property
    def model_path(self) -> str | None:
        return self.collection.settings.model_path

    def check_model(self, model: ColBERT, allow_mismatch: bool = False) -> None:
        self.collection.check_model(model.settings.dim, None if allow_mismatch else model.digest())

    @property
    def chunking(self) -> Chunking:
        settings = self.collection.settings.model_settings or {}
        return Chunking(settings.get("split_documents", True), settings.get("max_document_tokens"))

    def check_filter(self, filter: Mapping) -> None:
        self.collection.check_fields(Filter(filter))

    def search(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int, filter: Mapping | None = None,
               ncells: int | None = None, centroid_score_threshold: float | None = None, ndocs: int | None = None,
               pool=None) -> Ranking:
        found = self.collection.search(q_vectors.numpy(), q_mask.numpy(), k, filter, self.first_stage, ndocs)
        items, rows = [], []
        for row in found:
            rows.append((list(range(len(items), len(items) + len(row))), [score for _, score, _ in row]))
            items.extend(Passage(d, p.get("content", ""), p.get("metadata"), p.get("chunk")) for d, _, p in row)
        ranking = Ranking.from_rows(rows, k)
        ranking.items = items
        return ranking

    def search_hybrid(self, *args, **kwargs):
        raise SettingsError("hybrid search needs maxsim's own index (its BM25 side); a Qdrant collection has none: "
                            "search it without hybrid")

    def search_bm25(self, *args, **kwargs):
        raise SettingsError("BM25 search needs maxsim's own index (its BM25 side); a Qdrant collection has none")

    def require_bm25(self) -> None:
        self.search_hybrid()

    def passages(self, ranking: Ranking, whole: bool = False) -> list[list[Passage]]:
        return [[ranking.items[p] for p in ranking.row(i)[0].tolist()] for i in range(len(ranking))]

    def document(self, document_id: str) -> Passage | None:
        raise SettingsError("a document's whole text is kept by maxsim's own index; a Qdrant collection holds its "
                            "chunks, each hit's content")

    def prepare(self, encoded: EncodedDocuments) -> EncodedDocuments:
        self._refuse_present(encoded.records)
        return encoded

    def add(self, encoded: EncodedDocuments) -> None:
        """Upsert documents (ids already there are refused, as by an index)."""
        self._refuse_present(encoded.records)
        self.collection.upsert(encoded.records, encoded.vectors, encoded.doclens, encoded.chunk_docs, encoded.spans)

    def _refuse_present(self, records: list[dict]) -> None:
        clash = sorted(self.collection.present([r["id"] for r in records]))
        if clash:
            raise SettingsError(f"already in the collection: {clash[:5]}; delete them first to replace them")

    def delete(self, document_ids: Sequence[str]) -> int:
        """Delete documents; an id the collection does not hold is an error, as by an index."""
        wanted = list(dict.fromkeys(document_ids))
        missing = sorted(set(wanted) - self.collection.present(wanted))
        if missing:
            raise UnknownIdError(f"not in the collection: {missing[:5]}")
        self.collection.delete(wanted)
        return len(wanted)

    def present(self, document_ids: Sequence[str]) -> set[str]:
        return self.collection.present(list(document_ids))

    def count(self) -> int:
        return self.collection.count()

    def status(self) -> dict:
        return {"qdrant": self.collection.collection, "documents": self.collection.count(), "chunks": None,
                "version": None}

    def refresh(self) -> bool:
        return False  # (Qdrant serves its newest points itself)

    def changed_on_disk(self) -> bool:
        return False

    def pinned(self) -> QdrantBackend:
        return self

    def close(self) -> None:
        pass


def collection_settings(model: ColBERT, model_path: str | None, storage: str, first_stage: bool,
                        muvera: Mapping | None, split_documents: bool,
                        max_document_tokens: int | None) -> QdrantSettings:
    """What a collection of ``model``'s vectors records: the model, the storage, and the MUVERA
    first stage's settings (:class:`maxsim.muvera.Muvera`; none without ``first_stage``)."""
    encoder = Muvera(dim=model.settings.dim, **dict(muvera or {})) if first_stage else None
    return QdrantSettings(model.settings.dim, model.digest(), model_path, storage,
                          None if encoder is None else dataclasses.asdict(encoder),
                          model.settings.model_dump() | {"split_documents": split_documents,
                                                         "max_document_tokens": max_document_tokens})


def open_collection(client_or_url, collection: str) -> QdrantBackend:
    """The maxsim collection ``collection`` of a ``QdrantClient``, a server's URL, ``":memory:"``
    or a local folder (:func:`maxsim.qdrant.connect`)."""
    return QdrantBackend(QdrantIndex(connect(client_or_url), collection))


def create_collection(client_or_url, collection: str, settings: QdrantSettings,
                      overwrite: bool = False) -> QdrantBackend:
    """A new, empty collection recording ``settings`` (one already there is refused unless ``overwrite``)."""
    backend = open_collection(client_or_url, collection)
    backend.collection.create(settings, overwrite=overwrite)
    return backend


def fill_collection(backend: QdrantBackend, records: Sequence[dict], encode: Callable[[Sequence[str]], tuple],
                    show_progress: bool = False) -> None:
    """Write ``records`` ({"id", "content", "metadata"}) into a new collection, ``QDRANT_SHARD``
    at a time, each shard's texts chunked and encoded by ``encode`` (texts -> vectors, doclens,
    chunk_docs, spans)."""
    bar = progress(len(records), "indexing into Qdrant", "documents", show_progress)
    try:
        for at in range(0, len(records), QDRANT_SHARD):
            shard = list(records[at : at + QDRANT_SHARD])
            backend.collection.upsert(shard, *encode([r["content"] for r in shard]))
            bar.update(len(shard))
    finally:
        bar.close()
