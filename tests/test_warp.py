"""The WARP-style search path (maxsim.index.warp): exact where every centroid is probed, filters
and deleted documents applied before scoring, older segments ordered in memory."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from maxsim.index import IndexData
from maxsim.index.build import build
from maxsim.index.centroid_selection import (
    INT8_BLOCK,
    SELECTION_PRECISIONS,
    CentroidGroups,
    CentroidSelector,
    selection_precision,
    top_of,
)
from maxsim.index.search import chunk_scores, search
from maxsim.index.segment import Segment
from maxsim.index.warp import cell_runs, lookup_tables, probes, warp_scores
from maxsim.index.writer import without_documents
from maxsim.index_settings import IndexSettings

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", params=[2, 4])
def index(request):
    """60 documents, some split into two chunks, of 3 to 12 clustered tokens."""
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(12, DIM)))
    doclens, chunk_docs, vectors = [], [], []
    for d in range(60):
        for _ in range(1 + (d % 4 == 0)):
            n = int(rng.integers(3, 13))
            vectors.append(unit(centres[rng.integers(0, 12, n)] + 0.4 * rng.normal(size=(n, DIM))))
            doclens.append(n)
            chunk_docs.append(d)
    documents = [{"id": f"d{d}", "content": f"document {d}", "metadata": {"group": d % 3}} for d in range(60)]
    settings = IndexSettings(nbits=request.param, dim=DIM, max_document_tokens=16)
    data = build(np.concatenate(vectors), np.array(doclens), np.array(chunk_docs), [(0, 1)] * len(doclens),
                 documents, settings)
    return data


def queries(n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    q = torch.from_numpy(unit(rng.normal(size=(n, 8, DIM))))
    mask = torch.ones(n, 8, dtype=torch.bool)
    mask[:, 6:] = False  # padding is left out
    return q, mask


def stored_maxsim(data: IndexData, query: torch.Tensor) -> np.ndarray:
    """(N,) MaxSim of one query ((Lq, dim)) with every chunk's stored vectors, not renormalised."""
    vectors, lengths = data.decompress(np.arange(data.n_chunks))
    sims = (vectors @ query.T).split(lengths.tolist())
    return np.array([s.max(dim=0).values.sum().item() for s in sims], dtype=np.float32)


def test_probing_every_centroid_gives_exact_maxsim_over_the_stored_vectors(index):
    q, mask = queries()
    for i in range(len(q)):
        query = q[i][mask[i]]
        chunks, scores = warp_scores(index, query, len(index.centroids), -1.0)
        assert sorted(chunks.tolist()) == list(range(index.n_chunks))
        exact = stored_maxsim(index, query)
        np.testing.assert_allclose(scores, exact[chunks], rtol=1e-5, atol=1e-5)


def test_a_search_probing_every_centroid_ranks_as_exact_maxsim(index):
    q, mask = queries()
    ranking = search(index, q, mask, k=10, ncells=len(index.centroids), centroid_score_threshold=-1.0, ndocs=0)
    for i in range(len(q)):
        exact = stored_maxsim(index, q[i][mask[i]])
        best = np.zeros(index.n_documents, dtype=np.float32) - np.inf
        np.maximum.at(best, index.chunk_documents(np.arange(index.n_chunks)), exact)
        order = np.argsort(-best, kind="stable")[:10]
        found = index.chunk_documents(ranking.positions[i])
        np.testing.assert_allclose(ranking.scores[i], best[order], rtol=1e-5, atol=1e-5)
        assert found.tolist() == order.tolist() or np.allclose(best[found], best[order], atol=1e-5)


def test_unprobed_tokens_are_imputed_their_best_unprobed_centroid_score():
    cs = torch.tensor([[0.9, 0.5, 0.2], [0.1, 0.3, 0.8]]).T  # (centroids, query tokens)
    found = probes(*top_of(cs, 2), 1, 0.0)
    assert found.cell.tolist() == [0, 2] and found.missing.tolist() == pytest.approx([0.5, 0.3])
    assert probes(*top_of(cs, 4), 3, 0.0).missing.tolist() == [0.0, 0.0]  # every centroid probed: nothing imputed
    in_bf16 = probes(*top_of(cs.bfloat16(), 2), 1, 0.0)  # read from the bits of bf16 scores: the same choice
    assert in_bf16.cell.tolist() == [0, 2] and in_bf16.missing.tolist() == pytest.approx([0.5, 0.3], abs=4e-3)
    skipped = probes(*top_of(cs, 4), 3, 0.4)  # under the threshold: not probed, and imputed from there
    assert skipped.cell.tolist() == [0, 1, 2] and skipped.missing.tolist() == pytest.approx([0.2, 0.3])


