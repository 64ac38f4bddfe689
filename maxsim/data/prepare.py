"""From what users have (pairs, labelled pairs, triplets, BEIR folders) to a training folder.

:func:`prepare_training_data` reads every input, checks it (errors name the file and line),
merges duplicate texts and ids, mines negatives from a rank window, and writes the folder that
``maxsim train`` reads, with a ``manifest.json`` that says what went in and what came out. The
same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from maxsim.data.errors import DataError
from maxsim.data.mining import (
    EXACT_SEARCH_LIMIT,
    BM25Miner,
    DenseMiner,
    IndexMiner,
    random_negatives,
    sample_negatives,
    window_for,
)
from maxsim.data.qrels import is_relevant, read_qrels
from maxsim.data.readers import columns_of, file_hash, read_rows
from maxsim.data.training_folder import INCOMPLETE_MARKER, document_text
from maxsim.files import atomic_directory, check_replaceable, remove_stale_temps
from maxsim.ids import normalise, stable_id

logger = logging.getLogger(__name__)

Kind = Literal["pairs", "labelled", "triplets"]
KINDS = ("pairs", "labelled", "triplets")
MANIFEST = "manifest.json"
#: what prepare writes in its output folder; anything else there is left alone
OWNED = ("queries.jsonl", "corpus.jsonl", "triples.jsonl", "dev", "colbert", MANIFEST)


# ----------------------------------------------------------------------------- collecting
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
            item_id = stable_id(full, prefix)
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
                "triplets": ("query", "positive", "negative")}[kind]
    for column in required:
        if column not in row:
            raise InvalidItem("missing column", f"no '{column}' column for {kind}", f"add the '{column}' column")
    # check the whole row before anything is added
    _text(row["query"], "query")
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


def _row_from_tuple(item: Sequence, kind: Kind | None) -> tuple[Kind, dict]:
    if isinstance(item, dict):
        return kind or detect_kind(list(item)), item
    item = list(item)
    if kind is None:
        if len(item) == 2:
            kind = "pairs"
        elif len(item) == 3:
            kind = "labelled" if isinstance(item[2], (bool, int, float)) else "triplets"
        else:
            raise InvalidItem("bad tuple", f"a tuple of {len(item)} items",
                              "give (query, positive), (query, passage, label) or (query, positive, negative)")
    names = {"pairs": ("query", "positive"), "labelled": ("query", "passage", "label"),
             "triplets": ("query", "positive", "negative")}[kind]
    if len(item) != len(names):
        raise InvalidItem("bad tuple", f"{kind} need {len(names)} items, got {len(item)}")
    return kind, dict(zip(names, item))


def _read_beir(collection: Collection, folder: Path, split: str, skip, stats: dict) -> None:
    """Add a BEIR folder's corpus, and the queries and positives of ``qrels/<split>.tsv``.

    A qrels line is a positive when :func:`~maxsim.data.qrels.is_relevant` says so (score above
    0). Ids repeated in queries.jsonl or corpus.jsonl are errors, as ``maxsim eval`` has them.
    """
    from maxsim.data.jsonl import read_jsonl

    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DataError(qrels_path, None, f"this BEIR folder has no qrels for split {split!r}",
                        "pass --split with a split that qrels/ holds")
    doc_ids: dict[str, str] = {}
    doc_lines: dict[str, int] = {}
    for number, obj in read_jsonl(corpus_path):
        with skip(corpus_path, number):
            given = _beir_id(obj, doc_lines, number)
            title = obj.get("title") or ""
            doc_ids[given] = collection.add_document(obj.get("text"), given, title)
    query_texts: dict[str, tuple[int, Any]] = {}
    query_lines: dict[str, int] = {}
    for number, obj in read_jsonl(queries_path):
        with skip(queries_path, number):
            query_texts[_beir_id(obj, query_lines, number)] = (number, obj.get("text"))
    query_ids: dict[str, str] = {}  # BEIR query id -> collection id (the same unless merged)
    for row in read_qrels(qrels_path):
        with skip(qrels_path, row.line):
            if row.doc_id not in doc_ids:
                raise InvalidItem("qrels id absent from corpus", f'document "{row.doc_id}" is not in '
                                  f"{corpus_path.name}", "add the document to corpus.jsonl or remove this qrels line")
            if row.query_id not in query_texts:
                raise InvalidItem("qrels id absent from queries", f'query "{row.query_id}" is not in '
                                  f"{queries_path.name}", "add the query to queries.jsonl or remove this qrels line")
        if row.doc_id not in doc_ids or row.query_id not in query_texts or not is_relevant(row.score):
            continue
        qid = row.query_id
        if qid not in query_ids:
            with skip(queries_path, query_texts[qid][0]):
                query_ids[qid] = collection.add_query(query_texts[qid][1], qid)
        if qid in query_ids:
            collection.relate(query_ids[qid], doc_ids[row.doc_id], True)
            stats["rows"] += 1


def _beir_id(obj: dict, seen: dict[str, int], number: int) -> str:
    """The ``_id`` of a BEIR line, refused when missing or already given on another line."""
    if "_id" not in obj:
        raise InvalidItem("missing column", 'missing field "_id"', 'add "_id"')
    given = str(obj["_id"]).strip()
    if given in seen:
        raise InvalidItem("duplicate id", f'duplicate id "{given}" (first on line {seen[given]})',
                          "give every line its own _id")
    seen[given] = number
    return given


def _read_documents_file(collection: Collection, path: Path, skip) -> None:
    """Extra candidate documents: a corpus.jsonl, any table with a 'text' column, or a BEIR folder
    (its corpus.jsonl)."""
    if path.is_dir():
        path = path / "corpus.jsonl"
    for number, row in read_rows(path):
        with skip(path, number):
            text = row.get("text", row.get("passage"))
            given = row.get("_id", row.get("id", row.get("passage_id")))
            collection.add_document(text, given, row.get("title") or "")


# ----------------------------------------------------------------------------- the whole job
@dataclass
class PrepareSettings:
    """Every setting of a preparation run (saved in the manifest)."""

    kind: Kind | None = None
    split: str = "train"
    mine: Literal["bm25", "dense", "none"] = "bm25"
    miner_model: str | None = None
    dense_search: Literal["auto", "exact", "index"] = "auto"
    negatives: int = 10
    min_rank: int = 10
    max_rank: int = 100
    false_negative_margin: float | None = None
    dev_fraction: float | None = None
    seed: int = 42
    positive_labels: tuple[str, ...] = ("1",)
    negative_labels: tuple[str, ...] = ("0",)
    skip_invalid: bool = False
    export: tuple[str, ...] = ()
    batch_size: int = 64


def prepare_training_data(
    inputs: Sequence[str | Path | Sequence] | str | Path,
    output: str | Path,
    *,
    all_documents: Sequence[str] | None = None,
    corpus: Sequence[str | Path] = (),
    **options,
) -> dict:
    """Build a training folder from pairs, labelled pairs, triplets and/or BEIR folders.

    Parameters
    ----------
    inputs: files (.jsonl, .csv, .tsv, .parquet), BEIR folders, or Python lists of tuples or
        dicts (RAGatouille's ``raw_data``); a single path or list is one input.
    output: the folder to write: new, empty or an earlier prepare output, whose files (and only
        those) are replaced; an input may not lie inside it.
    all_documents: extra document texts that are only candidates for negatives.
    corpus: extra document files, also only candidates for negatives.
    options: the fields of :class:`PrepareSettings` (``mine``, ``negatives``, ``min_rank``, ...).

    Returns
    -------
    The manifest (also written to ``output/manifest.json``).
    """
    settings = _checked_settings(options)
    inputs = _as_inputs(inputs)
    output = Path(output)
    check_output(output, [Path(i) for i in inputs if isinstance(i, (str, Path))] + [Path(c) for c in corpus])

    dropped: Counter = Counter()
    collection, described = gather_inputs(inputs, corpus, all_documents, settings, RowErrors(settings, dropped))
    train_ids, dev_ids = split_dev(_queries_with_positives(collection, described, dropped), settings)
    doc_ids = list(collection.documents)
    mined = mine_negatives(collection, train_ids, doc_ids, settings)
    triples = make_triples(collection, train_ids, doc_ids, mined.negatives, dropped)
    manifest = {
        "format": "maxsim training folder v1",
        "inputs": described,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items()},
        "seed": settings.seed,
        "counts": {
            "queries": len(train_ids),
            "documents": len(doc_ids),
            "positives": sum(len(collection.positives[q]) for q in train_ids),
            "given_negatives": sum(len(collection.negatives.get(q, {})) for q in train_ids),
            "mined_negatives": sum(len(v) for v in mined.negatives.values()),
            "triples": len(triples),
            "dev_queries": len(dev_ids),
        },
        "dropped": dict(sorted((k, v) for k, v in dropped.items() if v)),
        "merged": dict(sorted(collection.merged.items())),
        "mining": {
            "method": settings.mine,
            "window_requested": [settings.min_rank, settings.max_rank],
            "window_used": list(mined.window),
            "dropped_by_false_negative_margin": mined.margin_dropped,
            "notes": mined.notes,
        },
    }
    write_output(output, lambda folder: write_training_folder(
        folder, collection, train_ids, dev_ids, doc_ids, triples, manifest, settings.export))
    return manifest


def _checked_settings(options: dict) -> PrepareSettings:
    settings = PrepareSettings(**options)
    if settings.mine == "dense" and not settings.miner_model:
        raise ValueError("--mine dense needs --miner-model DIR (a maxsim checkpoint or a base model folder)")
    if settings.negatives < 0:
        raise ValueError("--negatives must be 0 or more")
    window_for(10**9, settings.min_rank, settings.max_rank, 0, 0)  # checks the window
    return settings


def _as_inputs(inputs) -> list:
    """A list of inputs: a single path, or one Python list of rows, becomes a list of one."""
    if isinstance(inputs, (str, Path)):
        return [inputs]
    if inputs and not isinstance(inputs[0], (str, Path)) and not (
            isinstance(inputs[0], list) and inputs[0] and isinstance(inputs[0][0], (tuple, list, dict))):
        return [inputs]  # one Python list of rows (tuples or dicts), not a list of inputs
    return list(inputs)


class RowErrors:
    """``with row_errors(path, line):`` turns an InvalidItem into a DataError naming the place,
    or, with ``skip_invalid``, counts it in ``dropped`` and goes on."""

    def __init__(self, settings: PrepareSettings, dropped: Counter) -> None:
        self.skip_invalid, self.dropped = settings.skip_invalid, dropped

    @contextmanager
    def __call__(self, path, line):
        try:
            yield
        except InvalidItem as exc:
            if not self.skip_invalid:
                fix = f"{exc.fix or 'fix the row'} (or pass --skip-invalid)"
                raise DataError(path, line, exc.problem, fix) from None
            self.dropped[exc.reason] += 1


def gather_inputs(inputs: list, corpus: Sequence[str | Path], all_documents: Sequence[str] | None,
                  settings: PrepareSettings, skip: RowErrors) -> tuple[Collection, list[dict]]:
    """Read every input into one :class:`Collection`; returns it and a description of each input
    (kind, rows, sha256) for the manifest."""
    collection = Collection()
    positive_labels = {str(x).strip().lower() for x in settings.positive_labels}
    negative_labels = {str(x).strip().lower() for x in settings.negative_labels}
    described = []
    for index, item in enumerate(inputs):
        stats = {"rows": 0}
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                _read_beir(collection, path, settings.split, skip, stats)
                described.append({"input": str(path), "kind": f"beir:{settings.split}", "rows": stats["rows"],
                                  "sha256": file_hash(path)})
                continue
            try:
                kind = settings.kind or detect_kind(columns_of(path))
            except InvalidItem as exc:
                raise DataError(path, 1, exc.problem, exc.fix) from None
            for number, row in read_rows(path):
                with skip(path, number):
                    add_row(collection, kind, row, positive_labels, negative_labels)
                    stats["rows"] += 1
            described.append({"input": str(path), "kind": kind, "rows": stats["rows"], "sha256": file_hash(path)})
        else:
            name = f"<python list {index}>"
            kinds = set()
            for number, row in enumerate(item, start=1):
                with skip(name, number):
                    kind, values = _row_from_tuple(row, settings.kind)
                    kinds.add(kind)
                    add_row(collection, kind, values, positive_labels, negative_labels)
                    stats["rows"] += 1
            digest = hashlib.sha256(json.dumps(list(item), default=str).encode()).hexdigest()
            described.append({"input": name, "kind": ",".join(sorted(kinds)), "rows": stats["rows"], "sha256": digest})
    for path in corpus:
        _read_documents_file(collection, Path(path), skip)
        described.append({"input": str(path), "kind": "documents", "sha256": file_hash(Path(path))})
    for number, text in enumerate(all_documents or [], start=1):
        with skip("<all_documents>", number):
            collection.add_document(text)
    return collection, described


def _queries_with_positives(collection: Collection, described: list[dict], dropped: Counter) -> list[str]:
    """The queries that have a positive; a query's known positives are removed from its given
    negatives on the way."""
    for qid, negs in collection.negatives.items():
        for did in list(negs):
            if did in collection.positives.get(qid, {}):
                del negs[did]
                dropped["given negative that is also a positive"] += 1
    query_ids = [q for q in collection.queries if collection.positives.get(q)]
    dropped["query without a positive"] += len(collection.queries) - len(query_ids)
    if not query_ids:
        raise DataError(described[0]["input"] if described else "<inputs>", None, "no query has a positive",
                        "give (query, positive) pairs, positive labels or a qrels split")
    return query_ids


def split_dev(query_ids: list[str], settings: PrepareSettings) -> tuple[list[str], list[str]]:
    """(training query ids, dev query ids): ``dev_fraction`` of the queries, chosen by seed."""
    dev_ids: list[str] = []
    if settings.dev_fraction:
        n_dev = int(round(settings.dev_fraction * len(query_ids)))
        if not 0 < n_dev < len(query_ids):
            raise ValueError(f"--dev-fraction {settings.dev_fraction} leaves {n_dev} of {len(query_ids)} "
                             "queries for dev")
        order = np.random.default_rng(settings.seed).permutation(len(query_ids))
        dev_ids = sorted((query_ids[i] for i in order[:n_dev]), key=query_ids.index)
    dev_set = set(dev_ids)
    return [q for q in query_ids if q not in dev_set], dev_ids


@dataclass
class Mined:
    """What mining gave: corpus positions of each query's negatives, the rank window used, the
    candidates the false-negative margin dropped, and notes for the manifest."""

    negatives: dict[str, list[int]]
    window: tuple[int, int]
    margin_dropped: int
    notes: list[str]


def mine_negatives(collection: Collection, train_ids: list[str], doc_ids: list[str],
                   settings: PrepareSettings) -> Mined:
    """``settings.negatives`` negatives per training query from the miner's rank window."""
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    doc_texts = [document_text(*collection.documents[d]) for d in doc_ids]
    positives_of = {q: {doc_index[d] for d in collection.positives[q]} for q in train_ids}
    max_positives = max((len(p) for p in positives_of.values()), default=0)
    low, high, note = window_for(len(doc_ids), settings.min_rank, settings.max_rank, settings.negatives, max_positives)
    notes = [note] if note else []
    started = time.perf_counter()
    mined: dict[str, list[int]] = {}
    margin_dropped = 0
    if settings.negatives > 0 and train_ids:
        if settings.mine == "none":
            for q in train_ids:
                mined[q] = random_negatives(len(doc_ids), positives_of[q], settings.negatives, _rng(settings.seed, q))
        else:
            miner = _miner(doc_texts, settings, notes)
            with_floor = settings.false_negative_margin is not None
            ranking = miner.rank([collection.queries[q] for q in train_ids], high,
                                 [sorted(positives_of[q]) for q in train_ids] if with_floor else None)
            for i, q in enumerate(train_ids):
                positive_score = float(ranking.positive_floor[i]) if with_floor else None
                mined[q], n_drop = sample_negatives(
                    ranking.positions[i], ranking.scores[i], positives_of[q], settings.negatives, low, high,
                    _rng(settings.seed, q), settings.false_negative_margin, positive_score)
                margin_dropped += n_drop
        logger.info("mined negatives (%s) for %d queries in %.2f s", settings.mine, len(train_ids),
                    time.perf_counter() - started)
    short = sum(1 for q in train_ids if len(mined.get(q, [])) < settings.negatives)
    if short and settings.negatives:
        notes.append(f"{short} queries got fewer than {settings.negatives} mined negatives")
    return Mined(mined, (low, high), margin_dropped, notes)


def _miner(doc_texts: list[str], settings: PrepareSettings, notes: list[str]):
    """The miner ``settings.mine`` asks for (bm25 or dense, exact or through an index)."""
    if settings.mine == "bm25":
        return BM25Miner(doc_texts)
    from maxsim.model import ColBERT

    miner_model = ColBERT.from_pretrained(settings.miner_model)
    use_index = settings.dense_search == "index" or (
        settings.dense_search == "auto" and len(doc_texts) > EXACT_SEARCH_LIMIT)
    if use_index:
        notes.append(f"dense mining searched a compressed index of the {len(doc_texts)} documents")
        return IndexMiner(miner_model, doc_texts, settings.batch_size)
    return DenseMiner(miner_model, doc_texts, settings.batch_size)


def make_triples(collection: Collection, train_ids: list[str], doc_ids: list[str], mined: dict[str, list[int]],
                 dropped: Counter) -> list[dict]:
    """One triples line per (query, positive): given negatives first, then mined ones."""
    triples = []
    for q in train_ids:
        negatives = list(collection.negatives.get(q, {})) + [doc_ids[p] for p in mined.get(q, [])]
        negatives = list(dict.fromkeys(negatives))
        if not negatives:
            dropped["query with no negative available"] += 1
            continue
        for positive in collection.positives[q]:
            triples.append({"query_id": q, "positive_ids": [positive], "negative_ids": negatives})
    return triples


def write_training_folder(folder: Path, collection: Collection, train_ids: list[str], dev_ids: list[str],
                          doc_ids: list[str], triples: list[dict], manifest: dict, export: Sequence[str]) -> None:
    """The training folder's files (and dev/, colbert/ when asked for), the manifest last."""
    _write_jsonl(folder / "queries.jsonl", ({"_id": q, "text": collection.queries[q]} for q in train_ids))
    _write_corpus(folder / "corpus.jsonl", collection, doc_ids)
    _write_jsonl(folder / "triples.jsonl", triples)
    if dev_ids:
        dev = folder / "dev"
        (dev / "qrels").mkdir(parents=True)
        _write_jsonl(dev / "queries.jsonl", ({"_id": q, "text": collection.queries[q]} for q in dev_ids))
        _write_corpus(dev / "corpus.jsonl", collection, doc_ids)
        with (dev / "qrels" / "dev.tsv").open("w", encoding="utf-8", newline="") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for q in dev_ids:
                for d in collection.positives[q]:
                    handle.write(f"{q}\t{d}\t1\n")
    if "colbert" in export:
        export_colbert(folder, collection, train_ids, doc_ids, triples)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def is_prepare_output(folder: Path) -> bool:
    """Whether ``folder`` was written by prepare (a manifest, or the marker of an interrupted write)."""
    return (folder / MANIFEST).is_file() or (folder / INCOMPLETE_MARKER).is_file()


def check_output(output: Path, input_paths: Sequence[Path]) -> None:
    """Refuse an output that is a file, a folder prepare did not write, or one holding an input."""
    check_replaceable(output, is_prepare_output, "maxsim prepare output")
    root = output.resolve()
    for path in input_paths:
        if path.resolve() == root or root in path.resolve().parents:
            raise FileExistsError(f"the input {path} is inside the output folder {output}: writing there could "
                                  "replace it; choose an output folder outside the inputs")


def write_output(output: Path, write) -> None:
    """Run ``write(folder)`` into a temporary folder, then put its files at ``output``.

    A new or empty ``output`` is swapped in whole. An earlier prepare output is updated in
    place: only the entries prepare owns (:data:`OWNED`) are replaced or removed, so anything
    else a user keeps there (notes, a training run) stays. While that happens a marker file
    says the folder is incomplete, and ``maxsim train`` refuses it until a prepare finishes.
    """
    if not output.exists() or not any(output.iterdir()):
        with atomic_directory(output) as tmp:
            write(tmp)
        return
    remove_stale_temps(output)
    with atomic_directory(output / ".tmp-prepare") as tmp:  # the finished files, not yet in place
        write(tmp)
    staged = output / ".tmp-prepare"
    marker = output / INCOMPLETE_MARKER
    marker.write_text("maxsim prepare is replacing this folder's files; if this stays, run prepare again\n")
    for name in OWNED:  # the manifest last: a folder with a manifest and no marker is complete
        old, new = output / name, staged / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        if new.exists():
            os.replace(new, old)
    marker.unlink()
    shutil.rmtree(staged, ignore_errors=True)


def _rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator for one query that depends only on the seed and the query id."""
    return np.random.default_rng([seed, int(hashlib.sha256(query_id.encode()).hexdigest()[:15], 16)])


def _write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_corpus(path: Path, collection: Collection, doc_ids: list[str]) -> None:
    _write_jsonl(path, ({"_id": d, "title": collection.documents[d][0], "text": collection.documents[d][1]}
                        for d in doc_ids))


def _tsv(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text)


def export_colbert(folder: Path, collection: Collection, query_ids: list[str], doc_ids: list[str],
                   triples: list[dict]) -> None:
    """colbert-ai's files in ``folder/colbert``: queries.tsv, collection.tsv (pid = line number,
    from 0), triples.jsonl (``[qid, pid+, pid-, ...]`` per line) and ids.json mapping the integer
    ids back to maxsim's."""
    out = folder / "colbert"
    out.mkdir()
    qid_of = {q: i for i, q in enumerate(query_ids)}
    pid_of = {d: i for i, d in enumerate(doc_ids)}
    with (out / "queries.tsv").open("w", encoding="utf-8", newline="\n") as handle:
        for q in query_ids:
            handle.write(f"{qid_of[q]}\t{_tsv(collection.queries[q])}\n")
    with (out / "collection.tsv").open("w", encoding="utf-8", newline="\n") as handle:
        for d in doc_ids:
            handle.write(f"{pid_of[d]}\t{_tsv(document_text(*collection.documents[d]))}\n")
    with (out / "triples.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        for t in triples:
            row = [qid_of[t["query_id"]], pid_of[t["positive_ids"][0]]] + [pid_of[n] for n in t["negative_ids"]]
            handle.write(json.dumps(row) + "\n")
    (out / "ids.json").write_text(json.dumps({"queries": query_ids, "documents": doc_ids}) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
