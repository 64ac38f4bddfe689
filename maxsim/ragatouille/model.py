"""RAGatouille's ``RAGPretrainedModel`` over a maxsim :class:`~maxsim.retriever.Retriever`: index,
add, delete, search, rerank and in-memory search, with RAGatouille's arguments and results."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from maxsim.backends.local import LocalIndex
from maxsim.errors import SettingsError
from maxsim.index import is_index
from maxsim.inputs import DEFAULT_K, check_k, checked_queries
from maxsim.limits import check_name
from maxsim.model import ColBERT
from maxsim.model.checkpoint import resolve_model_path
from maxsim.ragatouille.side_files import refresh_side_files, write_side_files
from maxsim.ranking import Hit
from maxsim.retriever import Retriever

logger = logging.getLogger(__name__)


class _DefaultSplitter:
    """Stands for RAGatouille's default splitter (llama-index's sentence splitter): maxsim splits
    documents into windows of ``max_document_length`` tokens instead."""

    def __repr__(self) -> str:
        return "llama_index_sentence_splitter"


llama_index_sentence_splitter = _DefaultSplitter()


def _device(n_gpu: int) -> str:
    import torch

    return "cuda" if n_gpu != 0 and torch.cuda.is_available() else "cpu"


class RAGPretrainedModel:
    """A ColBERT model and the index it searches, as RAGatouille's ``RAGPretrainedModel``."""

    def __init__(self, retriever: Retriever, index_root: str | Path | None = None) -> None:
        self.retriever = retriever
        self.index_root = Path(index_root if index_root is not None else ".ragatouille/")
        self.model_name = retriever.model_path
        self._in_memory: list[dict] = []

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, n_gpu: int = -1, verbose: int = 1,
                        index_root: str | None = None) -> RAGPretrainedModel:
        """A ColBERT checkpoint (maxsim, colbert-ai or PyLate format, a folder or a hub name); a
        plain encoder gets a new projection, with a warning that it is untrained (:class:`Retriever`'s)."""
        path = resolve_model_path(pretrained_model_name_or_path)
        return cls(Retriever(ColBERT.from_pretrained(path, device=_device(n_gpu))), index_root)

    @classmethod
    def from_index(cls, index_path: str | Path, n_gpu: int = -1, verbose: int = 1) -> RAGPretrainedModel:
        """An index (and the model that built it); the index root is two folders above it."""
        index_path = Path(index_path)
        retriever = Retriever.from_index(index_path, device=_device(n_gpu))
        return cls(retriever, index_path.parent.parent.parent)

    # ---------------------------------------------------------------- indexes
    def _index_path(self, index_name: str | None) -> Path:
        if index_name is None:
            if self.retriever.index_path is not None:
                return self.retriever.index_path
            index_name = f"{Path(str(self.model_name or 'model')).name}new_index"
            logger.info("no index_name given: using %s", index_name)
        root = self.index_root / "colbert" / "indexes"
        return root / check_name(index_name, "index_name", root)

    def _use_index(self, index_name: str | None) -> None:
        """Switch to the index called ``index_name`` (if another), and pick up others' writes."""
        if index_name is not None and self._index_path(index_name) != self.retriever.index_path:
            self.retriever.backend = LocalIndex.open(self._index_path(index_name))
        self.retriever.refresh()

    def index(
        self,
        collection: list[str],
        document_ids: list | None = None,
        document_metadatas: list[dict] | None = None,
        index_name: str | None = None,
        overwrite_index: bool | str = True,
        max_document_length: int = 256,
        split_documents: bool = True,
        document_splitter_fn: Callable | None = llama_index_sentence_splitter,
        preprocessing_fn: Callable | list[Callable] | None = None,
        bsize: int = 32,
        use_faiss: bool = False,
    ) -> str:
        """Index ``collection`` at ``<index_root>/colbert/indexes/<index_name>``; returns that path.

        ``overwrite_index``: True replaces an index there, "reuse" opens it instead, False refuses.
        """
        path = self._index_path(index_name)
        if overwrite_index == "reuse" and is_index(path):
            logger.info("reusing the index in %s", path)
            self._use_index(index_name)
            return str(path)
        texts, ids, metadata = _documents(collection, document_ids, document_metadatas, preprocessing_fn,
                                          split_documents and document_splitter_fn is not None, document_splitter_fn)
        if use_faiss:
            logger.info("use_faiss: maxsim's k-means always uses faiss")
        self.retriever.index(texts, path=path, document_ids=ids, metadata=metadata, split_documents=split_documents,
                             max_document_tokens=max_document_length, batch_size=bsize,
                             overwrite=overwrite_index is True)
        write_side_files(path)
        return str(path)

    def add_to_index(
        self,
        new_collection: list[str],
        new_document_ids: list | None = None,
        new_document_metadatas: list[dict] | None = None,
        index_name: str | None = None,
        split_documents: bool = True,
        document_splitter_fn: Callable | None = llama_index_sentence_splitter,
        preprocessing_fn: Callable | list[Callable] | None = None,
        bsize: int = 32,
        use_faiss: bool = False,
    ) -> None:
        """Add documents; ids already in the index are skipped (as RAGatouille does), and logged."""
        self._use_index(index_name)
        texts, ids, metadata = _documents(new_collection, new_document_ids, new_document_metadatas, preprocessing_fn,
                                          split_documents and document_splitter_fn is not None, document_splitter_fn)
        present = self.retriever.backend.present(ids)
        keep = [i for i, d in enumerate(ids) if d not in present]
        if len(keep) < len(ids):
            logger.warning("%d documents are already in the index and were skipped", len(ids) - len(keep))
        if keep:
            self.retriever.add([texts[i] for i in keep], [ids[i] for i in keep],
                               None if metadata is None else [metadata[i] for i in keep], batch_size=bsize)
        refresh_side_files(self.retriever.index_path)

    def delete_from_index(self, document_ids: str | list, index_name: str | None = None) -> None:
        """Delete documents by id (a str is one id); ids not in the index are ignored."""
        self._use_index(index_name)
        wanted = [document_ids] if isinstance(document_ids, str) else list(document_ids)
        present = self.retriever.backend.present([str(d) for d in wanted])
        known = [str(d) for d in wanted if str(d) in present]
        if known:
            self.retriever.delete(known)
        refresh_side_files(self.retriever.index_path)

    # ---------------------------------------------------------------- search
    def search(self, query: str | list[str], index_name: str | None = None, k: int = DEFAULT_K,
               force_fast: bool = False, zero_index_ranks: bool = False, doc_ids: list | None = None, **kwargs):
        """The ``k`` best passages for a query (a list of dicts), or for each of a list of queries.

        Each result: ``content``, ``score``, ``rank``, ``document_id``, ``passage_id`` and, when the
        document has metadata, ``document_metadata``. ``doc_ids`` restricts the search to those
        documents (scored exactly); ``force_fast`` probes fewer centroids. The search follows the
        model's ``search.json`` (fused with BM25 when it chose so on dev); ``hybrid=False`` searches
        with MaxSim alone, ``hybrid=True`` or a fusion's settings fuse as asked.
        """
        self._use_index(index_name)
        single = isinstance(query, str)
        texts = checked_queries(query)
        check_k(k)
        if force_fast and ("ncells" in kwargs or "ndocs" in kwargs):
            raise SettingsError("force_fast sets ncells and ndocs itself: give force_fast=True, or ncells=/ndocs=, "
                                "not both")
        backend = self.retriever.backend
        hybrid = self.retriever.search_config(kwargs.pop("hybrid", None)).hybrid  # (the model's search.json)
        q_vectors, q_mask = self.retriever.query_vectors(texts)
        components = None
        if doc_ids is not None:
            ranking = backend.search_among(q_vectors, q_mask, [str(d) for d in doc_ids], k)
        else:
            options = {"ncells": 1, "ndocs": 0} if force_fast else {}
            if hybrid is None:
                ranking = backend.search(q_vectors, q_mask, k, **options, **kwargs)
            else:
                ranking, components = backend.search_hybrid(texts, q_vectors, q_mask, k, hybrid, **options, **kwargs)
        results = []
        for i, hits in enumerate(self.retriever.hits(ranking, components=components)):
            passages = ranking.row(i)[0].tolist()
            results.append([_result(hit, zero_index_ranks, passage_id=p) for hit, p in zip(hits, passages)])
        return results[0] if single else results

    def rerank(self, query: str | list[str], documents: list[str], k: int = DEFAULT_K, zero_index_ranks: bool = False,
               bsize: int | Literal["auto"] = "auto"):
        """``documents`` ordered by MaxSim to the query, best ``k``: dicts with ``content``,
        ``score``, ``rank`` and ``result_index`` (the position in ``documents``)."""
        single = isinstance(query, str)
        results = [[_result(h, zero_index_ranks, result_index=int(h.document_id), with_id=False)
                    for h in self.retriever.rerank(q, documents, k)] for q in checked_queries(query)]
        return results[0] if single else results

    # ---------------------------------------------------------------- in memory
    def encode(self, documents: list[str], bsize: int | Literal["auto"] = "auto",
               document_metadatas: list[dict] | None = None, verbose: bool = True,
               max_document_length: int | Literal["auto"] = "auto") -> None:
        """Encode documents into memory (added to any encoded before) for :meth:`search_encoded_docs`."""
        if document_metadatas is not None and len(document_metadatas) != len(documents):
            raise ValueError("document_metadatas must be the same length as documents")
        start = len(self._in_memory)
        ids = [str(start + i) for i in range(len(documents))]
        self.retriever.encode(list(documents), ids, document_metadatas)
        self._in_memory += [{"content": d} for d in documents]

    def search_encoded_docs(self, query: str | list[str], k: int = DEFAULT_K, bsize: int = 32):
        """Search the encoded documents: dicts with ``content``, ``score``, ``rank``,
        ``result_index`` and, for a document encoded with metadata, ``document_metadata``."""
        single = isinstance(query, str)
        results = [[_result(h, False, result_index=int(h.document_id), with_id=False)
                    for h in self.retriever.search_encoded(q, k)] for q in ([query] if single else query)]
        return results[0] if single else results

    def clear_encoded_docs(self, force: bool = False) -> None:
        """Forget the encoded documents (at once: no 10-second wait)."""
        self.retriever.clear_encoded()
        self._in_memory = []

    # ---------------------------------------------------------------- LangChain
    def as_langchain_retriever(self, **kwargs):
        """A LangChain retriever over :meth:`search` (needs ``pip install maxsim[langchain]``)."""
        return _langchain().retriever_for(self, kwargs)

    def as_langchain_document_compressor(self, k: int = 5, **kwargs):
        """A LangChain document compressor over :meth:`rerank` (needs ``maxsim[langchain]``)."""
        return _langchain().compressor_for(self, k, kwargs)