@pytest.mark.parametrize("precision", SELECTION_PRECISIONS)
def test_every_selection_precision_finds_nearly_the_best_centroids(precision):
    rng = np.random.default_rng(5)
    centroids = torch.from_numpy(unit(rng.normal(size=(INT8_BLOCK + 900, DIM))))  # two int8 blocks
    query = torch.from_numpy(unit(rng.normal(size=(8, DIM))))
    values, cells = CentroidSelector(centroids, precision).top(query, 9)
    exact = (query @ centroids.T).numpy()
    best = np.sort(exact, axis=1)[:, ::-1][:, :9]
    assert (np.diff(values, axis=1) <= 0).all() and 0 <= cells.min() and cells.max() < len(centroids)
    np.testing.assert_allclose(np.take_along_axis(exact, cells, axis=1), best, atol=0.02)
    np.testing.assert_allclose(values, np.take_along_axis(exact, cells, axis=1), atol=0.02)
    overlap = np.mean([len(np.intersect1d(c, np.argsort(-e)[:9])) / 9 for c, e in zip(cells, exact)])
    assert overlap >= (1.0 if precision == "float32" else 0.8), overlap


def test_grouped_selection_finds_each_tokens_best_centroid_among_its_groups():
    rng = np.random.default_rng(6)
    centroids = torch.from_numpy(unit(rng.normal(size=(4096, DIM))))  # 64 groups, 16 probed: a quarter scored
    source = rng.choice(len(centroids), 64, replace=False)
    query = torch.from_numpy(unit(centroids.numpy()[source] + 0.05 * rng.normal(size=(64, DIM))))
    groups = CentroidGroups(centroids)
    assert len(groups.centres) == 64 and sorted(groups.ids.tolist()) == list(range(4096))
    values, cells = groups.top(query, 9)
    exact = (query @ centroids.T).numpy()
    assert (np.diff(values, axis=1) <= 0).all() and all(len(set(row)) == 9 for row in cells.tolist())
    np.testing.assert_allclose(values, np.take_along_axis(exact, cells, axis=1), atol=0.02)  # int8 scores
    assert np.mean(cells[:, 0] == source) >= 0.95
    # more centroids asked for than a token's groups hold: every centroid scored, in float32
    values, cells = CentroidSelector(centroids, "int8", grouped=True).top(query, 4096)
    np.testing.assert_array_equal(np.sort(cells, axis=1), np.tile(np.arange(4096), (64, 1)))
    np.testing.assert_allclose(values, -np.sort(-exact, axis=1), atol=1e-6)


def test_each_probed_centroid_finds_its_run_of_rows(index):
    segment = index.segments[0]
    codes = np.asarray(segment.cell_rows[0])
    cells = np.arange(len(index.centroids) + 3)  # and centroids past the last one used
    start, end = cell_runs(segment.cell_starts, cells)
    np.testing.assert_array_equal(end - start, np.bincount(codes, minlength=len(cells))[: len(cells)])
    assert all((codes[a:b] == c).all() for c, a, b in zip(cells, start, end))


def test_lookup_tables_give_the_residuals_inner_products(index):
    rng = np.random.default_rng(3)
    query = torch.from_numpy(unit(rng.normal(size=(4, DIM))))
    segment = index.segments[0]
    width = segment.residuals.shape[1]
    luts = lookup_tables(query, index.codec.table, width)
    rows = np.asarray(segment.residuals[:50])
    decoded = index.codec.decode(rows, DIM)
    via_tables = luts[:, np.arange(width)[None, :], rows].sum(axis=-1)  # (4, 50)
    np.testing.assert_allclose(via_tables, query.numpy() @ decoded.T, rtol=1e-5, atol=1e-5)


