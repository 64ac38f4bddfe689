"""How an index is built, declared once: :class:`IndexSettings`, saved in every ``index.json``,
whose defaults the library's and the command line's are (light: no array library is loaded)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from maxsim.lexical import DEFAULT_LANGUAGE


class IndexSettings(BaseModel):
    """How an index was built; saved in ``index.json`` (beside the counts and checksums)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    nbits: Literal[1, 2, 4] = Field(2, description="Bits per dimension of each residual: 1, 2 or 4 (more: closer "
                                    "to the encoded vectors, a larger index).")
    dim: int
    #: the folder the model was loaded from (None: a model held only in memory)
    model_path: str | None = None
    #: :meth:`maxsim.model.ColBERT.digest` of the model that encoded the documents
    model_digest: str | None = None
    model_settings: dict | None = None
    #: documents longer than ``max_document_tokens`` are split into chunks (else truncated)
    split_documents: bool = True
    max_document_tokens: int = Field(description="Split documents into chunks of at most this many tokens "
                                     "[default: the model's doc_maxlen].")
    #: the seed of the centroids' k-means
    seed: int = 0
    #: the precision documents were encoded in (``bfloat16``, ``float32``, ``bfloat16 autocast``)
    encoded_in: str | None = None
    #: (:mod:`maxsim.index.pooling`; documents added later are pooled the same way)
    pool_factor: int = Field(1, ge=1, description="Token pooling: store about 1/N of each chunk's vectors, "
                             "clustered and mean-pooled (as PyLate's pool_factor; 1: none).")
    #: the language of the BM25 side (:mod:`maxsim.index.postings`) kept for hybrid search; None:
    #: the index has none (built before maxsim kept one, or without it): ``maxsim index add-bm25``
    bm25_language: str | None = None


#: the BM25 side's language of a new index
DEFAULT_BM25_LANGUAGE = DEFAULT_LANGUAGE


def default(setting: str):
    """The default of one of :class:`IndexSettings`' fields, declared there once.

    >>> default("nbits"), default("pool_factor")
    (2, 1)
    """
    return IndexSettings.model_fields[setting].default
