"""The training-data folder that ``maxsim train`` reads.

::

    DIR/queries.jsonl   {"_id": "q1", "text": "..."}
    DIR/corpus.jsonl    {"_id": "d1", "title": "...", "text": "..."}   (title optional)
    DIR/triples.jsonl   {"query_id": "q1", "positive_ids": ["d1"], "negative_ids": ["d7", "d9"]}
                        optionally with teacher scores for distillation, one per id of
                        positive_ids + negative_ids, in that order: "scores": [9.1, 3.2, 1.7]

Everything is checked when the folder is loaded, before any model is built: each problem is a
:class:`~maxsim.data.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maxsim.data.errors import DataError
from maxsim.data.jsonl import read_jsonl, require_id, require_text
from maxsim.data.qrels import Judgement, is_relevant, read_qrels
from maxsim.files import sha256_of

logger = logging.getLogger(__name__)

#: present while ``maxsim prepare`` replaces the files of an existing folder
INCOMPLETE_MARKER = ".prepare-incomplete"


def document_text(title: str | None, text: str) -> str:
    """The text a document is encoded from: its title, a space, its body."""
    title = (title or "").strip()
    return f"{title} {text}".strip() if title else text.strip()


@dataclass
class Corpus:
    """Documents by position: ``ids[i]`` has text ``texts[i]``; ``index`` maps id -> position."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, path: Path, number: int, doc_id: str, text: str) -> None:
        if doc_id in self.index:
            raise DataError(path, number, f'duplicate id "{doc_id}"', "give every line its own _id")
        self.index[doc_id] = len(self.ids)
        self.ids.append(doc_id)
        self.texts.append(text)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, positions: Sequence[int]) -> Corpus:
        """The documents at ``positions``, in that order.

        >>> Corpus(["a", "b", "c"], ["x", "y", "z"], {"a": 0, "b": 1, "c": 2}).subset([2, 0]).index
        {'c': 0, 'a': 1}
        """
        ids = [self.ids[j] for j in positions]
        return Corpus(ids, [self.texts[j] for j in positions], {d: i for i, d in enumerate(ids)})


def read_queries(path: Path) -> Corpus:
    """Queries of a ``queries.jsonl`` (``_id``, ``text``)."""
    queries = Corpus()
    for number, obj in read_jsonl(path):
        queries.add(path, number, require_id(path, number, obj, "_id"),
                    require_text(path, number, obj, "text"))
    return queries


def read_corpus(path: Path) -> Corpus:
    """Documents of a BEIR ``corpus.jsonl`` (``_id``, optional ``title``, ``text``)."""
    corpus = Corpus()
    for number, obj in read_jsonl(path):
        corpus.add(path, number, *corpus_line(path, number, obj))
    return corpus


#: a corpus line's id field: BEIR's ``_id``, or maxsim's own name for it, ``document_id``, or ``id``
ID_FIELDS = ("_id", "document_id", "id")


def corpus_line(path: Path, number: int, obj: dict) -> tuple[str, str]:
    """(id, text: the title and the text as :func:`document_text` joins them) of one line of a
    ``corpus.jsonl``, or a DataError naming the line."""
    doc_id = require_id(path, number, obj, next((f for f in ID_FIELDS if f in obj), "_id"))
    text = require_text(path, number, obj, "text")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise DataError(path, number, 'field "title" must be a string')
    return doc_id, document_text(title, text)


@dataclass
class Example:
    """One training line: positions of the query, its positives and its negatives, and, when the
    line carries ``"scores"``, the teacher's score of each of those documents (by position)."""

    query: int
    positives: list[int]
    negatives: list[int]
    scores: dict[int, float] | None = None


