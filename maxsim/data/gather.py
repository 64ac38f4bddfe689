"""Reading every input prepare is given into one :class:`~maxsim.data.collection.Collection`:
files of rows (:mod:`maxsim.data.readers`), BEIR folders, colbert-ai's triples files, document
files and Python lists (RAGatouille's ``raw_data``); each bad row named by :class:`RowErrors`."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from maxsim.data.collection import Collection, InvalidItem, add_row, detect_kind
from maxsim.data.errors import DataError
from maxsim.data.qrels import is_relevant, read_qrels
from maxsim.data.readers import columns_of, file_hash, read_rows
from maxsim.data.settings import Kind, PrepareSettings
from maxsim.data.training_folder import document_text


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
            if row.score != 1:
                key = (query_ids[qid], doc_ids[row.doc_id])
                collection.grades[key] = max(row.score, collection.grades.get(key, row.score))
            stats["rows"] += 1


def _is_colbert_triples(path: Path) -> bool:
    """Whether ``path`` is a JSONL file of arrays (colbert-ai's triples) rather than of objects."""
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return False
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def _read_tsv_ids(path: Path) -> dict[str, str]:
    """``id<TAB>text`` lines (colbert-ai's queries.tsv / collection.tsv; a third column, the
    title, goes before the text)."""
    out = {}
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise DataError(path, number, "expected id<TAB>text", "write one id and its text per line")
            out[parts[0]] = document_text(parts[2], parts[1]) if len(parts) > 2 else parts[1]
    return out


def _read_colbert_triples(collection: Collection, path: Path, tsvs: tuple[Path, Path] | None, skip,
                          stats: dict) -> None:
    """colbert-ai's triples: ``[qid, pid+, pid-, ...]``, or with teacher scores ``[qid, [pid,
    score], [pid, score], ...]`` (the first pid the positive), ids into its queries.tsv and
    collection.tsv."""
    from maxsim.data.jsonl import read_jsonl

    if tsvs is None:
        raise DataError(path, None, "colbert-ai triples hold ids, not texts", "pass --queries queries.tsv and "
                        "--collection collection.tsv, colbert-ai's files these ids point into")
    queries, documents = _read_tsv_ids(tsvs[0]), _read_tsv_ids(tsvs[1])
    for number, line in read_jsonl(path, arrays=True):
        with skip(path, number):
            if len(line) < 3:
                raise InvalidItem("short line", "a triple needs a query, a positive and a negative")
            qid, items = str(line[0]), line[1:]
            scored = [isinstance(x, list) for x in items]
            if any(scored) and not all(scored) or (all(scored) and any(len(x) != 2 for x in items)):
                raise InvalidItem("bad triple", "mix of ids and [id, score] pairs",
                                  "write [qid, pid, pid, ...] or [qid, [pid, score], ...]")
            pids = [str(x[0]) if isinstance(x, list) else str(x) for x in items]
            if qid not in queries:
                raise InvalidItem("unknown id", f"query {qid} is not in {tsvs[0].name}", "check the ids")
            missing = [p for p in pids if p not in documents]
            if missing:
                raise InvalidItem("unknown id", f"passage {missing[0]} is not in {tsvs[1].name}", "check the ids")
            scores = [x[1] for x in items] if all(scored) else None
            if scores is not None and any(isinstance(v, bool) or not isinstance(v, (int, float)) or
                                          not np.isfinite(v) for v in scores):
                raise InvalidItem("bad score", "a score is not a number", "give every passage a finite number")
            q = collection.add_query(queries[qid], qid)
            for i, pid in enumerate(pids):
                d = collection.add_document(documents[pid], pid)
                collection.relate(q, d, i == 0)
                if scores is not None:
                    collection.scores[(q, d)] = float(scores[i])
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
                  settings: PrepareSettings, skip: RowErrors,
                  colbert_tsvs: tuple[Path, Path] | None = None) -> tuple[Collection, list[dict]]:
    """Read every input into one :class:`Collection`; returns it and a description of each input
    (kind, rows, sha256) for the manifest. ``colbert_tsvs``: colbert-ai's (queries.tsv,
    collection.tsv) that the ids of colbert-ai triples inputs point into."""
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
            if _is_colbert_triples(path):
                _read_colbert_triples(collection, path, colbert_tsvs, skip, stats)
                described.append({"input": str(path), "kind": "colbert-triples", "rows": stats["rows"],
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