def _langchain():
    """:mod:`maxsim.ragatouille.langchain`, or a SettingsError naming the extra without langchain-core."""
    try:
        import langchain_core  # noqa: F401
    except ImportError:
        raise SettingsError("the LangChain wrappers need langchain-core: pip install 'maxsim[langchain]'") from None
    from maxsim.ragatouille import langchain

    return langchain


def _result(hit: Hit, zero_index_ranks: bool, with_id: bool = True, **extra) -> dict:
    result = {"content": hit.content, "score": hit.score, "rank": hit.rank - 1 if zero_index_ranks else hit.rank}
    if with_id:
        result["document_id"] = hit.document_id
    result.update(extra)
    if hit.metadata is not None:
        result["document_metadata"] = hit.metadata
    return result


def _documents(collection, document_ids, document_metadatas, preprocessing_fn, custom_split: bool,
               splitter) -> tuple[list[str], list[str], list[dict] | None]:
    """Texts, ids and metadata with RAGatouille's checks and ValueErrors; uuids when no ids."""
    collection = list(collection)
    if document_ids is None:
        document_ids = [str(uuid.uuid4()) for _ in collection]
    else:
        document_ids = [document_ids] if isinstance(document_ids, str) else list(document_ids)
        if len(document_ids) != len(collection):
            raise ValueError("document_ids must be the same length as collection")
        if len(document_ids) != len(set(document_ids)):
            raise ValueError("document_ids must be unique")
        if any(not str(i).strip() for i in document_ids):
            raise ValueError("document_ids must not contain empty strings")
        if not all(isinstance(i, type(document_ids[0])) for i in document_ids):
            raise ValueError("All document_ids must be of the same type")
    if document_metadatas is not None and len(document_metadatas) != len(collection):
        raise ValueError("document_metadatas must be the same length as collection")
    if custom_split and splitter is not llama_index_sentence_splitter:
        raise SettingsError("a custom document_splitter_fn is not supported: maxsim splits documents into windows "
                            "of max_document_length tokens itself; split them beforehand and index the pieces "
                            "with their own ids, or pass split_documents=False")
    for function in [preprocessing_fn] if callable(preprocessing_fn) else list(preprocessing_fn or []):
        collection = [function(text) for text in collection]
    return collection, [str(i) for i in document_ids], None if document_metadatas is None else list(document_metadatas)
