"""ColBERT's tokenisation: markers, lengths, query padding with [MASK], document chunks.

Split so that training can tokenise every text once and pad cached ids per batch:
:meth:`ColBERTTokenizer.queries` / :meth:`ColBERTTokenizer.documents` give unpadded id lists
(marker inserted after the first special token, truncated), :meth:`ColBERTTokenizer.pad_queries`
/ :meth:`ColBERTTokenizer.pad_documents` turn id lists into tensors with masks, and
:meth:`ColBERTTokenizer.document_chunks` splits long documents into windows for an index.
"""

from __future__ import annotations

import bisect
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from maxsim.errors import MaxsimError
from maxsim.model.settings import ColBERTSettings

logger = logging.getLogger(__name__)


class ModelLoadError(MaxsimError, ValueError):
    """A model folder or name that cannot be loaded, with the reason and the fix."""


@dataclass
class TokenBatch:
    """Padded token ids for one batch.

    input_ids, attention_mask: (B, L) long, what the encoder sees.
    score_mask: (B, L) bool, which positions take part in MaxSim.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    score_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.score_mask.to(device, non_blocking=True),
        )

    def pin_memory(self) -> TokenBatch:
        """The same batch in page-locked host memory, so that ``to(cuda)`` copies asynchronously."""
        return TokenBatch(self.input_ids.pin_memory(), self.attention_mask.pin_memory(), self.score_mask.pin_memory())


#: one chunk of a document: its token ids (markers and special tokens included) and the
#: character span (start, end) of the document text it covers
Chunk = tuple[list[int], tuple[int, int]]


class ColBERTTokenizer:
    """A Hugging Face tokenizer with ColBERT's markers, lengths and masks (``settings``)."""

    def __init__(self, tokenizer, settings: ColBERTSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        #: marker ids; None when the marker is "" (no marker)
        self.query_marker_id = self._token_id(settings.query_marker) if settings.query_marker else None
        self.document_marker_id = self._token_id(settings.document_marker) if settings.document_marker else None
        self.mask_token_id = (
            tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.pad_token_id
        )
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        #: special tokens that open a sequence ([CLS], <s>): the marker goes right after them
        self.start_ids = self.starts(tokenizer)
        self.punctuation_ids = torch.tensor(
            sorted(skiplist_ids(tokenizer, settings)) if settings.mask_punctuation else [],
            dtype=torch.long,
        )

    @staticmethod
    def starts(tokenizer) -> set[int]:
        """Ids of the special tokens that open a sequence ([CLS], <s>)."""
        return {tokenizer.cls_token_id, tokenizer.bos_token_id} - {None}

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ModelLoadError(f"marker token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    def with_marker(self, ids: list[int], marker: int | None) -> list[int]:
        """``ids`` with the marker inserted where the settings say (unchanged without a marker)."""
        if marker is None:
            return list(ids)
        if self.settings.marker_position == "index_1":
            return ids[:1] + [marker] + ids[1:]
        return insert_marker(ids, marker, self.start_ids)

    def _tokenize(self, texts: Sequence[str], marker: int | None, maxlen: int) -> list[list[int]]:
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=maxlen - 1 if marker is not None else maxlen,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return [self.with_marker(ids, marker) for ids in encoded]

    def queries(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each query: first special token, query marker, text; unpadded."""
        return self._tokenize(texts, self.query_marker_id, self.settings.query_maxlen)

    def documents(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each document, marker inserted, truncated at ``doc_maxlen``."""
        return self._tokenize(texts, self.document_marker_id, self.settings.doc_maxlen)

    def document_chunks(self, texts: Sequence[str], split: bool = True,
                        max_tokens: int | None = None) -> list[list[Chunk]]:
        """Each document as chunks of at most ``max_tokens`` tokens (default ``doc_maxlen``), markers
        and special tokens included, with the character span each covers. With ``split=False``
        each document is one chunk, truncated as :meth:`documents`.

        A chunk ends where a word ends (never inside one, unless a single word is longer than a
        chunk), and the next one starts :func:`overlap_of` tokens before it ends, at a word's
        start: a sentence that a cut would halve is whole in one of the two chunks, which a
        document's best chunk then finds (12.5% more tokens stored, at most 32 a cut)."""
        if not split:
            return [[(ids, (0, len(text)))] for ids, text in zip(self.documents(texts), texts)]
        max_tokens = max_tokens or self.settings.doc_maxlen
        empty = self.tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [CLS] [SEP]
        prefix = empty[:1] if empty and empty[0] in self.start_ids else []
        suffix = empty[len(prefix):]
        marker = self.document_marker_id
        window = max(1, max_tokens - (marker is not None) - len(empty))
        # (verbose=False: the tokenizer's warning about texts longer than the model takes does not
        # apply, since they are cut into windows here)
        encoded = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                                 return_attention_mask=False, return_token_type_ids=False, verbose=False)
        out = []
        for i, (text, ids, offsets) in enumerate(zip(texts, encoded["input_ids"], encoded["offset_mapping"])):
            if not ids:
                out.append([(self.with_marker(prefix + suffix, marker), (0, len(text)))])
                continue
            starts = word_starts(encoded.word_ids(i)) if encoded.is_fast else list(range(len(ids)))
            out.append([(self.with_marker(prefix + ids[a:b] + suffix, marker), (offsets[a][0], offsets[b - 1][1]))
                        for a, b in windows(starts, len(ids), window, overlap_of(window))])
        return out

    def pad_queries(self, token_ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Pad queries with the mask token to ``query_maxlen``; every position is scored.

        Expansion positions are attended to only with ``attend_to_expansion_tokens``. Without
        ``do_query_expansion``, queries are padded to the longest in the batch and only their
        own tokens are scored.
        """
        if not self.settings.do_query_expansion:
            length = max((len(row) for row in token_ids), default=1)
            ids, attention = pad(token_ids, length, self.pad_token_id)
            return TokenBatch(ids, attention, attention.bool())
        ids, attention = pad(token_ids, self.settings.query_maxlen, self.mask_token_id)
        if self.settings.attend_to_expansion_tokens:
            attention.fill_(1)
        return TokenBatch(ids, attention, torch.ones(ids.shape, dtype=torch.bool))

    def pad_documents(self, token_ids: Sequence[Sequence[int]]) -> TokenBatch:
        """Pad documents to the longest in the batch; padding and punctuation are not scored."""
        length = max((len(row) for row in token_ids), default=1)
        ids, attention = pad(token_ids, length, self.pad_token_id)
        score_mask = attention.bool()
        if self.punctuation_ids.numel():
            score_mask &= ~torch.isin(ids, self.punctuation_ids)
        return TokenBatch(ids, attention, score_mask)


def insert_marker(ids: list[int], marker: int, start_ids: set[int]) -> list[int]:
    """``ids`` with ``marker`` after the opening special token (or first, without one).

    >>> insert_marker([101, 7, 8, 102], 1, {101})
    [101, 1, 7, 8, 102]
    >>> insert_marker([7, 8], 1, {101})
    [1, 7, 8]
    """
    cut = 1 if ids and ids[0] in start_ids else 0
    return ids[:cut] + [marker] + ids[cut:]


def pad(token_ids: Sequence[Sequence[int]], length: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, length) filled with ``fill`` after each row, attention mask (B, length) long).

    >>> ids, attention = pad([[5, 6], [7]], 3, 0)
    >>> ids.tolist(), attention.tolist()
    ([[5, 6, 0], [7, 0, 0]], [[1, 1, 0], [1, 0, 0]])
    """
    ids = torch.full((len(token_ids), length), fill, dtype=torch.long)
    attention = torch.zeros((len(token_ids), length), dtype=torch.long)
    for i, row in enumerate(token_ids):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    return ids, attention


def choose_markers(tokenizer, encoder, settings: ColBERTSettings) -> ColBERTSettings:
    """Use [unused0]/[unused1] where the vocabulary has them, else add [Q]/[D] tokens (and grow
    the encoder's embeddings to match)."""
    vocab = tokenizer.get_vocab()
    if "[unused0]" in vocab and "[unused1]" in vocab:
        return settings.model_copy(update={"query_marker": "[unused0]", "document_marker": "[unused1]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[Q]", "[D]"]})
    encoder.resize_token_embeddings(len(tokenizer))
    logger.info("vocabulary has no [unused0]/[unused1]: added [Q] and [D] marker tokens")
    return settings.model_copy(update={"query_marker": "[Q]", "document_marker": "[D]"})


def skiplist_ids(tokenizer, settings: ColBERTSettings) -> set[int]:
    """The ids of document tokens that are not scored, by the rule ``settings.skiplist`` names."""
    if settings.skiplist == "colbert-ai":  # the first id of each symbol, as colbert-ai's DocTokenizer
        return {tokenizer.encode(symbol, add_special_tokens=False)[0] for symbol in string.punctuation}
    if settings.skiplist == "pylate":  # vocabulary entries (a missing word maps to [UNK], as in PyLate)
        words = settings.skiplist_words if settings.skiplist_words is not None else list(string.punctuation)
        return {tokenizer.convert_tokens_to_ids(word) for word in words}
    return punctuation_ids(tokenizer)


def punctuation_ids(tokenizer) -> set[int]:
    """Ids of tokens that are a single punctuation character (with or without a leading space)."""
    ids: set[int] = set()
    for symbol in string.punctuation:
        for form in (symbol, " " + symbol):
            encoded = tokenizer.encode(form, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
    return ids


def overlap_of(window: int) -> int:
    """Tokens two neighbouring chunks of ``window`` tokens share: an eighth of the window, at most 32.

    >>> overlap_of(176), overlap_of(21)
    (22, 2)
    """
    return min(32, window // 8)


def word_starts(word_ids: Sequence[int | None]) -> list[int]:
    """The token positions where a word starts (the tokenizer's word of each token).

    >>> word_starts([0, 0, 1, 2, 2, 2])
    [0, 2, 3]
    """
    return [i for i, word in enumerate(word_ids) if i == 0 or word is None or word != word_ids[i - 1]]


def windows(starts: Sequence[int], n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token ranges covering ``n`` tokens, each at most ``window`` long, ending where
    a word starts (``starts``; or at ``n``) unless one word fills the window, the next beginning
    ``overlap`` tokens back, at a word's start, and always further on than the one before.

    >>> windows([0, 2, 3, 5, 6, 8], 9, 4, 1)
    [(0, 3), (2, 6), (5, 9)]
    """
    out, at = [], 0
    while True:
        end = min(at + window, n)
        if end < n:
            cut = bisect.bisect_right(starts, end) - 1  # the last word start at or before end
            end = starts[cut] if starts[cut] > at else end
        out.append((at, end))
        if end >= n:
            return out
        back = bisect.bisect_right(starts, max(end - overlap, at + 1)) - 1
        at = starts[back] if starts[back] > at else end
