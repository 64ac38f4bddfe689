"""The service's requests: what a search, an add and a delete may hold, checked before any work."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from maxsim.fusion import hybrid_settings
from maxsim.index.filters import Filter
from maxsim.inputs import DEFAULT_K
from maxsim.limits import check_metadata, check_query, check_text

MAX_K = 1000
MAX_QUERIES = 256
MAX_DOCUMENTS = 1000


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[str] = Field(min_length=1, max_length=MAX_QUERIES)
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)
    ncells: int | None = Field(None, ge=1, le=1 << 16)
    ndocs: int | None = Field(None, ge=0, le=1 << 20)
    #: which documents may be returned (the grammar of maxsim.index.filters)
    filter: Any = None
    #: fuse with BM25: true (the model's fusion, else the default one), "rrf", "weighted", or
    #: {"fusion", "weight", "rrf_k", "depth"} (maxsim.fusion.Hybrid); each hit then has
    #: maxsim_score and bm25_score. false: MaxSim alone. Absent: what the model's search.json chose
    hybrid: Any = None

    @field_validator("hybrid", mode="before")
    @classmethod
    def _hybrid(cls, value):
        if value is not None and not isinstance(value, (bool, str, dict)):
            raise ValueError("hybrid is true, false, \"rrf\", \"weighted\" or an object of fusion settings")
        return value if value is None or isinstance(value, bool) else hybrid_settings(value)

    @field_validator("filter", mode="before")
    @classmethod
    def _filter(cls, value):
        if value is not None:
            Filter(value)  # the grammar (walking two levels at most); fields are checked against the index
        return value

    @field_validator("queries", mode="before")
    @classmethod
    def _text(cls, value):
        if isinstance(value, list):
            for i, query in enumerate(value):
                if isinstance(query, str):
                    check_query(query, f"query {i}")
        return value


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the document's id (``id`` is read too)
    document_id: str = Field(min_length=1, validation_alias=AliasChoices("document_id", "id"))
    text: str = Field(min_length=1)
    # (bounded before pydantic walks it: a nesting deep enough would overflow its stack)
    metadata: Any = None

    @field_validator("document_id", "text", mode="before")
    @classmethod
    def _text(cls, value, info):
        return check_text(value, f"document {info.field_name}") if isinstance(value, str) else value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value):
        return check_metadata(value, "the document")


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[Document] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the ids of the documents to delete (``ids`` is read too)
    document_ids: list[str] = Field(min_length=1, max_length=MAX_DOCUMENTS,
                                    validation_alias=AliasChoices("document_ids", "ids"))

