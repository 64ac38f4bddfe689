"""Fusing two rankings of one query into one: reciprocal rank fusion, or a weighted sum of
scores normalised per query. Hybrid search fuses MaxSim's ranking with BM25's.

- ``rrf``: ``score(d) = sum over rankings of 1 / (rrf_k + rank(d))``, ranks from 1 (Cormack,
  Clarke and Buettcher, 2009); a document a ranking does not hold adds nothing from it.
- ``weighted``: ``weight * norm(maxsim(d)) + (1 - weight) * norm(bm25(d))``, where ``norm`` is
  min-max over that ranking's candidates for this query (the best maps to 1, the last to 0; all
  equal map to 1), and a document a ranking does not hold gets 0 from it.

Each ranking brings its ``depth`` best candidates. :data:`DEFAULT_HYBRID`, the weighted sum at
weight 0.7, was chosen on SciFact's dev slice (81 queries held out of training), never on its
test split: of rrf and the weights 0.1 to 0.9 it had the best mean dev nDCG@10 over the base
model and the journey's trained one (0.733 against 0.714 for rrf; ``bench/hybrid.py``,
BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maxsim.errors import SettingsError, validation_message

FUSIONS = ("rrf", "weighted")
#: the largest rrf constant and candidate depth a hybrid search takes
MAX_RRF_K, MAX_DEPTH = 1_000_000, 10_000


class Hybrid(BaseModel):
    """How a hybrid search fuses MaxSim with BM25."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fusion: Literal["rrf", "weighted"] = Field("weighted", description=(  # (FUSIONS)
        "Hybrid fusion: weighted (min-max normalised scores, chosen on SciFact's dev slice) or rrf (reciprocal rank "
        "fusion)."))
    rrf_k: int = Field(60, ge=1, le=MAX_RRF_K, description="Reciprocal rank fusion's constant.")
    weight: float = Field(0.7, ge=0.0, le=1.0, description="Weighted fusion: MaxSim's share, BM25 getting the rest.")
    depth: int = Field(100, ge=1, le=MAX_DEPTH, description="Candidates taken from each ranking before fusing.")


DEFAULT_HYBRID = Hybrid()


def hybrid_settings(value) -> Hybrid | None:
    """A :class:`Hybrid` from what a caller may pass: None or False (no fusion), True (the
    default), ``"rrf"`` or ``"weighted"`` (that fusion, default settings; any case), a dict of
    fields, or a Hybrid. Anything else is a :class:`~maxsim.errors.SettingsError` naming the
    setting and what it takes.

    >>> hybrid_settings({"fusion": "RRF", "rrf_k": 10}).rrf_k
    10
    >>> hybrid_settings({"weight": 1.5})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: hybrid setting weight: Input should be less than or equal to 1 ...
    """
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_HYBRID
    if isinstance(value, Hybrid):
        return value
    if isinstance(value, str):
        value = {"fusion": DEFAULT_HYBRID.fusion if value.lower() == "default" else value}
    if not isinstance(value, dict):
        raise SettingsError(f"hybrid is true, false, {' or '.join(map(repr, FUSIONS))}, or a dict of its settings "
                            f"(fusion, weight, rrf_k, depth); got {value!r}")
    if isinstance(value.get("fusion"), str):
        value = {**value, "fusion": value["fusion"].lower()}
    try:
        return Hybrid.model_validate({**DEFAULT_HYBRID.model_dump(), **value})
    except ValidationError as err:
        raise SettingsError(f"hybrid setting {validation_message(err)} (fusion: {' or '.join(FUSIONS)}; weight: 0 to "
                            f"1; rrf_k: 1 to {MAX_RRF_K}; depth: 1 to {MAX_DEPTH})") from None


def min_max(scores: np.ndarray) -> np.ndarray:
    """(n,) float64 scores mapped onto [0, 1] by their min and max (all 1 when they are equal).

    >>> min_max(np.array([3.0, 1.0, 2.0])).tolist()
    [1.0, 0.0, 0.5]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    low, high = scores.min(), scores.max()
    return np.ones_like(scores) if high == low else (scores - low) / (high - low)


def fuse(first: np.ndarray, first_scores: np.ndarray, second: np.ndarray, second_scores: np.ndarray,
         settings: Hybrid) -> tuple[np.ndarray, np.ndarray]:
    """One query's two rankings (items (n,) int64, best first, and their scores) fused:
    (items (m,) int64, fused scores (m,) float64), best first; ties go to the item ranked higher
    by the first ranking, then to the lower item. ``first`` is MaxSim's for ``weight``.

    >>> rrf = Hybrid(fusion="rrf")
    >>> fuse(np.array([7, 3]), np.array([2.0, 1.0]), np.array([3, 9]), np.array([5.0, 4.0]), rrf)[0].tolist()
    [3, 7, 9]
    """
    first, second = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    items = np.unique(np.concatenate([first, second]))
    fused = np.zeros(len(items), dtype=np.float64)
    for ranked, scores, share in ((first, first_scores, settings.weight), (second, second_scores, 1 - settings.weight)):
        where = np.searchsorted(items, ranked)
        if settings.fusion == "rrf":
            fused[where] += 1.0 / (settings.rrf_k + np.arange(1, len(ranked) + 1))
        else:
            fused[where] += share * min_max(scores)
    first_rank = np.full(len(items), len(first), dtype=np.int64)
    first_rank[np.searchsorted(items, first)] = np.arange(len(first))
    order = np.lexsort((items, first_rank, -fused))
    return items[order], fused[order]
