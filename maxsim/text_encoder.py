"""Text into the vectors a retriever stores and searches: queries padded for MaxSim, documents cut
into chunks (pooled as the index pools them), on the model or its frozen CPU copy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maxsim.backends.base import Chunking
from maxsim.index.pooling import pool_tokens
from maxsim.model import ColBERT, InferenceForward


class TextEncoder:
    """A ColBERT model's encoding of texts. On a CPU it encodes through a frozen bf16/traced
    copy (:class:`~maxsim.model.InferenceForward`); set ``inference_forward`` to None to encode
    with the model itself in float32."""

    def __init__(self, model: ColBERT) -> None:
        self.model = model
        self.inference_forward: InferenceForward | None = (
            InferenceForward(model) if model.device.type == "cpu" else None)

    def queries(self, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, query_maxlen, dim) float32 CPU vectors and their (Q, query_maxlen) bool mask."""
        return self.model.encode_queries(list(texts), batch_size=batch_size, padded=True,
                                         forward=self.inference_forward)

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
