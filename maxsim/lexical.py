"""Text as BM25 sees it: the languages, their stop words and Snowball stemmers, and texts turned
into terms exactly as bm25s tokenises them (lower case, its token pattern, stop words, stems).

The BM25 of maxsim is bm25s's "lucene" variant with its defaults, k1 = 1.5 and b = 0.75::

    score(q, d) = sum over terms t of q:  count(t, q) * idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / avglen))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with ``tf`` the times t occurs in d, ``len(d)`` its terms (after stop words), ``avglen`` their
mean over the N documents and ``df(t)`` the documents holding t. Both prepare's mining
(:mod:`maxsim.data.bm25`) and the index's BM25 side (:mod:`maxsim.index.postings`) use it.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Sequence
from itertools import chain

import numpy as np

from maxsim.errors import SettingsError

#: bm25s's defaults
K1 = 1.5
B = 0.75

#: the language BM25 analyses texts in when none is named (ISO 639-1)
DEFAULT_LANGUAGE = "en"

#: ISO 639-1 code -> (PyStemmer's stemmer, bm25s's stop-word list or None where it has none)
BM25_LANGUAGES = {
    "en": ("english", "en"), "fr": ("french", "fr"), "de": ("german", "de"), "es": ("spanish", "es"),
    "it": ("italian", "it"), "nl": ("dutch", "nl"), "pt": ("portuguese", "pt"), "ru": ("russian", "ru"),
    "sv": ("swedish", "sv"), "da": ("danish", "da"), "no": ("norwegian", "no"), "tr": ("turkish", "tr"),
    "fi": ("finnish", None), "hu": ("hungarian", None), "ro": ("romanian", None), "ar": ("arabic", None),
    "el": ("greek", None), "ca": ("catalan", None), "cs": ("czech", None), "pl": ("polish", None),
    "id": ("indonesian", None), "ga": ("irish", None), "lt": ("lithuanian", None), "et": ("estonian", None),
    "eu": ("basque", None), "hi": ("hindi", None), "ne": ("nepali", None), "fa": ("persian", None),
    "sr": ("serbian", None), "ta": ("tamil", None), "hy": ("armenian", None),
}


def check_language(language: str, fix: str = "use one of them") -> None:
    """Refuse a language BM25 has no stemmer for, naming those it has."""
    if language not in BM25_LANGUAGES:
        raise SettingsError(f"BM25 has no stemmer for language {language!r}: {fix} "
                            f"({', '.join(sorted(BM25_LANGUAGES))})")


def idf(df: np.ndarray, n_documents: int) -> np.ndarray:
    """(V,) float64 the "lucene" idf of terms held by ``df`` (V,) of ``n_documents`` documents."""
    df = np.asarray(df, dtype=np.float64)
    return np.log1p((n_documents - df + 0.5) / (df + 0.5))


def term_weight(tf: np.ndarray, lengths: np.ndarray, mean_length: float) -> np.ndarray:
    """(E,) float64 BM25's term-frequency part of postings of ``tf`` (E,) times in documents of
    ``lengths`` (E,) terms, in a corpus whose documents hold ``mean_length`` terms on average."""
    tf = np.asarray(tf, dtype=np.float64)
    norm = K1 * ((1 - B) + B * np.asarray(lengths, dtype=np.float64) / max(mean_length, 1e-12))
    return tf / (tf + norm)


def term_counts(flat: np.ndarray, lengths: np.ndarray, n_terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posting lists of documents' terms, from every document's term ids back to back (``flat``
    (T,), ids below ``n_terms``; ``lengths`` (N,) terms per document): (indptr (n_terms + 1,)
    int64, documents (E,) int32 ascending within a term, tfs (E,) int32 times the term occurs
    there). A counting sort (scipy's CSR to CSC), linear in T."""
    import scipy.sparse

    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    by_document = scipy.sparse.csr_matrix(
        (np.ones(len(flat), dtype=np.int32), np.asarray(flat, dtype=np.int32 if n_terms < 2**31 else np.int64),
         starts), shape=(len(lengths), n_terms))
    by_term = by_document.tocsc()  # (rows ascending within a column)
    by_term.sum_duplicates()
    return (np.asarray(by_term.indptr, dtype=np.int64), np.asarray(by_term.indices, dtype=np.int32),
            np.asarray(by_term.data, dtype=np.int32))


def impacts(indptr: np.ndarray, documents: np.ndarray, tfs: np.ndarray, lengths: np.ndarray,
            chunk: int = 1 << 22) -> np.ndarray:
    """(E,) float32 BM25 score of each posting (term ``t``'s are ``indptr[t]:indptr[t + 1]``;
    ``documents`` (E,) positions, ``tfs`` (E,) counts) in the corpus of documents of ``lengths``
    (N,) terms: idf times the term-frequency part, computed in float64, ``chunk`` postings at a
    time (so that the float64 temporaries stay small beside the lists)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    df = np.diff(indptr)
    term_idf = idf(df, len(lengths))
    mean_length = float(lengths.mean()) if len(lengths) else 0.0
    out = np.empty(len(documents), dtype=np.float32)
    for start in range(0, len(documents), chunk):
        end = min(start + chunk, len(documents))
        first, last = np.searchsorted(indptr, [start, end - 1], side="right") - 1
        terms = np.repeat(np.arange(first, last + 1), np.diff(np.clip(indptr[first : last + 2], start, end)))
        out[start:end] = term_weight(tfs[start:end], lengths[documents[start:end]], mean_length) * term_idf[terms]
    return out


class Analyzer:
    """bm25s's tokeniser with the stop words and stemmer of ``language`` (ISO 639-1)."""

    def __init__(self, language: str = DEFAULT_LANGUAGE) -> None:
        import bm25s
        import Stemmer

        check_language(language)
        stemmer, self.stopwords = BM25_LANGUAGES[language]
        self.language = language
        self._tokenize = bm25s.tokenize
        self.stemmer = Stemmer.Stemmer(stemmer)
        pattern = inspect.signature(bm25s.tokenize).parameters["token_pattern"].default
        self._split = re.compile(pattern).findall

    def words(self, text: str) -> list[str]:
        """A text's words as bm25s splits them (lower case, its token pattern), stop words kept."""
        return self._split(text.lower())

    def terms_of_words(self, words: Sequence[str]) -> list[str | None]:
        """The term of each of :meth:`words`'s words: its stem, or None for a stop word."""
        if not len(words):
            return []
        stems = self._tokenize(list(words), stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False,
                               return_ids=False)
        return [stem[0] if len(stem) == 1 and stem[0] else None for stem in stems]

    def documents(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Every text's terms: (term ids (T,) int64 back to back, terms per text (N,) int64, the
        term of each id)."""
        if not len(texts):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), []
        tokens = self._tokenize(list(texts), stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False)
        lengths = np.fromiter((len(ids) for ids in tokens.ids), dtype=np.int64, count=len(tokens.ids))
        flat = np.fromiter(chain.from_iterable(tokens.ids), dtype=np.int64, count=int(lengths.sum()))
        vocabulary = [""] * len(tokens.vocab)
        for term, number in tokens.vocab.items():
            vocabulary[number] = term
        return flat, lengths, vocabulary

    def query(self, text: str) -> tuple[list[str], np.ndarray]:
        """A query's distinct terms (sorted) and how often each occurs, (n,) float64."""
        (terms,) = self._tokenize([text], stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False,
                                  return_ids=False)
        counts = Counter(t for t in terms if t)
        ordered = sorted(counts)
        return ordered, np.array([counts[t] for t in ordered], dtype=np.float64)
