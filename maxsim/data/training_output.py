"""The training folder prepare writes: its files (``queries.jsonl``, ``corpus.jsonl``,
``triples.jsonl``, ``dev/``, colbert-ai's ``colbert/`` when asked for, ``manifest.json`` last),
and how an earlier output is replaced without touching what else a user keeps there."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from maxsim.data.collection import Collection
from maxsim.data.training_folder import INCOMPLETE_MARKER, document_text
from maxsim.errors import OutputExistsError
from maxsim.files import atomic_directory, check_replaceable, remove_stale_temps

MANIFEST = "manifest.json"
#: what prepare writes in its output folder; anything else there is left alone
OWNED = ("queries.jsonl", "corpus.jsonl", "triples.jsonl", "dev", "colbert", MANIFEST)


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
                    handle.write(f"{q}\t{d}\t{_grade(collection.grades.get((q, d), 1))}\n")
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
            raise OutputExistsError(f"the input {path} is inside the output folder {output}: writing there could "
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


def _grade(value: float) -> str:
    """A relevance grade as qrels write it: ``2``, ``0.5``.

    >>> _grade(2.0), _grade(0.5)
    ('2', '0.5')
    """
    return str(int(value)) if float(value).is_integer() else repr(float(value))


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
    from 0), triples.jsonl (``[qid, pid+, pid-, ...]`` per line, or with teacher scores
    ``[qid, [pid+, score], [pid-, score], ...]`` as colbert-ai's distillation reads them) and
    ids.json mapping the integer ids back to maxsim's."""
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
        for t in triples:  # colbert-ai's lines hold one positive: a line of several becomes several
            negatives = [pid_of[n] for n in t["negative_ids"]]
            n_positives = len(t["positive_ids"])
            for i, positive in enumerate(t["positive_ids"]):
                pids = [pid_of[positive]] + negatives
                scores = [t["scores"][i]] + t["scores"][n_positives:] if "scores" in t else None
                row = [qid_of[t["query_id"]]] + ([[p, s] for p, s in zip(pids, scores)] if scores else pids)
                handle.write(json.dumps(row) + "\n")
    (out / "ids.json").write_text(json.dumps({"queries": query_ids, "documents": doc_ids}) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
