"""Put a trained checkpoint to work: index, search, add, delete, rerank, in-memory search.

The front end of :mod:`maxsim.index`: it turns text into vectors through the model (documents
into chunks, with :meth:`ColBERT.tokenize_document_chunks`) and chunk ids into :class:`Hit`; the
index builds, stores and searches. ``Retriever.from_pretrained(checkpoint).index(documents,
path=...)`` builds an index; ``Retriever.from_index(path).search(query)`` answers from it.
``rerank`` and ``encode`` + ``search_encoded`` work without an index, for small in-memory sets.
Scores are always :func:`maxsim.scoring.maxsim`, the same MaxSim as in training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maxsim import ranks
from maxsim.errors import SettingsError, UnknownIdError
from maxsim.files import check_replaceable
from maxsim.fusion import Hybrid, fuse, hybrid_settings
from maxsim.ids import stable_id
from maxsim.index import (
    IndexData,
    IndexLoadError,
    IndexSettings,
    chunk_scores,
    index_lock,
    is_index,
    search,
    search_defaults,
)
from maxsim.index.bm25_search import bm25_matches, bm25_top, require_bm25, scores_of
from maxsim.index.build import Shard, StreamingBuild
from maxsim.index.pooling import pool_tokens
from maxsim.lexical import Analyzer, check_language
from maxsim.limits import MAX_METADATA_DEPTH, check_metadata, check_name, check_query, check_text, within_bounds
from maxsim.model import ColBERT, InferenceForward
from maxsim.muvera import Muvera
from maxsim.progress import progress
from maxsim.qdrant import QdrantIndex, QdrantSettings, connect
from maxsim.ranking import Ranking
from maxsim.scoring import maxsim

logger = logging.getLogger(__name__)

INDEX_ROOT = Path(".maxsim") / "indexes"


@dataclass
class Hit:
    """One search result. ``rank`` starts at 1; ``content`` is the matching chunk's text.

    A hybrid search's hit says both components: ``maxsim_score`` (its best chunk's MaxSim) and
    ``bm25_score`` (its text's BM25, 0 when it holds no query term), ``score`` being the fused one.
    """

    document_id: str
    score: float
    rank: int
    content: str
    metadata: dict | None
    maxsim_score: float | None = None
    bm25_score: float | None = None

    def to_dict(self) -> dict:
        """The hit as a dict (its metadata the same object, not a copy); the component scores
        only where the search had them."""
        out = {"document_id": self.document_id, "score": self.score, "rank": self.rank, "content": self.content,
               "metadata": self.metadata}
        if self.maxsim_score is not None:
            out["maxsim_score"] = self.maxsim_score
        if self.bm25_score is not None:
            out["bm25_score"] = self.bm25_score
        return out


def _returnable(record: dict) -> dict | None:
    """A stored document's metadata, or None (logged) for metadata nested deeper than the bound
    that an index written before it may hold: every search still answers."""
    metadata = record["metadata"]
    if within_bounds(metadata):
        return metadata
    logger.warning("document %r: its metadata nests deeper than %d levels and is not returned (delete and add "
                   "the document again with flatter metadata)", record["id"], MAX_METADATA_DEPTH)
    return None


def index_folder(name: str | None) -> Path:
    """``INDEX_ROOT/name`` for an index known by name; the name must be one plain folder name.

    >>> index_folder("scifact").as_posix()
    '.maxsim/indexes/scifact'
    >>> index_folder("../elsewhere")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: index name '../elsewhere' must be one folder name ...
    """
    if not name:
        raise SettingsError("give the index a path= (a folder) or a name= (kept under .maxsim/indexes/)")
    check_name(name, "index name", INDEX_ROOT)
    return INDEX_ROOT / name


def check_k(k: int) -> None:
    """Refuse a ``k`` that is not a whole number of 1 or more (``True`` included)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise SettingsError(f"k must be a whole number of 1 or more, got {k!r}")


def check_model(data: IndexData, model: ColBERT, path, allow_mismatch: bool = False) -> None:
    """Refuse (or, with ``allow_mismatch``, log) a model other than the one an index was built with."""
    if data.dim != model.settings.dim:
        raise IndexLoadError(f"the index holds {data.dim}-dim vectors but the model makes "
                             f"{model.settings.dim}-dim ones: use the model the index was built with")
    recorded = data.settings.model_digest
    if recorded is None:
        logger.warning("%s records no model digest (built by an older maxsim): it cannot be checked that "
                       "the model is the one that built it", path)
        return
    if model.digest() == recorded:
        return
    message = (f"the model ({model.source or 'in memory'}) is not the one {path} was built with (its weights or "
               f"settings differ from those recorded, {recorded[:12]}...): its query vectors would not match the "
               "stored documents")
    if not allow_mismatch:
        raise IndexLoadError(message + ". Fix: use the model the index was built with, rebuild the index with "
                             "this one, or pass --allow-model-mismatch (allow_model_mismatch=True) for a "
                             "deliberate swap")
    logger.warning("%s; going on as asked (allow_model_mismatch)", message)


@dataclass
class EncodedDocuments:
    """Documents ready for :meth:`Retriever.add_encoded`: their records (id, content, metadata)
    and their chunks' token vectors, (T, dim) float32 back to back, with ``doclens`` (N,) tokens
    per chunk, ``chunk_docs`` (N,) each chunk's document among ``records`` and ``spans``; and
    the vectors compressed (``codes``, ``residuals``) with the index's ``centroids`` of then."""

    records: list[dict]
    vectors: np.ndarray
    doclens: np.ndarray
    chunk_docs: np.ndarray
    spans: list[tuple[int, int]]
    codes: np.ndarray
    residuals: np.ndarray
    centroids: np.ndarray


class Retriever:
    """A ColBERT model and, optionally, the index it searches."""

    def __init__(self, model: ColBERT, index: IndexData | None = None, index_path: Path | None = None,
                 model_path: str | None = None) -> None:
        self.model = model
        self.index_data = index
        self.index_path = index_path
        #: where the model came from (recorded in indexes built here so they can be reopened)
        self.model_path = model_path if model_path is not None else model.source
        self._encoded: tuple | None = None
        self._analyzers: dict[str, Analyzer] = {}  # BM25's tokeniser per language, made on first use
        self._writes, self._writes_lock = 0, threading.Lock()  # writes of this retriever in progress
        # on a CPU, encode through a frozen bf16/traced copy (see InferenceForward); set this to
        # None to encode with the model itself in float32
        self.inference_forward: InferenceForward | None = (
            InferenceForward(model) if model.device.type == "cpu" else None)
        if index is not None and index.dim != model.settings.dim:
            raise IndexLoadError(f"the index holds {index.dim}-dim vectors but the model makes "
                                 f"{model.settings.dim}-dim ones: use the model the index was built with")

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, device: str | None = None) -> Retriever:
        """A retriever over a maxsim checkpoint (None: the untrained bundled MiniLM)."""
        return cls(ColBERT.from_pretrained(checkpoint, device=device))

    @classmethod
    def from_index(cls, path: str | Path, model: ColBERT | None = None, device: str | None = None,
                   allow_model_mismatch: bool = False) -> Retriever:
        """Load an index and the model that built it (or ``model``).

        The index records the identity of its model (:meth:`ColBERT.digest`); a model whose
        weights or settings differ from it (the model folder was replaced since, say) is refused,
        because its query vectors would not match the stored document vectors. Pass
        ``allow_model_mismatch=True`` for a deliberate swap (then it is only logged).
        """
        data = IndexData.load(path)
        source = data.settings.model_path
        if model is None:
            if not source:
                raise IndexLoadError(
                    f"{path} was built with a model held in memory, not loaded from a folder, so the index "
                    "cannot say which model to load: pass it, Retriever.from_index(path, model=...), or build "
                    "indexes with a saved model (ColBERT.save, then Retriever.from_pretrained(folder))")
            model = ColBERT.from_pretrained(source, device=device)
        check_model(data, model, path, allow_model_mismatch)
        return cls(model, data, Path(path), source)

    def refresh(self) -> bool:
        """Reload the index if another process changed it since it was loaded; True if it did.

        While this retriever is writing (from another thread) it does nothing: the folder may
        already hold the write's new version, which the write takes when it ends.
        """
        if self._writes:
            return False
        return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        data = self._require_index()
        if IndexData.current_version(self.index_path) == data.version:
            return False
        fresh = IndexData.load(self.index_path)
        if fresh.settings.model_digest != data.settings.model_digest:
            raise IndexLoadError(f"{self.index_path} was rebuilt with another model since it was loaded: "
                                 "open it again with Retriever.from_index")
        self.index_data = fresh
        return True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[IndexData]:
        """A write: the index's writer lock held, the newest version loaded (and yielded), and
        :meth:`refresh` idle until the write has saved and taken its new version."""
        with self._writes_lock:
            self._writes += 1
        try:
            with index_lock(self.index_path):
                self._reload_if_changed()
                yield self.index_data
        finally:
            with self._writes_lock:
                self._writes -= 1

    # ------------------------------------------------------------------ building
    def _encode_chunks(self, documents: Sequence[str], split: bool, max_tokens: int | None, batch_size: int,
                       pool_factor: int = 1):
        """Each document's chunks encoded (each chunk's vectors pooled by ``pool_factor``):
        (vectors (T, dim) float32 back to back, doclens (N,) int32, chunk_docs (N,) int32
        position of each chunk's document, spans (N,) of (start, end))."""
        chunks = self.model.tokenize_document_chunks(documents, split, max_tokens)
        flat = [tokens for doc in chunks for tokens, _ in doc]
        spans = [span for doc in chunks for _, span in doc]
        chunk_docs = np.array([i for i, doc in enumerate(chunks) for _ in doc], dtype=np.int32)
        per_chunk = [pool_tokens(v.numpy(), pool_factor)
                     for v in self.model.encode_token_ids(flat, False, batch_size, self.inference_forward)]
        doclens = np.array([len(v) for v in per_chunk], dtype=np.int32)
        return np.concatenate(per_chunk) if per_chunk else np.zeros((0, self.model.settings.dim)), doclens, \
            chunk_docs, spans

    @staticmethod
    def _records(documents, document_ids, metadata) -> list[dict]:
        """Check documents, ids and metadata before any work; returns ``{"id", "content", "metadata"}``
        records. Metadata must be a JSON object (or None) per document, since it is saved as JSON."""
        if isinstance(documents, str):
            documents = [documents]
            document_ids = [document_ids] if isinstance(document_ids, (str, int)) else document_ids
            metadata = [metadata] if isinstance(metadata, dict) else metadata
        if documents is None or isinstance(document_ids, str) or isinstance(metadata, dict):
            raise SettingsError("give documents, document_ids and metadata as lists (one entry per document)")
        documents = list(documents)
        if not documents or any(not isinstance(d, str) or not d.strip() for d in documents):
            raise SettingsError("documents must be a non-empty list of non-empty strings")
        for i, d in enumerate(documents):
            check_text(d, f"document at position {i}")
        ids = [str(i) for i in document_ids] if document_ids is not None else [stable_id(d, "d") for d in documents]
        if len(ids) != len(documents) or (metadata is not None and len(metadata) != len(documents)):
            raise SettingsError("document_ids and metadata need one entry per document")
        if len(set(ids)) != len(ids):
            raise SettingsError("document ids must be unique")
        if any(not i for i in ids):
            raise SettingsError("document ids must be non-empty")
        metadata = list(metadata) if metadata is not None else [None] * len(documents)
        for i, m in zip(ids, metadata):
            check_text(i, "document id")
            check_metadata(m, f"document {i!r}")
        return [{"id": i, "content": d, "metadata": m} for i, d, m in zip(ids, documents, metadata)]

    def index(self, documents: Sequence[str], path: str | Path | None = None,
              document_ids: Sequence[str] | None = None, metadata: Sequence[dict] | None = None,
              split_documents: bool = True, max_document_tokens: int | None = None, nbits: int = 2,
              seed: int = 0, batch_size: int = 64, name: str | None = None, overwrite: bool = False,
              show_progress: bool = False, pool_factor: int = 1, bm25_language: str | None = "en") -> Path:
        """Encode, compress and write an index of ``documents``; returns its folder.

        The folder is ``path``, or ``INDEX_ROOT/name`` (``.maxsim/indexes/NAME`` under the current
        directory) when only a ``name`` (one folder name) is given, as RAGatouille's ``index_name``.
        The folder must be new or empty; an index already there is replaced (atomically) only with
        ``overwrite=True``, and a folder holding anything else is never touched. Documents longer
        than ``max_document_tokens`` (default: the model's doc_maxlen) are split into chunks
        unless ``split_documents=False``.

        Documents are encoded and compressed in shards (:class:`maxsim.index.build.StreamingBuild`),
        so memory does not grow with the corpus (under torchrun, every rank calls this with the
        same documents and they share the shards and segments out, each rank's model on its own
        device); a build that was killed resumes from the shards it
        had done when it is run again with the same documents and settings. ``show_progress``
        shows each stage's rate and time left. ``pool_factor`` N > 1 stores about 1/N of each
        chunk's vectors (:mod:`maxsim.index.pooling`, as PyLate's ``pool_factor``); the factor is
        saved with the index and documents added later are pooled alike.

        The index also keeps a BM25 side over the texts, in ``bm25_language``'s stop words and
        stemmer (:data:`maxsim.lexical.BM25_LANGUAGES`; None: none), for ``search(hybrid=...)``.
        """
        records = self._records(documents, document_ids, metadata)
        return self.index_records(records, path, split_documents, max_document_tokens, nbits, seed, batch_size, name,
                                  overwrite, show_progress, pool_factor, bm25_language)

    def index_records(self, records: Sequence[dict], path: str | Path | None = None, split_documents: bool = True,
                      max_document_tokens: int | None = None, nbits: int = 2, seed: int = 0, batch_size: int = 64,
                      name: str | None = None, overwrite: bool = False, show_progress: bool = False,
                      pool_factor: int = 1, bm25_language: str | None = "en") -> Path:
        """:meth:`index` of records already checked, ``{"id", "content", "metadata"}`` each: any
        sequence whose slices are lists of them, such as :class:`maxsim.data.corpus_file.CorpusFile`,
        which reads a ``corpus.jsonl`` shard by shard instead of holding every text."""
        if nbits not in (1, 2, 4):
            raise SettingsError("nbits must be 1, 2 or 4")
        if not isinstance(pool_factor, int) or isinstance(pool_factor, bool) or pool_factor < 1:
            raise SettingsError(f"pool_factor must be a whole number of 1 or more (1: no pooling), got {pool_factor!r}")
        if bm25_language is not None:
            check_language(bm25_language, "pass one of them as the language (--language), or None for no BM25 side")
        path = Path(path) if path is not None else index_folder(name)
        check_replaceable(path, is_index, "maxsim index", overwrite, "--overwrite (overwrite=True)")
        settings = IndexSettings(
            nbits=nbits, dim=self.model.settings.dim, model_path=self.model_path, model_digest=self.model.digest(),
            model_settings=self.model.settings.model_dump(), split_documents=split_documents,
            max_document_tokens=max_document_tokens or self.model.settings.doc_maxlen, seed=seed,
            encoded_in=self._encoding_precision(), pool_factor=pool_factor, bm25_language=bm25_language)

        def encode(shard: Sequence[dict]) -> Shard:
            vectors, doclens, chunk_docs, spans = self._encode_chunks([r["content"] for r in shard], split_documents,
                                                                      max_document_tokens, batch_size, pool_factor)
            return Shard(vectors, doclens, chunk_docs, np.asarray(spans, dtype=np.int32).reshape(-1, 2))

        context = ranks.setup(self.model.device.type) if ranks.launched() else ranks.Context()
        try:
            with index_lock(path) if context.is_main else contextlib.nullcontext():  # (rank 0 holds it for all)
                if context.is_main:
                    check_replaceable(path, is_index, "maxsim index", overwrite, "--overwrite (overwrite=True)")
                data = StreamingBuild(path, records, settings, encode, show_progress=show_progress,
                                      context=context).run()
        finally:
            ranks.teardown(context, completed=False)
        self.index_data, self.index_path = data, path
        logger.info("indexed %d documents (%d chunks, %d tokens, %d centroids, %d segments) in %s", data.n_documents,
                    data.n_chunks, data.n_tokens, len(data.centroids), len(data.segments), path)
        return path

    def _encoding_precision(self) -> str:
        """How documents are encoded here: the inference copy's dtype, bf16 autocast on CUDA, or float32."""
        if self.inference_forward is not None:
            return str(self.inference_forward.dtype).removeprefix("torch.")
        return "bfloat16 autocast" if self.model.device.type == "cuda" else "float32"

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
        """The first half of :meth:`add`: documents, ids and metadata checked against this index
        and encoded, chunk by chunk (the model's work; nothing is locked or written)."""
        data = self._require_index()
        records = self._records(documents, document_ids, metadata)
        self._refuse_present(data, records)
        vectors, doclens, chunk_docs, spans = self._encode_chunks(
            [r["content"] for r in records], data.settings.split_documents,
            data.settings.max_document_tokens, batch_size, data.settings.pool_factor)
        return EncodedDocuments(records, vectors, doclens, chunk_docs, spans, *data.compress(vectors), data.centroids)

    def add_encoded(self, encoded: EncodedDocuments) -> None:
        """The second half of :meth:`add`: under the writer lock, on the newest version, the
        encoded documents put into the index, saved, and then seen by this retriever. Their
        compression is redone only if the index was rebuilt (other centroids) meanwhile."""
        self._require_index()
        with self._writing() as data:
            self._refuse_present(data, encoded.records)
            codes, residuals = encoded.codes, encoded.residuals
            if not np.array_equal(encoded.centroids, data.centroids):
                codes, residuals = data.compress(encoded.vectors)
            changed = data.with_documents(codes, residuals, encoded.doclens, encoded.records, encoded.chunk_docs,
                                          encoded.spans)
            changed.save(self.index_path)
            self.index_data = changed

    @staticmethod
    def _refuse_present(data: IndexData, records: list[dict]) -> None:
        existing = data.positions_of([r["id"] for r in records])
        clash = [r["id"] for r in records if r["id"] in existing]
        if clash:
            raise SettingsError(f"already in the index: {clash[:5]}; delete them first to replace them")

    def delete(self, document_ids: str | Sequence[str]) -> int:
        """Remove documents (and their chunks) from the index; a str is one id. Returns how many
        documents were removed (an id given twice is removed once).

        Like :meth:`add`, under the writer lock, on the newest version, saved before it is seen.
        """
        self._require_index()
        if isinstance(document_ids, (str, int)):
            document_ids = [document_ids]
        wanted = list(dict.fromkeys(str(i) for i in document_ids))
        if not wanted:
            return 0
        with self._writing() as data:
            position = data.positions_of(wanted)
            missing = [i for i in wanted if i not in position]
            if missing:
                raise UnknownIdError(f"not in the index: {missing[:5]}")
            changed = data.without_documents({position[i] for i in wanted})
            changed.save(self.index_path)
            self.index_data = changed
        return len(wanted)

    def document_count(self) -> int:
        """Documents searchable now."""
        return self._require_index().n_documents

    def status(self) -> dict:
        """Where the documents live and how many (for a service's health answer)."""
        data = self._require_index()
        return {"index": str(self.index_path), "documents": data.n_documents, "chunks": data.n_chunks,
                "version": data.version}

    def _require_index(self) -> IndexData:
        if self.index_data is None or self.index_path is None:
            raise SettingsError("no index: call index(...) first or load one with Retriever.from_index(path)")
        return self.index_data

    # ------------------------------------------------------------------ searching
    def query_vectors(self, queries: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, query_maxlen, dim) float32 CPU vectors and their (Q, query_maxlen) mask."""
        return self.model.encode_queries(list(queries), batch_size=batch_size, padded=True,
                                         forward=self.inference_forward)

    def _document_vectors(self, documents: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_documents(list(documents), padded=True, forward=self.inference_forward)

    def search(self, queries: str | Sequence[str], k: int = 10, ncells: int | None = None,
               centroid_score_threshold: float | None = None, ndocs: int | None = None,
               filter: Mapping | None = None, hybrid: bool | str | Mapping | Hybrid | None = None):
        """The ``k`` best documents for each query: a list of :class:`Hit` (a list of lists for
        several queries). Several queries are encoded in batches, which is where a batch of
        queries saves time over one call per query. Fewer than ``k`` hits come back only when the
        index holds fewer than ``k`` documents (or ``filter`` passes fewer).

        ``filter`` limits the documents returned, by metadata or id, e.g.
        ``{"year": {"gte": 2019}, "source": "pubmed"}`` (the grammar: :mod:`maxsim.index.filters`);
        documents outside it are never scored.

        ``hybrid`` fuses this ranking with BM25's over the documents' texts (the index's BM25
        side): True for the default fusion (:data:`maxsim.fusion.DEFAULT_HYBRID`), ``"rrf"`` or
        ``"weighted"``, or a :class:`maxsim.fusion.Hybrid` (or a dict of its fields); each hit then
        says both component scores. An index without a BM25 side refuses it (the error says how
        to add one)."""
        data = self._require_index()
        single = isinstance(queries, str)
        texts = self.checked_queries(queries)
        check_k(k)
        settings = hybrid_settings(hybrid)
        if settings is not None:
            require_bm25(data, self.index_path)
        if filter is not None:
            data.allowed(filter)  # a bad filter fails before any encoding
        q_vectors, q_mask = self.query_vectors(texts)
        if settings is None:
            results = self.search_vectors(q_vectors, q_mask, k, ncells, centroid_score_threshold, ndocs, filter)
        else:
            results = self.search_hybrid_vectors(texts, q_vectors, q_mask, k, settings, ncells,
                                                 centroid_score_threshold, ndocs, filter)
        return results[0] if single else results

    @staticmethod
    def checked_queries(queries) -> list[str]:
        """``queries`` (one string, or a list of them) as a list, each checked
        (:func:`maxsim.limits.check_query`); anything else is a SettingsError."""
        if not isinstance(queries, (str, list, tuple)):
            raise SettingsError(f"give a query (a string) or a non-empty list of query strings, got "
                                f"{type(queries).__name__}")
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise SettingsError("give a query (a string) or a non-empty list of query strings")
        for text in texts:
            check_query(text)
        return texts

    def _analyzer(self, language: str) -> Analyzer:
        if self._analyzers.get(language) is None:
            self._analyzers[language] = Analyzer(language)
        return self._analyzers[language]

    def search_bm25(self, queries: str | Sequence[str], k: int = 10, filter: Mapping | None = None):
        """The ``k`` best documents for each query by BM25 alone, over the index's BM25 side
        (statistics of the whole index); ``content`` is the whole text. Fewer than ``k`` come
        back when fewer documents hold a query term."""
        data = self._require_index()
        texts = self.checked_queries(queries)
        check_k(k)
        require_bm25(data, self.index_path)
        allowed = data.allowed(filter) if filter is not None else None
        analyzer = self._analyzer(data.settings.bm25_language)
        results = []
        for text in texts:
            numbers, scores = bm25_top(*bm25_matches(data, *analyzer.query(text), allowed), k)
            records = data.documents_at(numbers.tolist())
            results.append([Hit(r["id"], float(sc), rank, r["content"], _returnable(r), bm25_score=float(sc))
                            for rank, (r, sc) in enumerate(zip(records, scores.tolist()), start=1)])
        return results[0] if isinstance(queries, str) else results

    def search_hybrid_vectors(self, texts: list[str], q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int,
                              settings: Hybrid, ncells: int | None = None, threshold: float | None = None,
                              ndocs: int | None = None, filter: Mapping | None = None) -> list[list[Hit]]:
        """Hybrid search of queries (``texts``) already encoded (``q_vectors`` (Q, Lq, dim),
        ``q_mask`` (Q, Lq)): MaxSim's and BM25's ``settings.depth`` best documents of each query, fused
        (:func:`maxsim.fusion.fuse`); the hits carry both component scores, those a ranking did
        not hold computed exactly (a document's best chunk by MaxSim; BM25 of its text)."""
        data = self._require_index()
        require_bm25(data, self.index_path)
        depth = max(k, settings.depth)
        if ndocs is None:  # as many exactly scored as a plain search of k, or as cover ``depth`` documents
            ndocs = search_defaults(data.n_chunks, k)[2]
        dense = search(data, q_vectors, q_mask, depth, ncells, threshold, ndocs, filter=filter)
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
        results = self.hits(Ranking.from_rows(rows))
        for row, (maxsim_part, bm25_part) in zip(results, components):
            for hit, m, b in zip(row, maxsim_part, bm25_part):
                hit.maxsim_score, hit.bm25_score = float(m), float(b)
        return results

    def search_vectors(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int = 10, ncells: int | None = None,
                       centroid_score_threshold: float | None = None, ndocs: int | None = None,
                       filter: Mapping | None = None) -> list[list[Hit]]:
        """Search with queries already encoded: ``q_vectors`` (Q, Lq, dim) float32 CPU, ``q_mask``
        (Q, Lq). The search itself is :func:`maxsim.index.search` (which says what ``ncells``,
        ``centroid_score_threshold`` and ``ndocs`` do)."""
        check_k(k)
        data = self._require_index()
        ranking = search(data, q_vectors, q_mask, k, ncells, centroid_score_threshold, ndocs, filter=filter)
        return self.hits(ranking)

    def hits(self, ranking: Ranking, data: IndexData | None = None) -> list[list[Hit]]:
        """The hits of a ranking of chunk ids (from :func:`maxsim.index.search` over ``data``,
        default the index held now): each chunk's document, with the chunk's text as ``content``."""
        data = data if data is not None else self._require_index()
        rows = [ranking.row(i) for i in range(len(ranking))]
        chunks = np.concatenate([np.zeros(0, dtype=np.int64), *(np.asarray(c, dtype=np.int64) for c, _ in rows)])
        owners = data.chunk_documents(chunks)
        spans = data.chunk_spans(chunks).tolist()
        wanted = np.unique(owners)
        record_of = dict(zip(wanted.tolist(), data.documents_at(wanted.tolist())))  # one lookup per document
        results, at = [], 0
        for _, scores in rows:
            row = []
            for rank, score in enumerate(scores.tolist(), start=1):
                record, (start, end) = record_of[int(owners[at])], spans[at]
                row.append(Hit(record["id"], score, rank, record["content"][start:end], _returnable(record)))
                at += 1
            results.append(row)
        return results

    def exact_scores_of(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, chunk_ids: Sequence[int]) -> torch.Tensor:
        """Exact MaxSim of one encoded query ((1, Lq, dim), (1, Lq)) with some chunks of the
        index, from their decompressed vectors: (n,) float32."""
        return chunk_scores(self._require_index(), q_vectors, q_mask, np.asarray(chunk_ids, dtype=np.int64))

    def rerank(self, query: str, documents: Sequence[str], k: int | None = None) -> list[Hit]:
        """Order ``documents`` by exact MaxSim to ``query``; ``document_id`` is the position.
        No documents, no hits."""
        (query,) = self.checked_queries([query])
        if k is not None:
            check_k(k)
        documents = list(documents)
        for i, document in enumerate(documents):
            check_text(document, f"document at position {i}")
        if not documents:
            return []
        q_vectors, q_mask = self.query_vectors([query])
        d_vectors, d_mask = self._document_vectors(documents)
        scores = maxsim(q_vectors, q_mask, d_vectors, d_mask)[0]
        order = scores.argsort(descending=True)[: k or len(documents)].tolist()
        return [Hit(str(i), float(scores[i]), r, documents[i], None) for r, i in enumerate(order, start=1)]

    def encode(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
               metadata: Sequence[dict] | None = None) -> None:
        """Encode documents into memory (added to any encoded before) for :meth:`search_encoded`."""
        records = self._records(documents, document_ids, metadata)
        documents = [r["content"] for r in records]
        vectors, mask = self._document_vectors(documents)
        if self._encoded is not None:
            old_v, old_m, old_docs = self._encoded
            length = max(old_v.shape[1], vectors.shape[1])
            pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1])) if t.dim() == 3 \
                else torch.nn.functional.pad(t, (0, n - t.shape[1]), value=False)  # noqa: E731
            vectors = torch.cat([pad(old_v, length), pad(vectors, length)])
            mask = torch.cat([pad(old_m, length), pad(mask, length)])
            records = old_docs + records
        self._encoded = (vectors, mask, records)

    def clear_encoded(self) -> None:
        """Forget the documents given to :meth:`encode`."""
        self._encoded = None

    def search_encoded(self, query: str, k: int = 10) -> list[Hit]:
        """Search the documents given to :meth:`encode` by exact MaxSim."""
        if self._encoded is None:
            raise SettingsError("nothing encoded: call encode(documents) first")
        vectors, mask, records = self._encoded
        q_vectors, q_mask = self.query_vectors([query])
        scores = maxsim(q_vectors, q_mask, vectors, mask)[0]
        order = scores.argsort(descending=True)[:k].tolist()
        return [Hit(records[i]["id"], float(scores[i]), r, records[i]["content"], records[i]["metadata"])
                for r, i in enumerate(order, 1)]

    # ------------------------------------------------------------------ Qdrant
    @classmethod
    def from_qdrant(cls, client_or_url, collection: str, model: ColBERT | str | Path | None = None,
                    device: str | None = None, allow_model_mismatch: bool = False) -> QdrantRetriever:
        """A retriever over a Qdrant collection made by maxsim (:mod:`maxsim.qdrant`):
        ``client_or_url`` is a ``QdrantClient``, a server's URL, ``":memory:"`` or a local folder.
        ``model`` (a ColBERT or its folder; default the one the collection records) must make
        vectors of the collection's dimensions; another model's weights are refused unless
        ``allow_model_mismatch``. search, add and delete (and ``filter=``) work as on an index."""
        backend = QdrantIndex(connect(client_or_url), collection)
        recorded = backend.settings
        if model is None:
            if not recorded.model_path:
                raise SettingsError(f"Qdrant collection {collection!r} records no model folder: pass model=")
            model = recorded.model_path
        if not isinstance(model, ColBERT):
            model = ColBERT.from_pretrained(model, device=device)
        backend.check_model(model.settings.dim, None if allow_model_mismatch else model.digest())
        retriever = QdrantRetriever(model, model_path=recorded.model_path)
        retriever.qdrant = backend
        return retriever

    def index_to_qdrant(self, records: Sequence[dict], client_or_url, collection: str, storage: str = "float16",
                        first_stage: bool = True, muvera: Mapping | None = None, split_documents: bool = True,
                        max_document_tokens: int | None = None, batch_size: int = 64, overwrite: bool = False,
                        show_progress: bool = False) -> QdrantRetriever:
        """Encode ``records`` ({"id", "content", "metadata"}) into a new Qdrant collection, one
        point a chunk, with a MUVERA first-stage vector unless ``first_stage=False`` (``muvera``:
        :class:`maxsim.muvera.Muvera`'s settings); returns a retriever over it."""
        backend = QdrantIndex(connect(client_or_url), collection)
        encoder = Muvera(dim=self.model.settings.dim, **dict(muvera or {})) if first_stage else None
        backend.create(QdrantSettings(self.model.settings.dim, self.model.digest(), self.model_path, storage,
                                      None if encoder is None else dataclasses.asdict(encoder),
                                      self.model.settings.model_dump() | {"split_documents": split_documents,
                                                                          "max_document_tokens": max_document_tokens}),
                       overwrite=overwrite)
        retriever = QdrantRetriever(self.model, model_path=self.model_path)
        retriever.qdrant = backend
        retriever.inference_forward = self.inference_forward
        bar = progress(len(records), "indexing into Qdrant", "documents", show_progress)
        try:
            for at in range(0, len(records), QDRANT_SHARD):
                shard = list(records[at : at + QDRANT_SHARD])
                backend.upsert(shard, *self._encode_chunks([r["content"] for r in shard], split_documents,
                                                            max_document_tokens, batch_size))
                bar.update(len(shard))
        finally:
            bar.close()
        return retriever


