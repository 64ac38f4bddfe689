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
                                    "to the encoded vectors, a larger index) [default: 4 for a corpus of fewer "
                                    "than 10,000 documents, else 2].")
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


#: a corpus of fewer documents than this is indexed with 4-bit residuals unless told otherwise, a
#: larger one with 2-bit (RAGatouille picks its nbits by corpus size too). On SciFact's dev slice
#: (5,183 abstracts) 4 bits take recall@10 against exact MaxSim from 0.867 to 0.904 at the default
#: search settings, where 2 bits cannot pass 0.895 even with every chunk scored; they cost 32 more
#: bytes a token at dim 128 (26 MB for SciFact, 3.2 GB for 100 million tokens).
SMALL_CORPUS_DOCUMENTS = 10_000


def nbits_for(n_documents: int) -> int:
    """The nbits of a new index of ``n_documents`` when none is given: 4 under
    ``SMALL_CORPUS_DOCUMENTS``, else :class:`IndexSettings`' default, 2.

    >>> nbits_for(5_183), nbits_for(10_000)
    (4, 2)
    """
    return 4 if n_documents < SMALL_CORPUS_DOCUMENTS else default("nbits")


#: the BM25 side's language of a new index
DEFAULT_BM25_LANGUAGE = DEFAULT_LANGUAGE


def default(setting: str):
    """The default of one of :class:`IndexSettings`' fields, declared there once.

    >>> default("nbits"), default("pool_factor")
    (2, 1)
    """
    return IndexSettings.model_fields[setting].default
