"""Building an index shard by shard: several shards and segments rank as one, a build killed
at any stage resumes and keeps what it had done, other settings start over, progress is logged."""

import importlib
import logging

import numpy as np
import pytest
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures
from test_segments import QUERIES, rankings

from maxsim.index import IndexData
from maxsim.index.build import StreamingBuild, work_folder
from maxsim.retriever import Retriever

build_module = importlib.import_module("maxsim.index.build")  # (the package's `build` is a function)


class Killed(Exception):
    pass


def small_shards(monkeypatch, documents=5, tokens=120):
    monkeypatch.setattr(build_module, "SHARD_DOCUMENTS", documents)
    monkeypatch.setattr(build_module, "SEGMENT_TOKENS", tokens)


def test_shards_and_segments_rank_like_one_search(retriever, tmp_path, monkeypatch):  # noqa: F811
    small_shards(monkeypatch)
    encoded = []
    real = StreamingBuild.__init__

    def counting(self, *args, **kwargs):
        real(self, *args, **kwargs)
        encode = self.encode
        self.encode = lambda shard: encoded.append(len(shard)) or encode(shard)

    monkeypatch.setattr(StreamingBuild, "__init__", counting)
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    assert encoded == [5] * (len(DOCS) // 5) + ([len(DOCS) % 5] if len(DOCS) % 5 else [])
    data = IndexData.load(path)
    assert len(data.segments) > 2 and data.n_documents == len(DOCS)
    assert [d["id"] for d in data.documents] == IDS and data.verify() == []
    assert not work_folder(path).exists()
    r = Retriever.from_index(path)
    every = 10 * data.n_chunks  # rescore every chunk reached: exact scores
    for query, hits in zip(QUERIES, r.search(QUERIES, k=len(DOCS), ndocs=every)):
        assert sorted(h.document_id for h in hits) == sorted(IDS)  # every document, once
        q, m = r.query_vectors([query])
        scores = r.backend.exact_scores(q, m, np.arange(data.n_chunks))
        best = {}
        for chunk, score in zip(data.chunk_documents(np.arange(data.n_chunks)).tolist(), scores.tolist()):
            best[chunk] = max(best.get(chunk, -1e9), score)
        assert [h.score for h in hits] == pytest.approx(sorted(best.values(), reverse=True), rel=1e-5)


@pytest.mark.parametrize("stage", ["encode", "centroids", "segment"])
def test_a_killed_build_resumes_and_keeps_what_it_had_done(retriever, tmp_path, monkeypatch, stage):  # noqa: F811
    small_shards(monkeypatch)
    whole = tmp_path / "whole"
    retriever.index(DOCS, path=whole, document_ids=IDS)
    want = rankings(Retriever.from_index(whole))
    path = tmp_path / "ix"
    calls = {"encode": 0, "segment": 0, "centroids": 0}
    spill, segment, centroids = StreamingBuild._spill, StreamingBuild._segment, StreamingBuild._centroids
    kill_at = {"encode": 4, "segment": 2, "centroids": 1}  # the call of `stage` that is killed
    killing = [True]

    def counted(name, real):
        def run(self, *args):
            calls[name] += 1
            if killing[0] and name == stage and calls[name] == kill_at[stage]:
                raise Killed
            return real(self, *args)
        return run

    def spill_counting(self):
        encode = self.encode
        self.encode = lambda shard: counted("encode", lambda _, s: encode(s))(self, shard)
        spill(self)

    monkeypatch.setattr(StreamingBuild, "_spill", spill_counting)
    monkeypatch.setattr(StreamingBuild, "_segment", counted("segment", segment))
    monkeypatch.setattr(StreamingBuild, "_centroids", counted("centroids", centroids))
    with pytest.raises(Killed):
        retriever.index(DOCS, path=path, document_ids=IDS)
    assert not path.exists() and work_folder(path).is_dir()
    before = dict(calls)
    killing[0] = False
    retriever.index(DOCS, path=path, document_ids=IDS)  # the same command again
    n_shards = -(-len(DOCS) // 5)
    again = {name: calls[name] - before[name] for name in calls}
    assert before["encode"] + again["encode"] == n_shards + (stage == "encode")  # no shard encoded twice
    if stage == "segment":
        assert again["segment"] == len(IndexData.load(path).segments) - 1  # the first segment was kept
        assert again["centroids"] == 1  # (read back, not trained again)
    assert not work_folder(path).exists() and IndexData.load(path).verify() == []
    got = rankings(Retriever.from_index(path))
    assert [[d for d, _ in row] for row in got] == [[d for d, _ in row] for row in want]


def test_a_build_of_other_settings_starts_over_and_says_why(retriever, tmp_path, monkeypatch, caplog):  # noqa: F811
    small_shards(monkeypatch)
    path = tmp_path / "ix"
    monkeypatch.setattr(StreamingBuild, "_segment", lambda self, *a: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        retriever.index(DOCS, path=path, document_ids=IDS, nbits=2)
    monkeypatch.undo()
    small_shards(monkeypatch)
    with caplog.at_level(logging.WARNING):
        retriever.index(DOCS, path=path, document_ids=IDS, nbits=4)
    assert "holds a build of other settings: starting over" in caplog.text
    assert IndexData.load(path).settings.nbits == 4


def test_progress_is_logged_with_a_rate(retriever, tmp_path, monkeypatch, caplog):  # noqa: F811
    small_shards(monkeypatch)
    monkeypatch.setattr("maxsim.progress.LOG_INTERVAL_S", 0.0)
    with caplog.at_level(logging.INFO, logger="maxsim.progress"):
        retriever.index(DOCS, path=tmp_path / "ix", document_ids=IDS, show_progress=True)
    assert f"encoding: {len(DOCS)}/{len(DOCS)} documents" in caplog.text and "documents/s" in caplog.text
    assert "compressing:" in caplog.text and "shards/s" in caplog.text


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_centroid_search_finds_the_nearest_centroid_of_nearly_every_vector(dtype):
    import torch

    from maxsim.index.codec import CentroidSearch, nearest_centroids

    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((8192, 32)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    vectors = centroids[rng.integers(0, len(centroids), 20_000)] + 0.15 * rng.standard_normal((20_000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    torch_dtype = getattr(torch, dtype)
    search = CentroidSearch(centroids)
    assert not search.exhaustive
    fast, exact = search.nearest(vectors, batch=4096, dtype=torch_dtype), nearest_centroids(vectors, centroids,
                                                                                        dtype=torch.float32)
    assert (fast == exact).mean() > 0.99
    sims = np.einsum("td,td->t", vectors, centroids[fast]), np.einsum("td,td->t", vectors, centroids[exact])
    assert np.mean(sims[1] - sims[0]) < 1e-3  # where it differs, a centroid almost as near
    small = CentroidSearch(centroids[:1000])
    assert small.exhaustive and np.array_equal(small.nearest(vectors[:500], dtype=torch.float32),
                                               nearest_centroids(vectors[:500], centroids[:1000], dtype=torch.float32))


def test_the_centroid_search_pads_its_products_to_few_shapes_without_changing_the_answer(monkeypatch):
    import torch

    from maxsim.index import codec

    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((9000, 16)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    padded = codec.CentroidSearch(centroids, probes=8)
    assert all((hi - lo) % codec.GROUP_ROUNDING == 0 for lo, hi in zip(padded.starts[:-1], padded.starts[1:]))
    assert set(padded.order.tolist()) == set(range(len(centroids)))  # padding repeats a group's own ids
    monkeypatch.setattr(codec, "GROUP_ROUNDING", 1)
    monkeypatch.setattr(codec, "PAIR_ROUNDING", 1)
    plain = codec.CentroidSearch(centroids, probes=8)
    assert len(plain.order) == len(centroids)
    found = [s.nearest(vectors, batch=1000, dtype=torch.float32) for s in (padded, plain)]
    sims = [np.einsum("td,td->t", vectors, centroids[f]) for f in found]
    np.testing.assert_allclose(sims[0], sims[1], atol=1e-5)  # the same centroid, or a tie


def test_searched_kmeans_clusters_as_well_as_faiss():
    import faiss

    from maxsim.index.codec import nearest_centroids, searched_kmeans

    rng = np.random.default_rng(2)
    centres = rng.standard_normal((9000, 24)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, len(centres), 9000 * 9)] + 0.08 * rng.standard_normal((9000 * 9, 24))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    sample, held = points[:-4000], points[-4000:]
    ours = searched_kmeans(sample, 8192, seed=0)
    assert ours.shape == (8192, 24) and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    kmeans = faiss.Kmeans(24, 8192, niter=4, seed=0, spherical=True, max_points_per_centroid=16)
    kmeans.train(sample)

    def fit(c):
        return float(np.einsum("td,td->t", held, c[nearest_centroids(held, c)]).mean())
    assert fit(ours) > fit(kmeans.centroids) - 0.01


def test_train_centroids_searches_from_the_threshold(monkeypatch):
    from maxsim.index import codec

    calls = []
    monkeypatch.setattr(codec, "searched_kmeans", lambda sample, k, seed, niter: calls.append(len(sample)) or
                        np.zeros((k, sample.shape[1]), dtype=np.float32))
    vectors = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    codec.train_centroids(vectors, 100, max_points_per_centroid=16)
    assert calls == []
    monkeypatch.setattr(codec, "SEARCHED_KMEANS_FROM", 100)
    codec.train_centroids(vectors, 100, max_points_per_centroid=16)
    assert calls == [1600]


def test_a_build_caps_its_segments_chunks(retriever, tmp_path, monkeypatch):  # noqa: F811
    small_shards(monkeypatch, documents=4, tokens=10_000)
    monkeypatch.setattr(build_module, "SEGMENT_CHUNKS", 12)
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    data = IndexData.load(path)
    shard_chunks = [int((data.chunk_documents(np.arange(data.n_chunks)) // 4 == i).sum())
                    for i in range(-(-len(DOCS) // 4))]
    assert len(data.segments) > 1 and data.n_documents == len(DOCS)
    assert all(s.n_chunks <= max(12, max(shard_chunks)) for s in data.segments)
    assert all(s.ivf_chunks.dtype == np.uint16 for s in data.segments)
