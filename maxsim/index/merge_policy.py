"""The merge policy: which segments an index merges after a write, so that their number stays
bounded whatever the sizes and order of the adds (a tiered policy, as Lucene's
``TieredMergePolicy``).

Segments are ranked by size (tokens stored). A segment smaller than :data:`FLOOR_TOKENS` counts
as that size, and one over half of :data:`AUTO_MERGE_MAX_TOKENS` is too large to merge
automatically (it is left to ``maxsim index compact``). The others may number at most
:data:`SEGMENTS_PER_TIER` per tier, tiers growing by :data:`MERGE_AT_ONCE` from the floor::

    allowed = 10 of the floor's size, 10 of ten times that, ..., and what is left over

so that ``allowed`` grows with the logarithm of the index's tokens (19 at a million tokens,
34 at fifty million). While there are more, the policy merges up to :data:`MERGE_AT_ONCE` segments of
neighbouring sizes into one (of at most :data:`AUTO_MERGE_MAX_TOKENS` tokens), choosing among
the runs of the size order the one most even in size and smallest in total (Lucene's score:
its largest share times its total to the power 0.05). Segments need not be adjacent in the index:
sizes that alternate (1, 50, 1, 50, ...) are merged as readily as equal ones, so a search visits
O(log N) segments and a reader holds a bounded number of open files. A segment with more than
half its documents deleted is rewritten without them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

SEGMENTS_PER_TIER = 10
MERGE_AT_ONCE = 10
#: segments smaller than this count as this large (many tiny adds share the lowest tier)
FLOOR_TOKENS = 10_000
#: the largest segment an automatic merge makes; larger merges are left to ``--compact``
AUTO_MERGE_MAX_TOKENS = 2_000_000


class Sized(Protocol):
    """What the policy reads of a segment."""

    n_tokens: int
    n_documents: int
    deleted: Sequence


def allowed_segments(total_tokens: int) -> int:
    """How many segments of mergeable size an index of ``total_tokens`` tokens may keep.

    >>> allowed_segments(5_000), allowed_segments(1_000_000), allowed_segments(50_000_000)
    (10, 19, 34)
    """
    level, left, allowed = FLOOR_TOKENS, max(total_tokens, 0), 0
    while True:
        count = left / level
        if count < SEGMENTS_PER_TIER:
            return max(allowed + math.ceil(count), SEGMENTS_PER_TIER)
        allowed += SEGMENTS_PER_TIER
        left -= SEGMENTS_PER_TIER * level
        level *= MERGE_AT_ONCE


def plan_merge(segments: Sequence[Sized]) -> list[int] | None:
    """The positions (ascending) of the segments to merge into one now, or None: a segment more
    than half deleted, to rewrite alone; else, when there are more than :func:`allowed_segments`,
    the best run of neighbouring sizes."""
    for i, segment in enumerate(segments):
        if segment.n_tokens <= AUTO_MERGE_MAX_TOKENS and 2 * len(segment.deleted) > segment.n_documents:
            return [i]
    eligible = [i for i, s in enumerate(segments) if s.n_tokens <= AUTO_MERGE_MAX_TOKENS // 2]
    if len(eligible) <= allowed_segments(sum(segments[i].n_tokens for i in eligible)):
        return None
    order = sorted(eligible, key=lambda i: (-segments[i].n_tokens, i))
    best, best_score = None, math.inf
    for start in range(len(order) - 1):
        run, total = [], 0
        for i in order[start : start + MERGE_AT_ONCE]:
            if total + segments[i].n_tokens > AUTO_MERGE_MAX_TOKENS:
                break
            run.append(i)
            total += segments[i].n_tokens
        if len(run) < 2:
            continue
        floored = [max(segments[i].n_tokens, FLOOR_TOKENS) for i in run]
        score = max(floored) / sum(floored) * max(total, 1) ** 0.05
        if score < best_score:
            best, best_score = sorted(run), score
    return best
