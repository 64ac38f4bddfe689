"""One segment's BM25 side: the terms of its documents' texts and their posting lists, with
term counts rather than scores, so that any set of segments is scored with statistics of the
whole index (:mod:`maxsim.index.bm25_search`), and adds, deletes and merges stay exact.

Files, in a folder ``bm25-<32 hex>/`` inside the segment's folder (written whole, then one
rename; the manifest's segment entry names it, with each file's size, header and sha256)::

    terms.npy         (B,) uint8 every term in UTF-8, back to back, sorted by their bytes
    term_offsets.npy  (V + 1,) int64 where each term's bytes start in terms.npy
    indptr.npy        (V + 1,) int64 where each term's postings start
    documents.npy     (E,) int32 the segment position of each posting's document, ascending per term
    tfs.npy           (E,) int32 how often the term occurs in that document
    lengths.npy       (N,) int32 terms (after stop words) of each document of the segment

Terms are found by binary search over the memory-mapped bytes (no vocabulary is loaded when a
segment opens); a term that no document holds is not stored.
"""

from __future__ import annotations

import bisect
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxsim.errors import MaxsimError
from maxsim.files import checksum_problems, open_array, save_array
from maxsim.lexical import Analyzer, term_counts

POSTINGS_PREFIX = "bm25-"
POSTINGS_ARRAYS = ("terms", "term_offsets", "indptr", "documents", "tfs", "lengths")


class PostingsError(MaxsimError, ValueError):
    """A segment's BM25 files do not match what the manifest says of them."""


