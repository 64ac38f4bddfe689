"""Put a trained checkpoint to work: a ColBERT model plus a backend (:mod:`maxsim.backends`).

The model turns text into vectors (documents into chunks, with
:meth:`ColBERT.tokenize_document_chunks`), the backend stores and searches them, and the
retriever turns what the backend ranks into :class:`~maxsim.ranking.Hit`.
``Retriever.from_pretrained(checkpoint).index(documents, path=...)`` builds maxsim's own index;
``Retriever.from_index(path).search(query)`` answers from it, and ``Retriever.from_qdrant``
from a Qdrant collection. ``rerank`` and ``encode`` + ``search_encoded`` work without an index,
for small in-memory sets (:mod:`maxsim.in_memory`). Scores are always
:func:`maxsim.scoring.maxsim`, the same MaxSim as in training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from maxsim.backends import Backend, Chunking, EncodedDocuments
from maxsim.backends.base import check_dim
from maxsim.backends.local import LocalIndex
from maxsim.backends.qdrant import (
    QdrantBackend,
    collection_settings,
    create_collection,
    fill_collection,
    open_collection,
)
from maxsim.errors import SettingsError, UnknownIdError
from maxsim.fusion import Hybrid
from maxsim.in_memory import EncodedSet, rerank
from maxsim.index import IndexData, IndexLoadError
from maxsim.index_settings import DEFAULT_BM25_LANGUAGE, default
from maxsim.indexing import INDEX_ROOT, build_index, index_folder, settings_for
from maxsim.inputs import DEFAULT_K, check_k, checked_ids, checked_queries, checked_records
from maxsim.model import ColBERT, InferenceForward
from maxsim.progress import in_notebook
from maxsim.ranking import Hit, Ranking, hits_of
from maxsim.search_config import ModelSearch, SearchConfig
from maxsim.text_encoder import TextEncoder

logger = logging.getLogger(__name__)

__all__ = ["INDEX_ROOT", "EncodedDocuments", "Hit", "Retriever", "check_k", "index_folder"]

class Retriever:
    """A ColBERT model and, optionally, the backend holding the documents it searches.

    ``index`` and ``index_path`` (an :class:`IndexData` and its folder) make the backend maxsim's
    own index; ``backend`` gives any other."""

    def __init__(self, model: ColBERT, index: IndexData | None = None, index_path: Path | None = None,
                 model_path: str | None = None, backend: Backend | None = None) -> None:
        self.model = model
        if index is not None:
            backend = LocalIndex(index, index_path if index_path is not None else index.path)
        self.backend: Backend | None = backend
        #: where the model came from (recorded in indexes built here so they can be reopened)
        self.model_path = model_path if model_path is not None else model.source
        self._encoded = EncodedSet()
        self.encoder = TextEncoder(model)
        model.warn_if_untrained("indexing or searching")
        if backend is not None:
            check_dim(backend, model)
        #: the search configuration the model's folder carries (``search.json``)
        self.model_search = ModelSearch(self.model_path)

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, device: str | None = None) -> Retriever:
        """A retriever over a maxsim checkpoint (None: the untrained bundled MiniLM)."""
        return cls(ColBERT.from_pretrained(checkpoint, device=device))

    @classmethod
    def from_index(cls, path: str | Path, model: ColBERT | None = None, device: str | None = None,
                   allow_model_mismatch: bool = False) -> Retriever:
        """Load an index and the model that built it (or ``model``): :meth:`over` its folder."""
        return cls.over(LocalIndex.open(path), model, device, allow_model_mismatch)

    @classmethod
    def from_qdrant(cls, client_or_url, collection: str, model: ColBERT | str | Path | None = None,
                    device: str | None = None, allow_model_mismatch: bool = False) -> Retriever:
        """A retriever over a Qdrant collection made by maxsim (:mod:`maxsim.qdrant`):
        ``client_or_url`` is a ``QdrantClient``, a server's URL, ``":memory:"`` or a local folder;
        the rest as :meth:`over`. ``retriever.backend.first_stage = False`` scores every point exactly."""
        return cls.over(open_collection(client_or_url, collection), model, device, allow_model_mismatch)

    @classmethod
    def over(cls, backend: Backend, model: ColBERT | str | Path | None = None, device: str | None = None,
             allow_model_mismatch: bool = False) -> Retriever:
        """A retriever over ``backend`` with the model its documents were encoded with (the
        folder it records), or ``model`` (a ColBERT or its folder).

        A backend records the identity of its model (:meth:`ColBERT.digest`); a model whose
        weights or settings differ from it (the model folder was replaced since, say) is refused,
        because its query vectors would not match the stored document vectors. Pass
        ``allow_model_mismatch=True`` for a deliberate swap (then it is only logged)."""
        source = backend.model_path
        if model is None:
            if not source:
                raise IndexLoadError(
                    f"{backend.location} was built with a model held in memory, not loaded from a folder, so it "
                    "cannot say which model to load: pass it (Retriever.from_index(path, model=...)), or build "
                    "with a saved model (ColBERT.save, then Retriever.from_pretrained(folder))")
            model = source
        if not isinstance(model, ColBERT):
            model = ColBERT.from_pretrained(model, device=device)
        backend.check_model(model, allow_model_mismatch)
        return cls(model, model_path=source, backend=backend)

    # ------------------------------------------------------------------ the backend
    @property
    def index_data(self) -> IndexData | None:
        """The version of maxsim's index held now (None: no index, or another backend)."""
        return self.backend.data if isinstance(self.backend, LocalIndex) else None

    @property
    def index_path(self) -> Path | None:
        """The folder of maxsim's index (None: no index, or another backend)."""
        return self.backend.path if isinstance(self.backend, LocalIndex) else None

    def _require_backend(self) -> Backend:
        if self.backend is None:
            raise SettingsError("no index: call index(...) first or load one with Retriever.from_index(path)")
        return self.backend

    def refresh(self) -> bool:
        """Take other processes' writes to the backend; True if there were any. While this
        retriever is writing (from another thread) it does nothing."""
        return self._require_backend().refresh()

    def document_count(self) -> int:
        """Documents searchable now."""
        return self._require_backend().count()

    def status(self) -> dict:
        """Where the documents live and how many (for a service's health answer)."""
        return self._require_backend().status()

    # ------------------------------------------------------------------ encoding
    @property
    def inference_forward(self) -> InferenceForward | None:
        """The frozen CPU copy the model encodes through (None: the model itself, in float32)."""
        return self.encoder.inference_forward

    @inference_forward.setter
    def inference_forward(self, forward: InferenceForward | None) -> None:
        self.encoder.inference_forward = forward

    def query_vectors(self, queries: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, query_maxlen, dim) float32 CPU vectors and their (Q, query_maxlen) mask."""
        return self.encoder.queries(queries, batch_size)

    # ------------------------------------------------------------------ building
    def index(self, documents: Sequence[str], path: str | Path | None = None,
              document_ids: Sequence[str] | None = None, metadata: Sequence[dict] | None = None,
              split_documents: bool = default("split_documents"), max_document_tokens: int | None = None,
              nbits: int | None = None, seed: int = default("seed"), batch_size: int = 64,
              name: str | None = None, overwrite: bool = False, show_progress: bool | None = None,
              pool_factor: int = default("pool_factor"), bm25_language: str | None = DEFAULT_BM25_LANGUAGE) -> Path:
        """Encode, compress and write an index of ``documents``; returns its folder: ``path``, or
        ``INDEX_ROOT/name`` (``.maxsim/indexes/NAME``) for a ``name``, as RAGatouille's
        ``index_name``. An index already there is replaced only with ``overwrite=True``, and a
        folder holding anything else is never touched. Documents longer than
        ``max_document_tokens`` (default: the model's doc_maxlen) are split into chunks unless
        ``split_documents=False``; ``nbits`` default: 4 under 10,000 documents, else 2 (``nbits_for``);
        ``pool_factor`` N > 1 stores about 1/N of each chunk's vectors;
        the BM25 side is kept in ``bm25_language`` (None: none); ``show_progress`` (default: in a
        notebook) draws each stage. :mod:`maxsim.indexing` says how a build streams and resumes."""
        records = checked_records(documents, document_ids, metadata)
        return self.index_records(records, path, split_documents, max_document_tokens, nbits, seed, batch_size, name,
                                  overwrite, show_progress, pool_factor, bm25_language)

    def index_records(self, records: Sequence[dict], path: str | Path | None = None,
                      split_documents: bool = default("split_documents"), max_document_tokens: int | None = None,
                      nbits: int | None = None, seed: int = default("seed"), batch_size: int = 64,
                      name: str | None = None, overwrite: bool = False, show_progress: bool | None = None,
                      pool_factor: int = default("pool_factor"),
                      bm25_language: str | None = DEFAULT_BM25_LANGUAGE) -> Path:
        """:meth:`index` of records already checked, ``{"id", "content", "metadata"}`` each: any
        sequence whose slices are lists of them, such as :class:`maxsim.data.corpus_file.CorpusFile`,
        which reads a ``corpus.jsonl`` shard by shard instead of holding every text."""
        path = Path(path) if path is not None else index_folder(name)
        if bm25_language is None:
            self.model_search.warn_without_bm25()
        settings = settings_for(self.model, self.model_path, self.encoder.precision(), nbits=nbits, seed=seed,
                                split_documents=split_documents, max_document_tokens=max_document_tokens,
                                pool_factor=pool_factor, bm25_language=bm25_language, n_documents=len(records))
        chunking = Chunking(split_documents, max_document_tokens, pool_factor)
        data = build_index(records, path, settings, lambda texts: self.encoder.chunks(texts, chunking, batch_size),
                           self.model.device.type, overwrite, in_notebook() if show_progress is None else show_progress)
        self.backend = LocalIndex(data, path)
        return path

    def index_to_qdrant(self, records: Sequence[dict], client_or_url, collection: str, storage: str = "float16",
                        first_stage: bool = True, muvera: Mapping | None = None, split_documents: bool = True,
                        max_document_tokens: int | None = None, batch_size: int = 64, overwrite: bool = False,
                        show_progress: bool = False) -> Retriever:
        """Encode ``records`` ({"id", "content", "metadata"}) into a new Qdrant collection, one
        point a chunk, with a MUVERA first-stage vector unless ``first_stage=False`` (``muvera``:
        :class:`maxsim.muvera.Muvera`'s settings); returns a retriever over it."""
        settings = collection_settings(self.model, self.model_path, storage, first_stage, muvera, split_documents,
                                       max_document_tokens)
        backend = create_collection(client_or_url, collection, settings, overwrite=overwrite)
        chunking = Chunking(split_documents, max_document_tokens)
        fill_collection(backend, records, lambda texts: self.encoder.chunks(texts, chunking, batch_size), show_progress)
        retriever = Retriever(self.model, model_path=self.model_path, backend=backend)
        retriever.inference_forward = self.inference_forward
        return retriever

    # ------------------------------------------------------------------ changing
    def add(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
            metadata: Sequence[dict] | None = None, batch_size: int = 64) -> None:
        """Add documents to the index (existing centroids and codec; no re-encoding of the rest).

        Everything is checked before anything changes. The change is made under the index's
        writer lock, on the newest version on disk (documents another process added meanwhile
        are kept), and this retriever sees the result only once it is saved: a failed save
        (a full disk, say) leaves both the folder and this object as they were. The same as
        :meth:`encode_for_index` then :meth:`add_encoded`.
        """
        self.add_encoded(self.encode_for_index(documents, document_ids, metadata, batch_size))

    def encode_for_index(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
                         metadata: Sequence[dict] | None = None, batch_size: int = 64) -> EncodedDocuments:
        """The first half of :meth:`add`: documents, ids and metadata checked against the backend
        and encoded, chunk by chunk, as it stores them (the model's work; nothing is locked or written)."""
        backend = self._require_backend()
        records = checked_records(documents, document_ids, metadata)
        encoded = self.encoder.chunks([r["content"] for r in records], backend.chunking, batch_size)
        return backend.prepare(EncodedDocuments(records, *encoded))

    def add_encoded(self, encoded: EncodedDocuments) -> None:
        """The second half of :meth:`add`: the encoded documents written by the backend (for
        maxsim's index: under the writer lock, on the newest version, saved, then seen here)."""
        self._require_backend().add(encoded)

    def delete(self, document_ids: str | Sequence[str]) -> int:
        """Remove documents (and their chunks); a str is one id. Returns how many documents were
        removed (an id given twice is removed once); an id not held is an UnknownIdError.
        Like :meth:`add`, under the writer lock, on the newest version, saved before it is seen."""
        backend = self._require_backend()
        return backend.delete(checked_ids(document_ids))

    # ------------------------------------------------------------------ searching
    checked_queries = staticmethod(checked_queries)  # (kept for callers of Retriever.checked_queries)

    def search_config(self, hybrid=None) -> SearchConfig:
        """The configuration a search with ``hybrid`` uses (None: the model's ``search.json``), and why."""
        return self.model_search.config(hybrid, self.backend)

    def search(self, queries: str | Sequence[str], k: int = DEFAULT_K, ncells: int | None = None,
               centroid_score_threshold: float | None = None, ndocs: int | None = None,
               filter: Mapping | None = None, hybrid: bool | str | Mapping | Hybrid | None = None):
        """The ``k`` best documents for each query: a list of :class:`Hit` (a list of lists for
        several queries, encoded in batches: faster than one call per query). Fewer than ``k``
        come back only when the index holds (or ``filter`` passes) fewer.

        ``filter`` limits the documents returned, by metadata or id, e.g. ``{"year": {"gte":
        2019}}`` (:mod:`maxsim.index.filters`); others are never scored. ``hybrid`` None (the
        default) does what the model's ``search.json`` chose on dev (:mod:`maxsim.search_config`);
        False: MaxSim alone; True, ``"rrf"``, ``"weighted"`` or a :class:`maxsim.fusion.Hybrid`:
        fused with BM25 (each hit then says both component scores)."""
        backend = self._require_backend()
        texts = checked_queries(queries)
        check_k(k)
        settings = self.search_config(hybrid).hybrid
        if settings is not None:
            backend.require_bm25()
        if filter is not None:
            backend.check_filter(filter)  # a bad filter fails before any encoding
        q_vectors, q_mask = self.query_vectors(texts)
        if settings is None:
            results = self.search_vectors(q_vectors, q_mask, k, ncells, centroid_score_threshold, ndocs, filter)
        else:
            results = self.search_hybrid_vectors(texts, q_vectors, q_mask, k, settings, ncells,
                                                 centroid_score_threshold, ndocs, filter)
        return results[0] if isinstance(queries, str) else results

    def search_vectors(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int = DEFAULT_K,
                       ncells: int | None = None, centroid_score_threshold: float | None = None,
                       ndocs: int | None = None, filter: Mapping | None = None, pool=None) -> list[list[Hit]]:
        """Search with queries already encoded: ``q_vectors`` (Q, Lq, dim) float32 CPU, ``q_mask``
        (Q, Lq). The backend's search says what ``ncells``, ``centroid_score_threshold`` and
        ``ndocs`` do (maxsim's index: :func:`maxsim.index.search`)."""
        check_k(k)
        backend = self._require_backend()
        return self.hits(backend.search(q_vectors, q_mask, k, filter, ncells, centroid_score_threshold, ndocs, pool),
                         backend)

    def search_hybrid_vectors(self, texts: list[str], q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int,
                              settings: Hybrid, ncells: int | None = None, threshold: float | None = None,
                              ndocs: int | None = None, filter: Mapping | None = None) -> list[list[Hit]]:
        """Hybrid search of queries (``texts``) already encoded (``q_vectors`` (Q, Lq, dim),
        ``q_mask`` (Q, Lq)), fused as ``settings`` say (:func:`maxsim.fusion.fuse`); the hits
        carry both component scores."""
        found = self._require_backend().search_hybrid(texts, q_vectors, q_mask, k, settings, filter, ncells,
                                                       threshold, ndocs)
        return self.hits(found[0], components=found[1])

    def search_bm25(self, queries: str | Sequence[str], k: int = DEFAULT_K, filter: Mapping | None = None):
        """The ``k`` best documents for each query by BM25 alone, over the index's BM25 side
        (statistics of the whole index); ``content`` is the whole text. Fewer than ``k`` come
        back when fewer documents hold a query term."""
        backend = self._require_backend()
        texts = checked_queries(queries)
        check_k(k)
        results = self.hits(backend.search_bm25(texts, k, filter), backend, whole=True)
        for hit in (hit for row in results for hit in row):
            hit.bm25_score = hit.score
        return results[0] if isinstance(queries, str) else results

    def hits(self, ranking: Ranking, backend: Backend | None = None, whole: bool = False,
             components: list | None = None) -> list[list[Hit]]:
        """The hits of a ranking of the backend's items (default the backend held now), as
        :func:`maxsim.ranking.hits_of` makes them (``whole``: the ranking is of documents)."""
        backend = backend if backend is not None else self._require_backend()
        return hits_of(ranking, backend.passages(ranking, whole), components)

    def document(self, document_id: str) -> dict:
        """A document's whole text and metadata, ``{"document_id", "content", "metadata"}`` (a hit is one of its
        chunks: ``hit.chunk``, ``hit.start``, ``hit.end``); an id not held is an UnknownIdError."""
        (wanted,) = checked_ids([document_id])
        found = self._require_backend().document(wanted)
        if found is None:
            raise UnknownIdError(f"not in the index: {wanted!r}")
        return {"document_id": found.document_id, "content": found.content, "metadata": found.metadata}

    # ------------------------------------------------------------------ in memory
    def rerank(self, query: str, documents: Sequence[str], k: int | None = None) -> list[Hit]:
        """Order ``documents`` by exact MaxSim to ``query``; ``document_id`` is the position.
        No documents, no hits."""
        return rerank(self.query_vectors, self.encoder.documents, query, documents, k)

    def encode(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
               metadata: Sequence[dict] | None = None) -> None:
        """Encode documents into memory (added to any encoded before) for :meth:`search_encoded`."""
        self._encoded.add(self.encoder.documents, documents, document_ids, metadata)

    def clear_encoded(self) -> None:
        """Forget the documents given to :meth:`encode`."""
        self._encoded = EncodedSet()

    def search_encoded(self, query: str, k: int = DEFAULT_K) -> list[Hit]:
        """Search the documents given to :meth:`encode` by exact MaxSim."""
        return self._encoded.search(self.query_vectors, query, k)


#: a retriever over a Qdrant collection is a :class:`Retriever` whose backend is a
#: :class:`~maxsim.backends.qdrant.QdrantBackend` (the name kept for code that imports it)
QdrantRetriever = Retriever
__all__ += ["QdrantBackend", "QdrantRetriever"]
