"""What a filter lets a search return, segment by segment (:mod:`maxsim.index.filters` says the grammar)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maxsim.errors import SettingsError
from maxsim.index.filters import Filter, path_condition
from maxsim.index.segment import Segment


@dataclass
class Allowed:
    """What a filter lets a search return: ``masks`` per segment, (N_s,) bool over its chunks
    (those of deleted documents False); how many ``documents`` and ``chunks`` pass."""

    masks: list[np.ndarray]
    documents: int
    chunks: int

    def chunk_numbers(self, chunk_base: np.ndarray) -> np.ndarray:
        """(chunks,) int64 the numbers of the chunks that pass, ascending."""
        return np.concatenate([np.zeros(0, dtype=np.int64),
                               *(np.flatnonzero(m) + chunk_base[s] for s, m in enumerate(self.masks))])


def allowed_by(segments: Sequence[Segment], condition: Filter) -> Allowed:
    """What ``condition`` lets through in each of ``segments``: one SQLite query per segment."""
    masks, documents = [], 0
    for segment in segments:
        mask, count = segment.allowed_chunks(condition.sql, condition.params)
        masks.append(mask)
        documents += count
    return Allowed(masks, documents, int(sum(int(m.sum()) for m in masks)))


def check_fields(segments: Sequence[Segment], condition: Filter) -> None:
    """Refuse a filter naming a metadata field (top-level, or a nested path) that no document of
    ``segments`` has: it would pass nothing, silently."""
    known = set().union(*(segment.metadata_fields() for segment in segments))
    unknown = condition.fields - known
    if unknown:
        raise SettingsError(f"no document of this index has the metadata field {', '.join(sorted(unknown))}: "
                            f"its documents have {', '.join(sorted(known)) or 'no metadata'}")
    for nested in sorted(condition.nested):
        sql, parameters = path_condition(nested)
        if not any(segment.documents.any_where(sql, parameters) for segment in segments):
            raise SettingsError(f"no document of this index has the metadata field {nested!r} (its documents "
                                f"have {nested.split('.')[0]!r}, but nothing at that path): check the path")
