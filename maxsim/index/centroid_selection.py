"""Choosing the centroids a query probes: every centroid scored against every query token, and
each token's best few kept, best first (:class:`CentroidSelector`).

This product is the largest single cost of a search at scale: 65,536 centroids x 32 query tokens
x 128 dimensions is 268 million multiply-adds a query, about 12 ms on one AVX2 core in float32.
It is made in the precision the CPU is fastest at (:func:`selection_precision`):

- ``bf16`` where the CPU multiplies bf16 natively (AMX, AVX512-BF16): about 2.5x float32;
- ``int8`` elsewhere: each centroid's weights at a scale of its own, the query quantised per call
  (torch's dynamic quantisation, fbgemm's int8 kernels), in blocks of ``INT8_BLOCK`` centroids
  whose scores are reduced to the best few while they are still in cache: about 2x float32
  on AVX2 at 65,536 centroids;
- ``float32``, exact, on request.

From ``GROUPED_FROM`` centroids a token scores only some of them (:class:`CentroidGroups`): the
centroids are grouped (k-means over the centroids, about sqrt(C) groups), a token scores the
group centres, then the centroids of its ``GROUP_PROBES`` best groups, in int8, a group's rows
read once for every token that probes it: a sixteenth of the work at 65,536 centroids. A token
can miss its best centroid where it lies in a group it did not probe (about 4% of tokens on
SciFact sentences at 16,384 centroids); measured through the whole search, recall@10 against
exact MaxSim moved from 0.669 to 0.666 there, and stayed 1.00 on a million synthetic passages,
while a search took 14% and 32% less time (``bench/centroid_selection.py``, one AVX2 core).

Only the choice is made in that precision: the chosen pairs are scored again in float32
(:func:`maxsim.index.warp.exact_pair_scores`). The scores of the best centroids a token does not
probe (its *missing similarity*) keep the selection precision's error: about 0.004 in bf16 and
0.009 in int8 on unit vectors.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import nn

from maxsim.errors import SettingsError
from maxsim.index.codec import centroid_groups
from maxsim.index.warp_kernels import top_cells, top_cells_bf16, top_cells_grouped, top_cells_rows
from maxsim.model import cpu_computes_bf16

SELECTION_PRECISIONS = ("float32", "bf16", "int8")
#: centroids per int8 product (fbgemm took 5.6 ms for 65,536 centroids in blocks of 16,384 and
#: 14.7 ms in one product, on one AVX2 core)
INT8_BLOCK = 16384
#: centroids from which a token scores only the centroids of its best groups
GROUPED_FROM = 16384
#: groups a token probes where it keeps up to 16 centroids (twice as many where it keeps more)
GROUP_PROBES = 16


def selection_precision() -> str:
    """The precision this CPU chooses centroids fastest in: bf16 where it multiplies bf16
    natively (:func:`maxsim.model.cpu_computes_bf16`), else int8."""
    return "bf16" if cpu_computes_bf16() else "int8"


class CentroidSelector:
    """Each query token's best centroids, scored in ``precision`` (one of
    :data:`SELECTION_PRECISIONS`), or, ``grouped``, among the centroids of its best groups
    (:class:`CentroidGroups`, int8). centroids: (C, dim) float32. Made once per loaded index
    version; safe to share between search threads (nothing is written after construction)."""

    def __init__(self, centroids: torch.Tensor, precision: str, grouped: bool = False) -> None:
        if precision not in SELECTION_PRECISIONS:
            raise SettingsError(f"centroid selection precision {precision!r} is not one of "
                                f"{', '.join(SELECTION_PRECISIONS)}")
        self.precision, self.n_centroids = precision, len(centroids)
        self.groups = CentroidGroups(centroids) if grouped else None
        self.centroids = centroids.float()
        if grouped:
            return
        if precision == "int8":
            self.blocks = [int8_product(block) for block in self.centroids.split(INT8_BLOCK)]
        else:
            self.matrix = centroids.bfloat16() if precision == "bf16" else self.centroids

    @property
    def exact(self) -> bool:
        """Whether the scores it returns are float32 inner products of every centroid (else the
        chosen pairs are to be scored again)."""
        return self.precision == "float32" and self.groups is None

    def top(self, query: torch.Tensor, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query token's ``depth`` best centroids: query (Lq, dim) float32 -> (scores (Lq,
        depth) float32, centroids (Lq, depth) int64), best first."""
        depth = min(depth, self.n_centroids)
        if self.groups is not None:
            values, cells = self.groups.top(query.float(), depth)
            if np.isfinite(values[:, -1]).all():
                return values, cells
            return top_of(self.centroids @ query.float().T, depth)  # groups too small for depth: all scored
        if self.precision != "int8":  # centroids on the left: the faster orientation, about 1.5x in bf16
            return top_of(self.matrix @ query.to(self.matrix.dtype).T, depth)
        values = np.full((len(query), depth), -np.inf, dtype=np.float32)
        cells = np.full((len(query), depth), -1, dtype=np.int64)
        query = query.float()
        for b, product in enumerate(self.blocks):
            top_cells_rows(product(query).numpy(), b * INT8_BLOCK, values, cells)
        return values, cells