@dataclass
class TrainingData:
    """A checked training folder: queries, corpus and examples, all by position."""

    folder: Path
    queries: Corpus
    corpus: Corpus
    examples: list[Example]

    @classmethod
    def load(cls, folder: str | Path, nway: int = 2) -> TrainingData:
        """Read and check a training folder; ``nway - 1`` negatives are needed per example."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(folder, None, "training-data folder not found",
                            "pass --data with a folder holding queries.jsonl, corpus.jsonl and "
                            "triples.jsonl (maxsim prepare writes one)")
        if (folder / INCOMPLETE_MARKER).exists():
            raise DataError(folder, None, "a maxsim prepare that was writing this folder did not finish, so its "
                            "files may come from two runs", "run the same maxsim prepare again")
        queries = read_queries(folder / "queries.jsonl")
        corpus = read_corpus(folder / "corpus.jsonl")
        path = folder / "triples.jsonl"
        examples: list[Example] = []
        lines: list[int] = []
        for number, obj in read_jsonl(path):
            query_id = require_id(path, number, obj, "query_id")
            if query_id not in queries.index:
                raise DataError(path, number, f'query_id "{query_id}" is not in queries.jsonl',
                                "add the query to queries.jsonl or remove this line")
            positives = _id_list(path, number, obj, "positive_ids", corpus)
            negatives = _id_list(path, number, obj, "negative_ids", corpus)
            if not positives:
                raise DataError(path, number, "positive_ids is empty", "give at least one positive")
            scores = _scores(path, number, obj, corpus)
            examples.append(Example(queries.index[query_id], positives, negatives, scores))
            lines.append(number)
        if not examples:
            raise DataError(path, None, "no training examples", "add at least one line")
        scored = [number for number, ex in zip(lines, examples) if ex.scores is not None]
        if scored and len(scored) != len(examples):
            unscored = next(number for number, ex in zip(lines, examples) if ex.scores is None)
            raise DataError(path, unscored, f'no "scores", though line {scored[0]} has teacher scores',
                            "give every line its scores, or none")
        data = cls(folder, queries, corpus, examples)
        # A query listed on several lines keeps every positive it has anywhere in the file, and
        # none of them is ever its negative.
        positives_of = data.positives_of()
        for number, ex in zip(lines, examples):
            ex.negatives = [n for n in ex.negatives if n not in positives_of[ex.query]]
            if len(ex.negatives) < nway - 1:
                raise DataError(
                    path, number,
                    f"{len(ex.negatives)} usable negatives (not also positives) but nway={nway} "
                    f"needs {nway - 1}",
                    f"add negatives to this line or train with --nway {len(ex.negatives) + 1}",
                )
        return data

    @property
    def has_scores(self) -> bool:
        """Whether the examples carry teacher scores (then all of them do)."""
        return bool(self.examples) and self.examples[0].scores is not None

    def positives_of(self) -> dict[int, set[int]]:
        """Every known positive of each query (by position), over all examples."""
        out: dict[int, set[int]] = {}
        for ex in self.examples:
            out.setdefault(ex.query, set()).update(ex.positives)
        return out

    def hold_out(self, fraction: float, seed: int) -> tuple[TrainingData, dict[str, dict[str, int]]]:
        """Split off ``fraction`` of the distinct queries, chosen by ``seed``, as a dev set.

        Returns (the training data without them, dev qrels ``{query_id: {doc_id: 1}}``).
        """
        query_positions = sorted({ex.query for ex in self.examples})
        n_dev = int(round(fraction * len(query_positions)))
        if not 0 < n_dev < len(query_positions):
            raise DataError(self.folder / "triples.jsonl", None,
                            f"dev_fraction={fraction} leaves {n_dev} of {len(query_positions)} "
                            "queries for dev", "choose a fraction that keeps some of each")
        rng = np.random.default_rng(seed)
        dev = {query_positions[i] for i in rng.permutation(len(query_positions))[:n_dev]}
        positives = self.positives_of()
        qrels = {
            self.queries.ids[q]: {self.corpus.ids[d]: 1 for d in sorted(positives[q])}
            for q in sorted(dev)
        }
        kept = [ex for ex in self.examples if ex.query not in dev]
        return TrainingData(self.folder, self.queries, self.corpus, kept), qrels


def _id_list(path: Path, number: int, obj: dict, name: str, corpus: Corpus) -> list[int]:
    if name not in obj:
        raise DataError(path, number, f'missing field "{name}"', f'add "{name}": [...] to this line')
    values = obj[name]
    if isinstance(values, (str, int)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list):
        raise DataError(path, number, f'"{name}" must be a list of document ids')
    out = []
    for value in values:
        doc_id = str(value)
        if doc_id not in corpus.index:
            raise DataError(path, number, f'{name} has "{doc_id}", which is not in corpus.jsonl',
                            "add the document to corpus.jsonl or remove the id")
        out.append(corpus.index[doc_id])
    return list(dict.fromkeys(out))


def _scores(path: Path, number: int, obj: dict, corpus: Corpus) -> dict[int, float] | None:
    """The line's teacher scores, aligned with ``positive_ids + negative_ids``, by document position."""
    if "scores" not in obj:
        return None
    values = obj["scores"]
    ids = [obj[name] if isinstance(obj[name], list) else [obj[name]] for name in ("positive_ids", "negative_ids")]
    ids = ids[0] + ids[1]
    if not isinstance(values, list):
        raise DataError(path, number, '"scores" must be a list of numbers, one per id in positive_ids + negative_ids')
    if len(values) != len(ids):
        raise DataError(path, number, f'"scores" has {len(values)} numbers for {len(ids)} documents '
                        "(positive_ids + negative_ids)", "give one score per document, in that order")
    out: dict[int, float] = {}
    for doc_id, value in zip(ids, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(path, number, f'the score of "{doc_id}" is {value!r}, not a number',
                            "give every document a finite number")
        out.setdefault(corpus.index[str(doc_id)], float(value))
    return out


def data_digest(folder: str | Path) -> str:
    """sha256 of a training folder's queries.jsonl, corpus.jsonl and triples.jsonl (names and bytes)."""
    digest = hashlib.sha256()
    for name in ("queries.jsonl", "corpus.jsonl", "triples.jsonl"):
        digest.update(name.encode() + b"\0")
        with (Path(folder) / name).open("rb") as handle:
            sha256_of(handle, digest)
    return digest.hexdigest()


def read_beir_split(folder: str | Path, split: str, strict: bool = False
                    ) -> tuple[Corpus, Corpus, dict[str, dict[str, float]]]:
    """A BEIR folder's queries, corpus and relevant judgements of ``qrels/<split>.tsv``.

    Relevant means :func:`~maxsim.data.qrels.is_relevant` (score above 0); graded and
    fractional scores are kept as they are. Some published BEIR qrels name a few documents that
    their corpus lacks: those count as relevant and can never be retrieved, as in BEIR's own
    evaluation, with a logged warning; ``strict`` makes them an error instead.

    Returns (queries restricted to the split, corpus, qrels ``{query_id: {doc_id: score}}``).
    """
    folder = Path(folder)
    queries = read_queries(folder / "queries.jsonl")
    corpus = read_corpus(folder / "corpus.jsonl")
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise DataError(path, None, f"no qrels for split {split!r}",
                        f"choose a split that {folder / 'qrels'} has")
    qrels: dict[str, dict[str, float]] = {}
    absent: list[Judgement] = []
    for row in read_qrels(path):
        if row.query_id not in queries.index:
            raise DataError(path, row.line, f'query "{row.query_id}" is not in queries.jsonl',
                            "add the query to queries.jsonl or remove this qrels line")
        if not is_relevant(row.score):
            continue
        if row.doc_id not in corpus.index:
            if strict:
                raise DataError(path, row.line, f'document "{row.doc_id}" is not in corpus.jsonl',
                                "add the document to corpus.jsonl or remove this qrels line (or leave "
                                "out --strict to count it as relevant and unretrievable)")
            absent.append(row)
        qrels.setdefault(row.query_id, {})[row.doc_id] = row.score
    if absent:
        logger.warning("%s: %d relevant judgements name documents that corpus.jsonl lacks (first: "
                       "line %d, \"%s\"); they count as relevant and can never be retrieved, as in BEIR's "
                       "own evaluation (--strict refuses them)", path, len(absent), absent[0].line,
                       absent[0].doc_id)
    if not qrels:
        raise DataError(path, None, "no judgement scores a document above 0, so there is nothing to evaluate",
                        "check the split (relevant documents need a score above 0)")
    split_queries = Corpus()
    for qid in qrels:
        split_queries.add(path, None, qid, queries.texts[queries.index[qid]])
    return split_queries, corpus, qrels