#: documents encoded and written to Qdrant at a time
QDRANT_SHARD = 1024


class QdrantRetriever(Retriever):
    """A :class:`Retriever` whose documents live in a Qdrant collection (:meth:`Retriever.from_qdrant`).

    ``first_stage`` (default True): search through the MUVERA vector's HNSW first, then MaxSim;
    False scores every point by exact MaxSim. ``search(ndocs=...)`` sets the candidates the
    first stage passes on (default max(100, 10 k)); ``ncells`` and hybrid have no meaning here."""

    qdrant: QdrantIndex
    first_stage: bool = True

    def _stored(self) -> tuple[bool, int | None]:
        settings = self.qdrant.settings.model_settings or {}
        return settings.get("split_documents", True), settings.get("max_document_tokens")

    def search(self, queries, k: int = 10, ncells: int | None = None, centroid_score_threshold: float | None = None,
               ndocs: int | None = None, filter: Mapping | None = None, hybrid=None):
        texts = self.checked_queries(queries)
        check_k(k)
        if hybrid_settings(hybrid) is not None:
            self.search_hybrid_vectors(texts, None, None, k, hybrid)
        q_vectors, q_mask = self.query_vectors(texts)
        results = self.search_vectors(q_vectors, q_mask, k, ncells, centroid_score_threshold, ndocs, filter)
        return results[0] if isinstance(queries, str) else results

    def search_vectors(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int = 10, ncells: int | None = None,
                       centroid_score_threshold: float | None = None, ndocs: int | None = None,
                       filter: Mapping | None = None) -> list[list[Hit]]:
        found = self.qdrant.search(q_vectors.numpy(), q_mask.numpy(), k, filter, self.first_stage, ndocs)
        return [[Hit(d, s, rank, p.get("content", ""), p.get("metadata")) for rank, (d, s, p) in
                 enumerate(row, start=1)] for row in found]

    def search_hybrid_vectors(self, *args, **kwargs):
        raise SettingsError("hybrid search needs maxsim's own index (its BM25 side); a Qdrant collection has none: "
                            "search it without hybrid")

    def refresh(self) -> bool:
        return False  # (Qdrant serves its newest points itself)

    def document_count(self) -> int:
        return self.qdrant.count()

    def status(self) -> dict:
        return {"qdrant": self.qdrant.collection, "documents": self.qdrant.count(), "chunks": None, "version": None}

    def encode_for_index(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
                         metadata: Sequence[dict] | None = None, batch_size: int = 64) -> tuple:
        """The first half of :meth:`add`: checked and encoded (records, then the chunks)."""
        records = self._records(documents, document_ids, metadata)
        self._refuse_present_in_qdrant(records)
        split, max_tokens = self._stored()
        return records, self._encode_chunks([r["content"] for r in records], split, max_tokens, batch_size)

    def add_encoded(self, encoded: tuple) -> None:
        records, chunks = encoded
        self._refuse_present_in_qdrant(records)
        self.qdrant.upsert(records, *chunks)

    def _refuse_present_in_qdrant(self, records: list[dict]) -> None:
        clash = sorted(self.qdrant.present([r["id"] for r in records]))
        if clash:
            raise SettingsError(f"already in the collection: {clash[:5]}; delete them first to replace them")

    def add(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
            metadata: Sequence[dict] | None = None, batch_size: int = 64) -> None:
        """Upsert documents into the collection (ids already there are refused, as by an index)."""
        self.add_encoded(self.encode_for_index(documents, document_ids, metadata, batch_size))

    def delete(self, document_ids: str | Sequence[str]) -> int:
        """Delete documents from the collection; an id it does not hold is an error, as by an index."""
        if isinstance(document_ids, (str, int)):
            document_ids = [document_ids]
        wanted = list(dict.fromkeys(str(i) for i in document_ids))
        missing = sorted(set(wanted) - self.qdrant.present(wanted))
        if missing:
            raise UnknownIdError(f"not in the collection: {missing[:5]}")
        self.qdrant.delete(wanted)
        return len(wanted)
