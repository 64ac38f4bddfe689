"""LangChain wrappers of :class:`maxsim.ragatouille.RAGPretrainedModel`, as RAGatouille's.

Imported only when asked for (``as_langchain_retriever`` / ``as_langchain_document_compressor``),
and only with ``langchain-core`` installed (``pip install 'maxsim[langchain]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun, Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever


class MaxsimLangChainRetriever(BaseRetriever):
    """Documents for a query from the model's :meth:`search` (its kwargs: ``k``, ``index_name``, ...)."""

    model: Any
    kwargs: dict = {}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(page_content=hit["content"], metadata=hit.get("document_metadata", {}))
                for hit in self.model.search(query, **self.kwargs)]


class MaxsimLangChainCompressor(BaseDocumentCompressor):
    """The ``k`` documents that best match a query, reranked by the model's :meth:`rerank`;
    each gets its score as ``metadata["relevance_score"]``."""

    model: Any
    kwargs: dict = {}
    k: int = 5

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        documents = list(documents)
        results = self.model.rerank(query=query, documents=[d.page_content for d in documents], k=self.k,
                                    **self.kwargs)
        out = []
        for result in results:
            document = documents[result["result_index"]]
            document.metadata["relevance_score"] = result["score"]
            out.append(document)
        return out


def retriever_for(model, kwargs: dict) -> MaxsimLangChainRetriever:
    return MaxsimLangChainRetriever(model=model, kwargs=kwargs)


def compressor_for(model, k: int, kwargs: dict) -> MaxsimLangChainCompressor:
    return MaxsimLangChainCompressor(model=model, k=k, kwargs=kwargs)
