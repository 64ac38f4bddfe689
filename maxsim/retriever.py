"""Put a trained checkpoint to work: index, search, add, delete, rerank, in-memory search.

``Retriever.from_pretrained(checkpoint).index(documents, path=...)`` builds a compressed index
(:mod:`maxsim.index`); ``Retriever.from_index(path).search(query)`` answers from it. ``rerank``
and ``encode`` + ``search_encoded`` work without an index, for small in-memory sets. Scores are
always :func:`maxsim.scoring.maxsim`, the same MaxSim as in training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from maxsim.data.prepare import stable_id
from maxsim.index import (
    Codec,
    IndexData,
    IndexLoadError,
    build_ivf,
    n_centroids_for,
    nearest_centroids,
    train_centroids,
)
from maxsim.model import ColBERT, InferenceForward
from maxsim.scoring import maxsim, maxsim_packed

logger = logging.getLogger(__name__)

INDEX_ROOT = Path(".maxsim") / "indexes"


@dataclass
class Hit:
    """One search result. ``rank`` starts at 1; ``content`` is the matching chunk's text."""

    document_id: str
    score: float
    rank: int
    content: str
    metadata: dict | None

    def to_dict(self) -> dict:
        return asdict(self)


def search_defaults(n_chunks: int, k: int) -> tuple[int, float, int]:
    """(ncells, centroid_score_threshold, ndocs) for an index of ``n_chunks`` and a given k."""
    ncells = 2 if n_chunks < 100_000 else 4
    ndocs = max(8 * k, 64 if n_chunks < 100_000 else 256)
    return ncells, 0.4, ndocs


