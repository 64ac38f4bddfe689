"""What callers hand a retriever, checked once for every door (the library, the server, the
RAGatouille layer): documents with their ids and metadata, queries, and ``k``."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from maxsim.errors import SettingsError
from maxsim.ids import stable_id
from maxsim.limits import check_metadata, check_query, check_text

#: how many hits a search returns when not told
DEFAULT_K = 10
#: a query token skips the centroids scoring under this for it (its missing similarity stands in)
CENTROID_SCORE_THRESHOLD = 0.4


class SearchSettings(BaseModel):
    """How one search runs: declared here once, for the library's defaults and the command line's
    options (their help is these descriptions). None: the size-aware default of the backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(DEFAULT_K, ge=1, description="Hits per query.")
    ncells: int | None = Field(None, ge=1, description="Centroids probed per query token [default: size-aware].")
    centroid_score_threshold: float | None = Field(
        None, description=f"A query token skips the centroids scoring under this for it [default: "
                          f"{CENTROID_SCORE_THRESHOLD}].")
    ndocs: int | None = Field(None, ge=0, description="The best chunks decompressed and scored again exactly; 0: "
                                                      "none [default: size-aware].")


def literal_choices(annotation) -> list:
    """The fixed choices of a ``Literal`` annotation (or of one in a union with None), else [].

    >>> literal_choices(Literal["a", "b"] | None), literal_choices(int)
    (['a', 'b'], [])
    """
    members = [annotation] if typing.get_origin(annotation) is Literal else typing.get_args(annotation)
    return [c for arg in members if typing.get_origin(arg) is Literal for c in typing.get_args(arg)]


def lowercase_choices(model: type[BaseModel], values):
    """``values`` (a model's input) with each text given for a field of fixed lowercase choices
    (a ``Literal``) lowercased, so that ``--loss Contrastive`` means ``contrastive``: for a
    ``model_validator(mode="before")``.

    >>> from typing import Literal
    >>> class Demo(BaseModel):
    ...     loss: Literal["contrastive", "distillation"] = "contrastive"
    >>> lowercase_choices(Demo, {"loss": "Contrastive"})
    {'loss': 'contrastive'}
    """
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for name, field in model.model_fields.items():
        choices = literal_choices(field.annotation)
        if choices and all(isinstance(c, str) and c == c.lower() for c in choices) \
                and isinstance(out.get(name), str):
            out[name] = out[name].lower()
    return out


def check_k(k: int) -> None:
    """Refuse a ``k`` that is not a whole number of 1 or more (``True`` included).

    >>> check_k(0)
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: k must be a whole number of 1 or more, got 0
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise SettingsError(f"k must be a whole number of 1 or more, got {k!r}")


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


def checked_ids(document_ids) -> list[str]:
    """Document ids to delete or look up (a str or int is one id) as texts, each once, in order."""
    if isinstance(document_ids, (str, int)):
        document_ids = [document_ids]
    return list(dict.fromkeys(str(i) for i in document_ids))


def checked_records(documents, document_ids=None, metadata=None) -> list[dict]:
    """Documents, ids and metadata checked before any work, as ``{"id", "content", "metadata"}``
    records. Metadata must be a JSON object (or None) per document, since it is saved as JSON;
    documents without ids get :func:`maxsim.ids.stable_id` of their text.

    >>> checked_records(["a cat"], ["d1"], [{"year": 2020}])
    [{'id': 'd1', 'content': 'a cat', 'metadata': {'year': 2020}}]
    """
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


def checked_texts(documents: Sequence[str]) -> list[str]:
    """Texts to rerank, each checked (any string, the empty one included)."""
    documents = list(documents)
    for i, document in enumerate(documents):
        check_text(document, f"document at position {i}")
    return documents
