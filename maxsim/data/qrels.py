"""Relevance judgements (qrels): one reader, and one rule for what counts as relevant.

A BEIR ``qrels/<split>.tsv`` has a header row and ``query-id<TAB>corpus-id<TAB>score`` lines;
TREC qrels files (``qid 0 docid score``, space separated) are read too. Scores may be graded
(0, 1, 2, ...) or fractional (0.5). A document is relevant when its score is above 0
(:func:`is_relevant`), everywhere: ``prepare`` takes those as positives, ``eval`` and
validation as relevant, with their grades as nDCG gains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from maxsim.data.errors import DataError

HEADER_FIRST_FIELDS = {"query-id", "query_id", "qid"}


def is_relevant(score: float) -> bool:
    """The one rule: a judgement scores a document relevant when its score is above 0.

    >>> is_relevant(1), is_relevant(0.5), is_relevant(0), is_relevant(-1)
    (True, True, False, False)
    """
    return score > 0


@dataclass(frozen=True)
class Judgement:
    """One qrels line: ``line`` is its 1-based line number in the file."""

    line: int
    query_id: str
    doc_id: str
    score: float


def read_qrels(path: str | Path) -> list[Judgement]:
    """Every judgement of a qrels file, in file order, with its line number.

    Raises :class:`DataError` (file and line) for a missing file, a line without three fields
    or a score that is not a finite number. Judgements scoring 0 or less are returned too; use
    :func:`is_relevant` to keep the relevant ones.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "qrels file not found", "check the split name and the folder")
    out = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 1:  # TREC style: query-id 0 doc-id score
                fields = line.split()
                parts = [fields[0], fields[2], fields[3]] if len(fields) == 4 else fields
            if number == 1 and parts[0].strip().lower() in HEADER_FIRST_FIELDS:
                continue
            if len(parts) < 3:
                raise DataError(path, number, "expected query-id<TAB>corpus-id<TAB>score",
                                "write three tab-separated fields per line")
            qid, did, text = parts[0].strip(), parts[1].strip(), parts[2].strip()
            try:
                score = float(text)
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                raise DataError(path, number, f"score {text!r} is not a number", "write a number such as 0, 1 or 2")
            if not qid or not did:
                raise DataError(path, number, "an empty query or document id", "fill in both ids")
            out.append(Judgement(number, qid, did, score))
    return out


def integer_gains(qrels: dict[str, dict[str, float]]) -> dict[str, dict[str, int]]:
    """The same judgements as integers, which pytrec_eval requires.

    Integer grades are kept as they are. Fractional ones are all multiplied by the smallest
    integer that makes every grade whole (0.5 and 1 become 1 and 2): nDCG is unchanged by a
    common factor, and every relevant grade stays at least 1, so binary measures (MRR, recall,
    MAP) count exactly the documents :func:`is_relevant` accepts.

    >>> integer_gains({"q": {"a": 0.5, "b": 1.0, "c": 0}})
    {'q': {'a': 1, 'b': 2, 'c': 0}}
    """
    grades = {score for docs in qrels.values() for score in docs.values()}
    factor = 1
    for score in grades:
        if score != int(score):
            denominator = Fraction(score).limit_denominator(10**6).denominator
            factor = factor * denominator // math.gcd(factor, denominator)
    return {q: {d: round(score * factor) for d, score in docs.items()} for q, docs in qrels.items()}