class Retriever:
    """A ColBERT model and, optionally, the index it searches."""

    def __init__(self, model: ColBERT, index: IndexData | None = None, index_path: Path | None = None,
                 model_path: str | None = None) -> None:
        self.model = model
        self.index_data = index
        self.index_path = index_path
        self.model_path = model_path
        self._encoded: tuple | None = None
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
        model_path = str(Path(checkpoint).resolve()) if checkpoint else None
        return cls(ColBERT.from_pretrained(checkpoint, device=device), model_path=model_path)

    @classmethod
    def from_index(cls, path: str | Path, model: ColBERT | None = None, device: str | None = None) -> Retriever:
        """Load an index and the model that built it (or ``model``, which must have its dim)."""
        data = IndexData.load(path)
        if model is None:
            model_path = data.settings.get("model_path")
            model = ColBERT.from_pretrained(model_path, device=device)
        return cls(model, data, Path(path), data.settings.get("model_path"))

    # ------------------------------------------------------------------ building
    def _chunks(self, texts: Sequence[str], split: bool, max_tokens: int | None):
        """Token ids and character spans of each document's chunks."""
        tokenizer = self.model.tokenizer
        max_tokens = max_tokens or self.model.settings.doc_maxlen
        if not split:
            ids = self.model.tokenize_documents(texts)
            return [[(row, (0, len(t)))] for row, t in zip(ids, texts)]
        empty = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [CLS] [SEP]
        prefix = empty[:1] if empty and empty[0] in self.model._start_ids else []
        suffix = empty[len(prefix):]
        window = max(1, max_tokens - 1 - len(empty))
        encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                            return_attention_mask=False, return_token_type_ids=False)
        out = []
        for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
            pieces = []
            for start in range(0, max(1, len(ids)), window):
                piece = ids[start : start + window]
                full = prefix + [self.model.document_marker_id] + piece + suffix
                span = (offsets[start][0], offsets[min(start + window, len(ids)) - 1][1]) if piece else (0, len(text))
                pieces.append((full, span))
            out.append(pieces)
        return out

    def _encode_chunks(self, documents, split, max_tokens, batch_size):
        chunks = self._chunks(documents, split, max_tokens)
        flat = [tokens for doc in chunks for tokens, _ in doc]
        spans = [span for doc in chunks for _, span in doc]
        chunk_docs = np.array([i for i, doc in enumerate(chunks) for _ in doc], dtype=np.int32)
        per_chunk: list[np.ndarray] = [np.zeros((0, self.model.settings.dim), np.float32)] * len(flat)
        for positions, vectors, mask in self.model.encode_batches(flat, False, batch_size, self.inference_forward):
            for row, i in enumerate(positions):
                per_chunk[i] = vectors[row][mask[row]].cpu().numpy()
        doclens = np.array([len(v) for v in per_chunk], dtype=np.int32)
        return np.concatenate(per_chunk) if per_chunk else np.zeros((0, self.model.settings.dim)), doclens, \
            chunk_docs, spans

    @staticmethod
    def _records(documents, document_ids, metadata):
        if isinstance(documents, str):
            documents = [documents]
        documents = list(documents)
        if not documents or any(not isinstance(d, str) or not d.strip() for d in documents):
            raise ValueError("documents must be a non-empty list of non-empty strings")
        ids = [str(i) for i in document_ids] if document_ids is not None else [stable_id(d, "d") for d in documents]
        if len(ids) != len(documents) or (metadata is not None and len(metadata) != len(documents)):
            raise ValueError("document_ids and metadata need one entry per document")
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must be unique")
        metadata = list(metadata) if metadata is not None else [None] * len(documents)
        return documents, ids, metadata

    def index(self, documents: Sequence[str], path: str | Path | None = None,
              document_ids: Sequence[str] | None = None, metadata: Sequence[dict] | None = None,
              split_documents: bool = True, max_document_tokens: int | None = None, nbits: int = 2,
              seed: int = 0, batch_size: int = 64, name: str | None = None) -> Path:
        """Encode, compress and write an index of ``documents``; returns its folder.

        The folder is ``path``, or ``INDEX_ROOT/name`` (``.maxsim/indexes/NAME`` under the current
        directory) when only a ``name`` is given, as RAGatouille's ``index_name``. An index already
        there is replaced (atomically). Documents longer than ``max_document_tokens`` (default: the
        model's doc_maxlen) are split into chunks unless ``split_documents=False``.
        """
        if nbits not in (1, 2, 4):
            raise ValueError("nbits must be 1, 2 or 4")
        if path is None:
            if not name:
                raise ValueError("give the index a path= (a folder) or a name= (kept under .maxsim/indexes/)")
            path = INDEX_ROOT / name
        documents, ids, metadata = self._records(documents, document_ids, metadata)
        vectors, doclens, chunk_docs, spans = self._encode_chunks(documents, split_documents, max_document_tokens,
                                                                  batch_size)
        k = n_centroids_for(len(vectors))
        centroids = train_centroids(vectors, k, seed)
        codes = nearest_centroids(vectors, centroids)
        residual = vectors - centroids[codes]
        codec = Codec.fit(residual, nbits)
        ivf, ivf_offsets = build_ivf(codes, doclens, k)
        settings = {"nbits": nbits, "dim": self.model.settings.dim, "model_path": self.model_path,
                    "model_settings": self.model.settings.model_dump(), "split_documents": split_documents,
                    "max_document_tokens": max_document_tokens or self.model.settings.doc_maxlen, "seed": seed,
                    "encoded_in": self._encoding_precision()}
        records = [{"id": i, "content": d, "metadata": m} for i, d, m in zip(ids, documents, metadata)]
        data = IndexData(settings, centroids, codec, codes, codec.encode(residual), doclens, chunk_docs, ivf,
                         ivf_offsets, records, spans)
        data.save(path)
        self.index_data, self.index_path = data, Path(path)
        logger.info("indexed %d documents (%d chunks, %d tokens, %d centroids) in %s", len(documents),
                    len(doclens), len(vectors), k, path)
        return Path(path)

    def _encoding_precision(self) -> str:
        """How documents are encoded here: the inference copy's dtype, bf16 autocast on CUDA, or float32."""
        if self.inference_forward is not None:
            return str(self.inference_forward.dtype).removeprefix("torch.")
        return "bfloat16 autocast" if self.model.device.type == "cuda" else "float32"

    def add(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
            metadata: Sequence[dict] | None = None, batch_size: int = 64) -> None:
        """Add documents to the index (existing centroids and codec; no re-encoding of the rest)."""
        data = self._require_index()
        documents, ids, metadata = self._records(documents, document_ids, metadata)
        existing = {d["id"] for d in data.documents}
        clash = [i for i in ids if i in existing]
        if clash:
            raise ValueError(f"already in the index: {clash[:5]}; delete them first to replace them")
        vectors, doclens, chunk_docs, spans = self._encode_chunks(
            documents, data.settings["split_documents"], data.settings["max_document_tokens"], batch_size)
        data.append(vectors, doclens, chunk_docs + len(data.documents))
        data.documents += [{"id": i, "content": d, "metadata": m} for i, d, m in zip(ids, documents, metadata)]
        data.spans += spans
        data.save(self.index_path)

    def delete(self, document_ids: Sequence[str]) -> None:
        """Remove documents (and their chunks) from the index."""
        data = self._require_index()
        position = {d["id"]: i for i, d in enumerate(data.documents)}
        missing = [i for i in document_ids if str(i) not in position]
        if missing:
            raise KeyError(f"not in the index: {missing[:5]}")
        data.remove_documents({position[str(i)] for i in document_ids})
        data.save(self.index_path)

    def _require_index(self) -> IndexData:
        if self.index_data is None or self.index_path is None:
            raise ValueError("no index: call index(...) first or load one with Retriever.from_index(path)")
        return self.index_data

    # ------------------------------------------------------------------ searching
    def query_vectors(self, queries: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, query_maxlen, dim) float32 CPU vectors and their (Q, query_maxlen) mask."""
        return self.model.encode_queries(list(queries), batch_size=batch_size, padded=True,
                                         forward=self.inference_forward)

    def _document_vectors(self, documents: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_documents(list(documents), padded=True, forward=self.inference_forward)

    def search(self, queries: str | Sequence[str], k: int = 10, ncells: int | None = None,
               centroid_score_threshold: float | None = None, ndocs: int | None = None):
        """The ``k`` best documents for each query: a list of :class:`Hit` (a list of lists for
        several queries). Several queries are encoded in batches, which is where a batch of
        queries saves time over one call per query."""
        self._require_index()
        single = isinstance(queries, str)
        texts = [queries] if single else list(queries)
        q_vectors, q_mask = self.query_vectors(texts)
        results = self.search_vectors(q_vectors, q_mask, k, ncells, centroid_score_threshold, ndocs)
        return results[0] if single else results

    def search_vectors(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, k: int = 10, ncells: int | None = None,
                       centroid_score_threshold: float | None = None, ndocs: int | None = None) -> list[list[Hit]]:
        """Search with queries already encoded: ``q_vectors`` (Q, Lq, dim) float32 CPU, ``q_mask`` (Q, Lq)."""
        data = self._require_index()
        d_ncells, d_threshold, d_ndocs = search_defaults(len(data.doclens), k)
        ncells = ncells or d_ncells
        threshold = d_threshold if centroid_score_threshold is None else centroid_score_threshold
        ndocs = ndocs or d_ndocs
        centroids = torch.from_numpy(data.centroids)
        results = []
        with torch.inference_mode():
            for i in range(len(q_vectors)):
                cs = q_vectors[i][q_mask[i]] @ centroids.T  # (Lq, C)
                candidates = data.candidates(cs, ncells)
                if len(candidates) > ndocs:
                    approx = data.approximate_scores(cs, candidates, threshold)
                    candidates = candidates[approx.topk(ndocs).indices.numpy()]
                results.append(self._rank_chunks(q_vectors[i : i + 1], q_mask[i : i + 1], candidates, k))
        return results

    def exact_scores_of(self, q_vectors: torch.Tensor, q_mask: torch.Tensor, chunk_ids: Sequence[int]) -> torch.Tensor:
        """Exact MaxSim of one encoded query ((1, Lq, dim), (1, Lq)) with some chunks of the
        index, from their decompressed vectors: (n,) float32."""
        self._require_index()
        return self._chunk_scores(q_vectors, q_mask, np.asarray(chunk_ids, dtype=np.int64))

    def _chunk_scores(self, q_vectors, q_mask, chunk_ids: np.ndarray) -> torch.Tensor:
        vectors, lengths = self.index_data.decompress(chunk_ids)
        scale = 1.0 / vectors.norm(dim=1).clamp_min(1e-12)  # score the stored vectors renormalised
        return maxsim_packed(q_vectors[0], q_mask[0], vectors, lengths, scale)

    def _rank_chunks(self, q_vectors, q_mask, chunk_ids: np.ndarray, k: int) -> list[Hit]:
        """Exact MaxSim of one query ((1, Lq, dim), (1, Lq)) with some chunks, decompressed; the
        ``k`` best documents, each scored by its best chunk."""
        data = self.index_data
        if len(chunk_ids) == 0:
            return []
        scores = self._chunk_scores(q_vectors, q_mask, chunk_ids).numpy()
        order = np.argsort(-scores, kind="stable")
        docs = data.chunk_docs[chunk_ids[order]]
        _, first = np.unique(docs, return_index=True)  # each document's best chunk
        best = order[np.sort(first)[:k]]
        hits = []
        for rank, i in enumerate(best.tolist(), start=1):
            chunk = int(chunk_ids[i])
            record = data.documents[int(data.chunk_docs[chunk])]
            start, end = data.spans[chunk]
            hits.append(Hit(record["id"], float(scores[i]), rank, record["content"][start:end], record["metadata"]))
        return hits

    def rerank(self, query: str, documents: Sequence[str], k: int | None = None) -> list[Hit]:
        """Order ``documents`` by exact MaxSim to ``query``; ``document_id`` is the position."""
        documents = list(documents)
        q_vectors, q_mask = self.query_vectors([query])
        d_vectors, d_mask = self._document_vectors(documents)
        scores = maxsim(q_vectors, q_mask, d_vectors, d_mask)[0]
        order = scores.argsort(descending=True)[: k or len(documents)].tolist()
        return [Hit(str(i), float(scores[i]), r, documents[i], None) for r, i in enumerate(order, start=1)]

    def encode(self, documents: Sequence[str], document_ids: Sequence[str] | None = None,
               metadata: Sequence[dict] | None = None) -> None:
        """Encode documents into memory (added to any encoded before) for :meth:`search_encoded`."""
        documents, ids, metadata = self._records(documents, document_ids, metadata)
        vectors, mask = self._document_vectors(documents)
        if self._encoded is not None:
            old_v, old_m, old_docs = self._encoded
            length = max(old_v.shape[1], vectors.shape[1])
            pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[1])) if t.dim() == 3 \
                else torch.nn.functional.pad(t, (0, n - t.shape[1]), value=False)  # noqa: E731
            vectors = torch.cat([pad(old_v, length), pad(vectors, length)])
            mask = torch.cat([pad(old_m, length), pad(mask, length)])
            records = old_docs + list(zip(ids, documents, metadata))
        else:
            records = list(zip(ids, documents, metadata))
        self._encoded = (vectors, mask, records)

    def search_encoded(self, query: str, k: int = 10) -> list[Hit]:
        """Search the documents given to :meth:`encode` by exact MaxSim."""
        if self._encoded is None:
            raise ValueError("nothing encoded: call encode(documents) first")
        vectors, mask, records = self._encoded
        q_vectors, q_mask = self.query_vectors([query])
        scores = maxsim(q_vectors, q_mask, vectors, mask)[0]
        order = scores.argsort(descending=True)[:k].tolist()
        return [Hit(records[i][0], float(scores[i]), r, records[i][1], records[i][2]) for r, i in enumerate(order, 1)]