class _TermBytes(Sequence):
    """The sorted terms as a sequence of bytes, read from the mapped arrays on demand."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return bytes(self.blob[int(self.offsets[i]) : int(self.offsets[i + 1])])


@dataclass(eq=False)
class Postings:
    """A segment's BM25 postings (shapes: the module docstring), in ``language``'s analysis;
    ``name``: its folder in the segment's, None until written."""

    terms: np.ndarray
    term_offsets: np.ndarray
    indptr: np.ndarray
    documents: np.ndarray
    tfs: np.ndarray
    lengths: np.ndarray
    language: str
    name: str | None = None

    # ------------------------------------------------------------------ making
    @classmethod
    def from_texts(cls, texts: Sequence[str], language: str) -> Postings:
        """The postings of documents' texts (a segment's, in order)."""
        flat, lengths, vocabulary = Analyzer(language).documents(texts)
        return cls.from_terms(flat, lengths, vocabulary, language)

    @classmethod
    def from_terms(cls, flat: np.ndarray, lengths: np.ndarray, vocabulary: Sequence[str], language: str) -> Postings:
        """From every document's term ids back to back (``flat`` (T,), ``lengths`` (N,)) and the
        term of each id."""
        indptr, documents, tfs = term_counts(flat, lengths, len(vocabulary))
        return _from_lists(indptr, documents, tfs, [term.encode("utf-8") for term in vocabulary], lengths, language)

    @classmethod
    def merged(cls, parts: Sequence[tuple[Postings, np.ndarray]]) -> Postings:
        """One segment's postings from several, each with the positions of its documents kept
        (ascending): they are numbered anew, part after part; the others' postings are dropped."""
        union = sorted({term for postings, _ in parts for term in postings.vocabulary_bytes()})
        number = {term: i for i, term in enumerate(union)}
        terms, documents, tfs, lengths, base = [], [], [], [], 0
        for postings, kept in parts:
            renumber = np.full(len(postings.lengths), -1, dtype=np.int64)
            renumber[kept] = base + np.arange(len(kept))
            own = np.fromiter((number[t] for t in postings.vocabulary_bytes()), dtype=np.int64, count=postings.n_terms)
            term_of = np.repeat(own, np.diff(postings.indptr))
            new = renumber[np.asarray(postings.documents, dtype=np.int64)]
            keep = new >= 0
            terms.append(term_of[keep])
            documents.append(new[keep])
            tfs.append(np.asarray(postings.tfs)[keep])
            lengths.append(np.asarray(postings.lengths)[kept])
            base += len(kept)
        empty = np.zeros(0, np.int64)
        return _assembled(np.concatenate([empty, *terms]), np.concatenate([empty, *documents]),
                          np.concatenate([empty, *tfs]), union, np.concatenate([empty, *lengths]), parts[0][0].language)

    # ------------------------------------------------------------------ reading
    @property
    def n_terms(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_documents(self) -> int:
        return len(self.lengths)

    def vocabulary_bytes(self) -> _TermBytes:
        return _TermBytes(self.terms, self.term_offsets)

    def term_ids(self, terms: Sequence[str]) -> np.ndarray:
        """(n,) int64 the id of each term here, -1 for a term no document of the segment holds."""
        view = self.vocabulary_bytes()
        out = np.full(len(terms), -1, dtype=np.int64)
        for i, term in enumerate(terms):
            key = term.encode("utf-8")
            at = bisect.bisect_left(view, key)
            if at < len(view) and view[at] == key:
                out[i] = at
        return out

    def term(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(documents (e,) int64, tfs (e,) int64) of term id ``t``."""
        start, end = int(self.indptr[t]), int(self.indptr[t + 1])
        return np.asarray(self.documents[start:end], dtype=np.int64), np.asarray(self.tfs[start:end], dtype=np.int64)

    # ------------------------------------------------------------------ files
    def write(self, segment_folder: Path) -> dict:
        """Write these postings as a new folder in ``segment_folder`` (whole, then one rename);
        returns the manifest's record of them."""
        name = POSTINGS_PREFIX + uuid.uuid4().hex
        tmp = segment_folder / f".tmp-{name}"
        tmp.mkdir()
        try:
            files = {f"{array_name}.npy": save_array(tmp / f"{array_name}.npy", getattr(self, array_name))
                     for array_name in POSTINGS_ARRAYS}
            os.replace(tmp, segment_folder / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.name = name
        return {"folder": name, "language": self.language, "n_terms": self.n_terms,
                "n_postings": int(len(self.documents)), "total_length": int(np.sum(self.lengths, dtype=np.int64)),
                "files": files}

    @classmethod
    def open(cls, segment_folder: Path, record: dict, n_documents: int) -> Postings:
        """Postings written by :meth:`write`, memory-mapped, with the cheap checks (sizes, headers,
        counts). Raises FileNotFoundError for a missing file and PostingsError otherwise."""
        folder = segment_folder / record["folder"]
        arrays = {}
        for array_name in POSTINGS_ARRAYS:
            path = folder / f"{array_name}.npy"
            try:
                array = open_array(path, record["files"][f"{array_name}.npy"])
            except ValueError as err:
                raise PostingsError(str(err)) from None
            if array.ndim != 1 or array.dtype.kind not in "iu":
                raise PostingsError(f"{path} holds {array.ndim}-d {array.dtype} values, not 1-d integers")
            arrays[array_name] = array
        if (len(arrays["lengths"]) != n_documents or len(arrays["indptr"]) != len(arrays["term_offsets"])
                or len(arrays["documents"]) != len(arrays["tfs"])):
            raise PostingsError(f"{folder}: its arrays do not agree with one another or with the segment's "
                                f"{n_documents} documents")
        return cls(**arrays, language=record["language"], name=record["folder"])


def verify_postings(segment_folder: Path, record: dict, n_documents: int) -> list[str]:
    """Every file's sha256 and the values: offsets and pointers ascending to the arrays' ends,
    documents inside the segment and ascending per term, counts positive, lengths their sums."""
    folder = segment_folder / record["folder"]
    problems = checksum_problems(folder, record["files"])
    if problems:
        return problems
    p = Postings.open(segment_folder, record, n_documents)
    indptr, offsets, documents = np.asarray(p.indptr), np.asarray(p.term_offsets), np.asarray(p.documents)
    if (indptr[0] != 0 or indptr[-1] != len(documents) or (np.diff(indptr) <= 0).any()
            or offsets[0] != 0 or offsets[-1] != len(p.terms) or (np.diff(offsets) <= 0).any()):
        problems.append(f"{folder}: term pointers are not ascending to the arrays' ends")
    elif len(documents) and (documents.min() < 0 or documents.max() >= n_documents):
        problems.append(f"{folder}/documents.npy names a document that is not stored")
    elif len(documents) > 1 and not (np.diff(documents)[np.diff(np.repeat(np.arange(p.n_terms), np.diff(indptr))) == 0]
                                     > 0).all():
        problems.append(f"{folder}/documents.npy is not ascending within a term")
    elif len(p.tfs) and np.asarray(p.tfs).min() < 1:
        problems.append(f"{folder}/tfs.npy holds a count below 1")
    elif not np.array_equal(np.bincount(documents, weights=np.asarray(p.tfs), minlength=n_documents),
                            np.asarray(p.lengths)):
        problems.append(f"{folder}/lengths.npy does not match the postings' counts")
    elif list(p.vocabulary_bytes()) != sorted(set(p.vocabulary_bytes())):
        problems.append(f"{folder}/terms.npy is not sorted, or repeats a term")
    return problems


def _assembled(terms: np.ndarray, documents: np.ndarray, tfs: np.ndarray, vocabulary: Sequence[bytes],
               lengths: np.ndarray, language: str) -> Postings:
    """Postings from (term id, document, tf) triples in any order, over a vocabulary of bytes;
    terms that hold no posting are dropped and the rest sorted by bytes."""
    order = np.lexsort((documents, terms))
    indptr = np.zeros(len(vocabulary) + 1, dtype=np.int64)
    np.cumsum(np.bincount(terms, minlength=len(vocabulary)), out=indptr[1:])
    return _from_lists(indptr, documents[order], tfs[order], vocabulary, lengths, language)


def _from_lists(indptr: np.ndarray, documents: np.ndarray, tfs: np.ndarray, vocabulary: Sequence[bytes],
                lengths: np.ndarray, language: str) -> Postings:
    """Postings from one list per term of a vocabulary of bytes (term ``t``'s documents, ascending,
    and tfs are ``indptr[t]:indptr[t + 1]``); terms that hold no posting are dropped and the rest
    sorted by bytes (their lists moved whole)."""
    sizes = np.diff(indptr)
    order = np.array(sorted(np.flatnonzero(sizes).tolist(), key=vocabulary.__getitem__), dtype=np.int64)
    new_indptr = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(sizes[order], out=new_indptr[1:])
    # each posting's place in the old lists: its list's old start plus its place within the list
    gather = np.arange(new_indptr[-1], dtype=np.int64) + np.repeat(indptr[order] - new_indptr[:-1], sizes[order])
    blobs = [vocabulary[t] for t in order.tolist()]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    blob = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
    return Postings(blob, offsets, new_indptr, np.asarray(documents, dtype=np.int32)[gather],
                    np.asarray(tfs, dtype=np.int32)[gather], np.asarray(lengths, dtype=np.int32), language)
