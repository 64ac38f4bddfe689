"""Text into the vectors a retriever stores and searches: queries padded for MaxSim, documents cut
into chunks (pooled as the index pools them), on the model or its frozen CPU copy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maxsim.backends.base import Chunking
from maxsim.errors import SettingsError
from maxsim.index.pooling import pool_tokens
from maxsim.model import ColBERT, InferenceForward


class TextEncoder:
    """A ColBERT model's encoding of texts. On a CPU it encodes through a frozen bf16/traced
    copy (:class:`~maxsim.model.InferenceForward`); set ``inference_forward`` to None to encode
    with the model itself in float32.

    Queries may be encoded in a precision of their own (``query_precision``: ``auto``, the
    documents' copy; ``float32``, ``bf16`` or ``int8``, a frozen copy of their own, made once)."""

    def __init__(self, model: ColBERT, query_precision: str = "auto") -> None:
        self.model = model
        self.inference_forward: InferenceForward | None = (
            InferenceForward(model) if model.device.type == "cpu" else None)
        self._query_forward: InferenceForward | None = None
        self._trace_queries = True
        self.query_precision = query_precision

    @property
    def trace_queries(self) -> bool:
        """Whether queries run through a trace of their shape on a CPU. A trace is made once per
        shape (0.5-1 s) and pays back over many queries (a server, a loop); a process that
        encodes a few queries and exits (``maxsim search``) is faster without."""
        return self._trace_queries

    @trace_queries.setter
    def trace_queries(self, on: bool) -> None:
        self._trace_queries = on
        for forward in (self.inference_forward, self._query_forward):
            if forward is not None:
                forward.trace = on

    @property
    def query_precision(self) -> str:
        """``auto`` (as documents), ``float32``, ``bf16`` or ``int8``."""
        return self._query_precision

    @query_precision.setter
    def query_precision(self, precision: str) -> None:
        if precision != "auto" and self.model.device.type != "cpu":
            raise SettingsError(f"query precision {precision!r} is for encoding on a CPU; this model is on "
                                f"{self.model.device}: leave it at auto")
        self._query_forward = None if precision == "auto" else InferenceForward.for_precision(self.model, precision)
        if self._query_forward is not None:
            self._query_forward.trace = self._trace_queries
        self._query_precision = precision

    def queries(self, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, query_maxlen, dim) float32 CPU vectors and their (Q, query_maxlen) bool mask."""
        forward = self._query_forward if self._query_forward is not None else self.inference_forward
        return self.model.encode_queries(list(texts), batch_size=batch_size, padded=True, forward=forward)

    def documents(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L, dim) float32 CPU vectors of whole documents (truncated to doc_maxlen) and their (N, L) mask."""
        return self.model.encode_documents(list(texts), padded=True, forward=self.inference_forward)

    def chunks(self, texts: Sequence[str], chunking: Chunking, batch_size: int = 64):
        """Each text's chunks encoded as ``chunking`` says (split or truncated, pooled): (vectors
        (T, dim) float32 back to back, doclens (N,) int32, chunk_docs (N,) int32 position of each
        chunk's text, spans (N,) of (start, end) characters)."""
        chunks = self.model.tokenize_document_chunks(texts, chunking.split_documents, chunking.max_document_tokens)
        flat = [tokens for doc in chunks for tokens, _ in doc]
        spans = [span for doc in chunks for _, span in doc]
        chunk_docs = np.array([i for i, doc in enumerate(chunks) for _ in doc], dtype=np.int32)
        per_chunk = [pool_tokens(v.numpy(), chunking.pool_factor)
                     for v in self.model.encode_token_ids(flat, False, batch_size, self.inference_forward)]
        doclens = np.array([len(v) for v in per_chunk], dtype=np.int32)
        vectors = np.concatenate(per_chunk) if per_chunk else np.zeros((0, self.model.settings.dim))
        return vectors, doclens, chunk_docs, spans

    def precision(self) -> str:
        """How documents are encoded here: the inference copy's dtype, bf16 autocast on CUDA, or float32."""
        if self.inference_forward is not None:
            return str(self.inference_forward.dtype).removeprefix("torch.")
        return "bfloat16 autocast" if self.model.device.type == "cuda" else "float32"
