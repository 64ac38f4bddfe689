"""The one door to every search engine: what a backend does, and the types it speaks.

A backend stores documents' token vectors and searches them. :class:`maxsim.retriever.Retriever`
is a model plus a backend: it turns text into vectors and rankings into hits, and the backend
does the rest. Each backend is one module in :mod:`maxsim.backends`, named in its registry.

Types: a search returns a :class:`~maxsim.ranking.Ranking` (per query, the backend's own item
numbers, best first, and their MaxSim scores), which :meth:`Backend.passages` turns into
:class:`Passage` records (the document's id, the matching text, its metadata). Documents to
add come as :class:`EncodedDocuments`, chunked and encoded as the backend's :class:`Chunking`
says.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from maxsim.index import IndexLoadError
from maxsim.index_settings import default
from maxsim.model import ColBERT
from maxsim.ranking import Ranking

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunking:
    """How a backend's documents are cut and stored: documents longer than
    ``max_document_tokens`` (None: the model's doc_maxlen) are split into chunks unless
    ``split_documents`` is False (then truncated); each chunk's vectors are pooled by
    ``pool_factor`` (1: none)."""

    split_documents: bool = default("split_documents")
    max_document_tokens: int | None = None
    pool_factor: int = default("pool_factor")


@dataclass
class Passage:
    """What a ranked item is: its document's id, the matching text (a chunk's, or the whole
    document's) and the document's metadata; for a chunk, its place among the document's chunks
    (``chunk``, from 0) and its characters in the document's text (``start``, ``end``) where the
    backend keeps them."""

    document_id: str
    content: str
    metadata: dict | None
    chunk: int | None = None
    start: int | None = None
    end: int | None = None


@dataclass
class EncodedDocuments:
    """Documents ready for :meth:`Backend.add`: their records (``{"id", "content", "metadata"}``)
    and their chunks' token vectors, (T, dim) float32 back to back, with ``doclens`` (N,) tokens
    per chunk, ``chunk_docs`` (N,) each chunk's document among ``records`` and ``spans`` (N,) of
    (start, end) characters; ``stored`` is what :meth:`Backend.prepare` made of them ahead of the
    write (maxsim's index: the compressed codes and residuals, and the centroids of then)."""

    records: list[dict]
    vectors: np.ndarray
    doclens: np.ndarray
    chunk_docs: np.ndarray
    spans: list[tuple[int, int]]
    stored: object = None


@runtime_checkable
class Backend(Protocol):
    """A search engine over encoded documents. Every method's errors are
    :class:`maxsim.errors.MaxsimError` where the input is at fault."""

    #: the registry's name of this backend (``maxsim``, ``qdrant``)
    kind: str

    @property
    def location(self) -> str:
        """Where its documents are, for messages (a folder, a collection)."""

    @property
    def dim(self) -> int:
        """The dimension of the vectors it stores."""

    @property
    def model_digest(self) -> str | None:
        """:meth:`maxsim.model.ColBERT.digest` of the model that encoded its documents (None: not recorded)."""

    @property
    def model_path(self) -> str | None:
        """The folder of the model that encoded its documents, as recorded (None: a model held in memory)."""

    def check_model(self, model: ColBERT, allow_mismatch: bool = False) -> None:
        """Refuse a model whose vectors would not match the stored ones (other dimensions; other
        weights, unless ``allow_mismatch``: then it is only logged)."""

    @property
    def chunking(self) -> Chunking:
        """How documents added to it are to be chunked and pooled."""

    def check_filter(self, filter: Mapping) -> None:
        """Refuse a filter that cannot be answered (a bad grammar, a field no document has),
        before any query is encoded."""

    def search(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int, filter: Mapping | None = None,
               ncells: int | None = None, centroid_score_threshold: float | None = None, ndocs: int | None = None,
               pool=None) -> Ranking:
        """The ``k`` best documents of each query ((Q, Lq, dim) float32 CPU vectors and their
        (Q, Lq) bool mask), as items of this backend, exact MaxSim scores, best first.
        ``ndocs``: the candidates scored exactly; ``ncells`` and ``centroid_score_threshold``:
        maxsim's index's probing (a backend without them ignores them); ``pool``: threads to
        search queries on, where the backend uses them."""

    def search_hybrid(self, texts: Sequence[str], q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int, settings,
                      filter: Mapping | None = None, ncells: int | None = None,
                      centroid_score_threshold: float | None = None,
                      ndocs: int | None = None) -> tuple[Ranking, list[tuple[list[float], list[float]]]]:
        """MaxSim fused with BM25 (:mod:`maxsim.fusion`, ``settings`` a :class:`~maxsim.fusion.Hybrid`):
        the ranking and, per query, both component scores of each item (MaxSim, BM25). A backend
        with no BM25 side raises SettingsError."""

    def search_bm25(self, texts: Sequence[str], k: int, filter: Mapping | None = None) -> Ranking:
        """BM25 alone; its items are whole documents (:meth:`passages` with ``whole=True``)."""

    def passages(self, ranking: Ranking, whole: bool = False) -> list[list[Passage]]:
        """Each ranked item as a :class:`Passage` (``whole``: the ranking is of documents, not chunks)."""

    def document(self, document_id: str) -> Passage | None:
        """A document's whole text and metadata (None: not held)."""

    def prepare(self, encoded: EncodedDocuments) -> EncodedDocuments:
        """What can be done for an add before its write (compression, say), outside any lock."""

    def add(self, encoded: EncodedDocuments) -> None:
        """Add documents; an id already held is refused, and nothing changes."""

    def delete(self, document_ids: Sequence[str]) -> int:
        """Delete documents by id; an id not held is an UnknownIdError, and nothing changes.
        Returns how many were deleted."""

    def present(self, document_ids: Sequence[str]) -> set[str]:
        """Which of ``document_ids`` it holds."""

    def count(self) -> int:
        """Documents searchable now."""

    def status(self) -> dict:
        """Where the documents live and how many (for a service's health answer)."""

    def refresh(self) -> bool:
        """Take other processes' writes; True if there were any."""

    def changed_on_disk(self) -> bool:
        """Whether a newer version than the one held is there to take (:meth:`refresh`)."""

    def pinned(self) -> Backend:
        """The backend as it is now, for several searches that must read one version while
        writes go on (itself where writes show at once)."""

    def close(self) -> None:
        """Let go of what it holds open."""


def check_dim(backend: Backend, model: ColBERT) -> None:
    """Refuse a model whose vectors have other dimensions than the backend's."""
    if backend.dim != model.settings.dim:
        raise IndexLoadError(f"{backend.location} holds {backend.dim}-dim vectors but the model makes "
                             f"{model.settings.dim}-dim ones: use the model it was built with")


def check_model(backend: Backend, model: ColBERT, path, allow_mismatch: bool = False) -> None:
    """Refuse (or, with ``allow_mismatch``, log) a model other than the one a backend's documents
    were encoded with."""
    check_dim(backend, model)
    recorded = backend.model_digest
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
