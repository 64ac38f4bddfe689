"""RAGatouille's training data as maxsim reads it: the kinds of raw data it takes (pairs,
labelled pairs, triplets; a passage a str, a list of str or a dict with "content"), and the three
files RAGatouille writes beside its training folder."""

from __future__ import annotations

import json
from pathlib import Path

from maxsim.data.jsonl import read_jsonl
from maxsim.data.training_folder import document_text
from maxsim.files import atomic_write_text
from maxsim.ids import normalise

#: the maxsim training folder inside ``data_out_path``, beside RAGatouille's three files
MAXSIM_DATA = "maxsim"


def raw_kind(raw_data, pairs_with_labels: bool, positive_label, negative_label) -> str:
    """The kind of ``raw_data`` by RAGatouille's rules, with its ValueErrors."""
    if not raw_data:
        raise ValueError("Raw data must be a list of pairs or triplets of strings.")
    sample = raw_data[0]
    if len(sample) == 2:
        kind = "pairs"
    elif len(sample) == 3:
        if pairs_with_labels:
            kind = "labelled"
            if sample[-1] not in [positive_label, negative_label]:
                raise ValueError(f"Invalid value for label: {sample}")
        else:
            kind = "triplets"
    else:
        raise ValueError("Raw data must be a list of pairs or triplets of strings.")
    for row in raw_data:
        if not isinstance(row[0], str):
            raise ValueError("Queries must be a strings.")
        if kind == "labelled" and row[2] not in [positive_label, negative_label]:
            raise ValueError(f"Label {row[2]} must correspond to either positive_label or negative_label!")
    return kind


def _passages(value) -> list[str]:
    """A passage as RAGatouille takes it: a str, a list of str, or a dict with "content"."""
    if isinstance(value, dict):
        return [value["content"]]
    if isinstance(value, (list, tuple)):
        return [v["content"] if isinstance(v, dict) else v for v in value]
    return [value]


def rows_of(raw_data, kind: str) -> list[dict]:
    """RAGatouille rows as maxsim's (one row per labelled passage)."""
    if kind == "pairs":
        return [{"query": q, "positive": _passages(p)} for q, p in raw_data]
    if kind == "triplets":
        return [{"query": q, "positive": _passages(p), "negative": _passages(n)} for q, p, n in raw_data]
    return [{"query": q, "passage": text, "label": str(label)} for q, p, label in raw_data for text in _passages(p)]


def write_ragatouille_files(out: Path, asked: list[str] = ()) -> tuple[set[str], list[str], list[list[int]]]:
    """RAGatouille's queries.train.colbert.tsv, corpus.train.colbert.tsv and
    triples.train.colbert.jsonl (``[query, positive, negative]`` line numbers) from the maxsim
    folder; returns (queries, collection, training_triplets) as RAGatouille's trainer holds them.
    ``asked``: the query texts of the raw data; those without a positive (no triple) are kept
    too, after the others, as RAGatouille keeps every query."""
    folder = out / MAXSIM_DATA
    queries = {str(o["_id"]): o["text"] for _, o in read_jsonl(folder / "queries.jsonl")}
    known = {normalise(q) for q in queries.values()}
    unpaired = dict.fromkeys(q for q in asked if normalise(q) not in known)
    queries.update({f"unpaired-{i}": text for i, text in enumerate(unpaired)})
    documents = {str(o["_id"]): document_text(o.get("title"), o["text"])
                 for _, o in read_jsonl(folder / "corpus.jsonl")}
    query_index = {q: i for i, q in enumerate(queries)}
    document_index = {d: i for i, d in enumerate(documents)}
    triplets = []
    for _, line in read_jsonl(folder / "triples.jsonl"):
        q = query_index[str(line["query_id"])]
        for p in line["positive_ids"]:
            triplets += [[q, document_index[str(p)], document_index[str(n)]] for n in line["negative_ids"]]

    def tsv(texts) -> str:
        return "".join(f"{i}\t{t.replace(chr(9), ' ').replace(chr(10), ' ')}\n" for i, t in enumerate(texts))

    atomic_write_text(out / "queries.train.colbert.tsv", tsv(queries.values()))
    atomic_write_text(out / "corpus.train.colbert.tsv", tsv(documents.values()))
    atomic_write_text(out / "triples.train.colbert.jsonl", "".join(json.dumps(t) + "\n" for t in triplets))
    return set(queries.values()), list(documents.values()), triplets