def test_filters_and_deleted_documents_are_never_scored(index):
    q, mask = queries()
    every = len(index.centroids)
    ranking = search(index, q, mask, k=10, ncells=every, centroid_score_threshold=-1.0, ndocs=1,
                     filter={"group": 1})
    for row in ranking.positions:
        assert len(row) == 10 and all(index.documents_at([d])[0]["metadata"]["group"] == 1
                                      for d in index.chunk_documents(row))
    gone = without_documents(index, list(range(0, 60, 2)))
    ranking = search(gone, q, mask, k=10, ncells=every, centroid_score_threshold=-1.0)
    for row in ranking.positions:
        assert len(row) == 10 and all(d % 2 == 1 for d in gone.chunk_documents(row))


def test_a_segment_written_before_cell_order_is_ordered_in_memory_and_ranks_the_same(index, caplog):
    segment = index.segments[0]
    order = np.asarray(segment.token_rows, dtype=np.int64)  # chunk-order token -> row
    old = Segment(np.asarray(segment.codes)[order], np.asarray(segment.residuals)[order], segment.doclens,
                  segment.chunk_docs, segment.spans, segment.ivf_cells, segment.ivf_offsets, segment.ivf_chunks,
                  segment.documents)
    older = IndexData(index.settings, index.centroids, index.codec, [old])
    q, mask = queries()
    with caplog.at_level(logging.WARNING):
        a = search(older, q, mask, k=10, ncells=4)
    assert "written before rows in cell order" in caplog.text
    b = search(index, q, mask, k=10, ncells=4)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    np.testing.assert_allclose(older.decompress(np.arange(5))[0], index.decompress(np.arange(5))[0])


def test_ndocs_rescores_the_best_chunks_exactly(index):
    q, mask = queries()
    every = len(index.centroids)
    ranking = search(index, q, mask, k=10, ncells=every, centroid_score_threshold=-1.0, ndocs=40)
    for i in range(len(q)):
        exact = chunk_scores(index, q[i : i + 1], mask[i : i + 1], np.arange(index.n_chunks)).numpy()
        best = np.full(index.n_documents, -np.inf, dtype=np.float32)
        np.maximum.at(best, index.chunk_documents(np.arange(index.n_chunks)), exact)
        np.testing.assert_allclose(ranking.scores[i], np.sort(best)[::-1][:10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision, grouped", [(p, False) for p in SELECTION_PRECISIONS] + [("int8", True)])
def test_centroid_selection_in_any_precision_ranks_alike(index, precision, grouped, monkeypatch):
    """bf16, int8 and groups only choose the centroids to probe: the probed pairs are scored in
    float32, so with every centroid probed the scores are exact, and with a few the rankings
    barely move."""
    monkeypatch.setattr("maxsim.index.reader.GROUPED_FROM", 1 if grouped else 1 << 30)
    data = IndexData(index.settings, index.centroids, index.codec, index.segments)
    assert (data.selector.groups is not None) == grouped  # the index's own choice, by its centroids
    data.selector = CentroidSelector(data.centroid_vectors, precision, grouped)
    exact_choice = IndexData(index.settings, index.centroids, index.codec, index.segments)
    exact_choice.selector = CentroidSelector(data.centroid_vectors, "float32")
    q, mask = queries()
    every = search(data, q, mask, k=10, ncells=len(data.centroids), centroid_score_threshold=-1.0, ndocs=0)
    reference = search(exact_choice, q, mask, k=10, ncells=len(data.centroids), centroid_score_threshold=-1.0, ndocs=0)
    np.testing.assert_allclose(every.scores, reference.scores, rtol=1e-5, atol=1e-5)
    few = search(data, q, mask, k=10, ncells=2, ndocs=0)
    few_reference = search(exact_choice, q, mask, k=10, ncells=2, ndocs=0)
    overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(few.positions, few_reference.positions)])
    # (random queries meet these centroids at near-equal scores: int8's error of about 0.009 flips more choices)
    assert overlap >= (0.8 if precision == "int8" else 0.9), overlap


def test_the_selection_precision_follows_the_cpu(monkeypatch):
    for native, precision in (("1", "bf16"), ("0", "int8")):
        monkeypatch.setenv("MAXSIM_CPU_BF16", native)
        assert selection_precision() == precision