class CentroidGroups:
    """The centroids in groups, for a selection that scores a fraction of them: 2 ** round(log2
    (sqrt(C))) groups (spherical k-means over the centroids, seeded: the same groups for the
    same centroids), each centroid in the group of its nearest centre, stored group after group
    in int8 at a scale of its own (its largest magnitude / 127). Made in about 0.5 s at 65,536
    centroids. centroids: (C, dim) float32 unit vectors."""

    def __init__(self, centroids: torch.Tensor) -> None:
        vectors = np.ascontiguousarray(centroids.float().numpy())
        centres, order, bounds = centroid_groups(vectors, dtype=torch.float32)
        self.centres = torch.from_numpy(centres)
        #: (G + 1,) int64 where each group starts in ``members``; (C,) int64 the centroid of each row
        self.starts, self.ids = bounds, order
        rows = vectors[order]
        self.scales = np.maximum(np.abs(rows).max(axis=1), 1e-12).astype(np.float32) / np.float32(127)
        self.members = np.round(rows / self.scales[:, None]).astype(np.int8)

    def top(self, query: torch.Tensor, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query token's ``depth`` best centroids among its best groups' (query (Lq, dim)
        float32 -> (Lq, depth) scores and centroids, best first; -inf and -1 past what its groups
        hold)."""
        probes = min(len(self.centres), GROUP_PROBES if depth <= 16 else 2 * GROUP_PROBES)
        groups = (query @ self.centres.T).topk(probes, dim=1).indices.numpy().ravel()  # (Lq * probes,)
        by_group = np.argsort(groups, kind="stable")
        tokens = np.repeat(np.arange(len(query), dtype=np.int64), probes)
        return top_cells_grouped(np.ascontiguousarray(query.numpy()), tokens[by_group], groups[by_group],
                                 self.starts, self.members, self.scales, self.ids, depth)


def top_of(token_scores: torch.Tensor, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query token's ``depth`` best centroids from every centroid's score for it:
    token_scores (C, Lq) float32 or bf16 -> (scores (Lq, depth) float32, centroids (Lq, depth)
    int64), best first.

    >>> values, cells = top_of(torch.tensor([[0.9, 0.5, 0.2], [0.1, 0.3, 0.8]]).T, 2)
    >>> cells.tolist()
    [[0, 1], [2, 1]]
    """
    depth = min(depth, len(token_scores))
    if token_scores.dtype == torch.bfloat16:  # read as bits: numba has no bf16
        bits = token_scores.contiguous().view(torch.int16).numpy().view(np.uint16)
        return top_cells_bf16(bits, bf16_values(), depth)
    return top_cells(np.ascontiguousarray(token_scores.float().numpy()), depth)


@functools.cache
def bf16_values() -> np.ndarray:
    """(65536,) float32 the value of each bf16 bit pattern (a constant table, made once)."""
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float().numpy()


def int8_product(centroids: torch.Tensor) -> nn.Module:
    """query (Lq, dim) float32 -> (Lq, B) float32 its approximate inner products with ``centroids``
    ((B, dim) float32), computed in int8: a linear layer whose weights are the centroids, a scale
    per centroid, dynamically quantised (torch.ao)."""
    layer = nn.Linear(centroids.shape[1], len(centroids), bias=False)
    layer.weight.data = centroids.float().contiguous()
    quantization = torch.ao.quantization
    with warnings.catch_warnings():  # torch's notes that its quantisation API and tensor types will move
        warnings.filterwarnings("ignore", message=".*quantiz.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        qconfig = {nn.Linear: quantization.per_channel_dynamic_qconfig}
        return quantization.quantize_dynamic(nn.Sequential(layer), qconfig, dtype=torch.qint8).eval()
