"""Gathering what users bring into one :class:`Collection`: queries, documents, relevance.

Rows come from files (:mod:`maxsim.data.readers`), BEIR folders (their qrels read by
:func:`maxsim.data.qrels.read_qrels`, the parser evaluation uses too) and Python lists
(RAGatouille's ``raw_data``). Texts and ids are merged (the same text under two ids keeps the
first id), each bad row is an :class:`InvalidItem` that :class:`RowErrors` turns into a
:class:`~maxsim.data.errors.DataError` naming the file and line, or a counted skip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maxsim.data.settings import Kind
from maxsim.data.training_folder import document_text
from maxsim.ids import id_of_normal, normalise


class InvalidItem(Exception):
    """One bad row; becomes a DataError, or a skip counted in the manifest."""

    def __init__(self, reason: str, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.reason, self.problem, self.fix = reason, problem, fix


@dataclass
class Collection:
    """Queries, documents and relevance gathered from every input, merged by id and by text."""

    queries: dict[str, str] = field(default_factory=dict)
    documents: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (title, text)
    positives: dict[str, dict[str, None]] = field(default_factory=dict)  # ordered sets
    negatives: dict[str, dict[str, None]] = field(default_factory=dict)
    #: teacher scores of (query id, document id) pairs, from scored rows
    scores: dict[tuple[str, str], float] = field(default_factory=dict)
    #: relevance grades of (query id, positive id) pairs from qrels (graded or fractional); a
    #: positive without one has grade 1
    grades: dict[tuple[str, str], float] = field(default_factory=dict)
    _query_by_text: dict[str, str] = field(default_factory=dict)
    _document_by_text: dict[str, str] = field(default_factory=dict)
    merged: Counter = field(default_factory=Counter)

    def add_query(self, text: Any, given_id: Any = None) -> str:
        text = _text(text, "query")
        return self._add(self.queries, self._query_by_text, text, text, given_id, "q", "queries")

    def add_document(self, text: Any, given_id: Any = None, title: str = "") -> str:
        text = _text(text, "passage")
        full = document_text(title, text)
        return self._add(self.documents, self._document_by_text, full, (title or "", text), given_id, "d", "documents")

    def _add(self, store, by_text, full: str, value, given_id, prefix: str, what: str) -> str:
        key = normalise(full)
        if given_id is not None and str(given_id).strip() != "":
            item_id = str(given_id).strip()
            if any(c in item_id for c in "\t\r\n"):
                raise InvalidItem("bad id", f"id {item_id!r} holds a tab or a line break, which the tab-separated "
                                  "files maxsim writes (dev qrels, colbert export) cannot hold",
                                  "remove tabs and line breaks from ids")
            if item_id in store:
                old = store[item_id]
                old_full = document_text(*old) if isinstance(old, tuple) else old
                if normalise(old_full) != key:
                    raise InvalidItem("conflicting id", f'id "{item_id}" was given two different texts ({what})',
                                      "give each text its own id")
                self.merged[f"duplicate {what}"] += 1
                return item_id
            if key in by_text:  # the same text under another id: merge into the first id
                self.merged[f"{what} with the same text under two ids"] += 1
                return by_text[key]
        else:
            if key in by_text:
                self.merged[f"duplicate {what}"] += 1
                return by_text[key]
            item_id = id_of_normal(key, prefix)
        store[item_id] = value
        by_text[key] = item_id
        return item_id

    def relate(self, query_id: str, doc_id: str, positive: bool) -> None:
        (self.positives if positive else self.negatives).setdefault(query_id, {})[doc_id] = None


def _text(value: Any, what: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise InvalidItem(f"empty {what}", f"the {what} is missing", f"fill in the {what} or remove the row")
    if not isinstance(value, str):
        raise InvalidItem(f"bad {what}", f"the {what} must be text, got {type(value).__name__}")
    if not value.strip():
        raise InvalidItem(f"empty {what}", f"the {what} is empty", f"fill in the {what} or remove the row")
    return value.strip()


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return [value]


# ----------------------------------------------------------------------------- input kinds
def detect_kind(columns: Sequence[str]) -> Kind:
    """The kind of a table from its columns."""
    cols = set(columns)
    if "query" not in cols:
        raise InvalidItem("missing column", f"no 'query' column (columns: {', '.join(columns)})",
                          "name the columns query,positive[,negative] or query,passage,label")
    if {"passage", "label"} <= cols:
        return "labelled"
    if {"documents", "scores"} <= cols:
        return "scored"
    if "positive" in cols and "negative" in cols:
        return "triplets"
    if "positive" in cols:
        return "pairs"
    raise InvalidItem("missing column", f"cannot tell the kind from columns {', '.join(columns)}",
                      "use query,positive (pairs), query,positive,negative (triplets) or query,passage,label")


def _label(value: Any, positive_labels: set[str], negative_labels: set[str]) -> bool:
    if isinstance(value, bool):
        key = "1" if value else "0"
    elif isinstance(value, float) and value.is_integer():
        key = str(int(value))
    else:
        key = str(value).strip().lower()
    if key in positive_labels:
        return True
    if key in negative_labels:
        return False
    raise InvalidItem("label outside the configured ones",
                      f"label {value!r} is neither a positive label ({', '.join(sorted(positive_labels))}) "
                      f"nor a negative one ({', '.join(sorted(negative_labels))})",
                      "fix the label, or pass --positive-label / --negative-label")


def add_row(collection: Collection, kind: Kind, row: dict, positive_labels: set[str],
            negative_labels: set[str]) -> None:
    """Add one row of a pairs, labelled or triplets table."""
    required = {"pairs": ("query", "positive"), "labelled": ("query", "passage", "label"),
                "triplets": ("query", "positive", "negative"), "scored": ("query", "documents", "scores")}[kind]
    for column in required:
        if column not in row:
            raise InvalidItem("missing column", f"no '{column}' column for {kind}", f"add the '{column}' column")
    # check the whole row before anything is added
    _text(row["query"], "query")
    if kind == "scored":
        _add_scored(collection, row)
        return
    if kind == "labelled":
        positive = _label(row["label"], positive_labels, negative_labels)
        _text(row["passage"], "passage")
    else:
        for column in ("positive", "negative"):
            for text in _as_list(row.get(column)):
                _text(text, "passage")
    qid = collection.add_query(row["query"], row.get("query_id"))
    if kind == "labelled":
        did = collection.add_document(row["passage"], row.get("passage_id"))
        collection.relate(qid, did, positive)
        return
    for column, positive in (("positive", True), ("negative", False)):
        if column not in row:
            continue
        texts = _as_list(row[column])
        ids = _as_list(row.get(f"{column}_id"))
        if not texts:
            raise InvalidItem(f"empty {column}", f"the {column} is empty", f"give at least one {column}")
        if ids and len(ids) != len(texts):
            raise InvalidItem("id count", f"{len(ids)} {column}_id values for {len(texts)} {column} texts",
                              "give one id per text")
        for i, text in enumerate(texts):
            did = collection.add_document(text, ids[i] if ids else None)
            collection.relate(qid, did, positive)


def _add_scored(collection: Collection, row: dict) -> None:
    """A PyLate distillation row: a query, its documents and a teacher score for each. The
    best-scored document is the positive, the others its negatives, every score kept."""
    documents, scores = _as_list(row["documents"]), _as_list(row["scores"])
    if not documents:
        raise InvalidItem("empty documents", "documents is empty", "give at least two documents")
    if len(scores) != len(documents):
        raise InvalidItem("score count", f"{len(scores)} scores for {len(documents)} documents",
                          "give one score per document, in the same order")
    for value in scores:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
            raise InvalidItem("bad score", f"score {value!r} is not a number", "give every document a finite number")
    for text in documents:
        _text(text, "document")
    ids = _as_list(row.get("document_ids"))
    if ids and len(ids) != len(documents):
        raise InvalidItem("id count", f"{len(ids)} document_ids for {len(documents)} documents", "give one id per text")
    qid = collection.add_query(row["query"], row.get("query_id"))
    best = int(np.argmax(scores))
    for i, (text, value) in enumerate(zip(documents, scores)):
        did = collection.add_document(text, ids[i] if ids else None)
        collection.relate(qid, did, i == best)
        collection.scores[(qid, did)] = float(value)
