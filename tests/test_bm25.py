"""The pruned BM25 ranking equals scoring every document and sorting (score, then position)."""

import numpy as np
import pytest

from maxsim.data.bm25 import BM25Miner, PostingLists


def _dense_top(postings: PostingLists, terms, weights, k):
    everything = postings.scores(terms, weights, np.arange(postings.n_documents))
    order = np.lexsort((np.arange(len(everything)), -everything))[:k]
    return order, everything[order]


def _random_postings(rng, n_documents, n_terms, ties):
    indptr, documents, impacts = [0], [], []
    for t in range(n_terms):
        df = int(rng.integers(0, n_documents // (1 + t % 7) + 1))
        docs = np.sort(rng.choice(n_documents, size=df, replace=False))
        values = rng.choice([0.5, 1.0, 1.5], size=df) if ties else rng.random(df) * 3 + 0.01
        documents.extend(docs.tolist())
        impacts.extend(values.tolist())
        indptr.append(len(documents))
    return PostingLists(np.array(indptr), np.array(documents), np.array(impacts), n_documents)


@pytest.mark.parametrize("ties", [False, True])
def test_pruned_top_k_equals_dense_top_k(ties):
    rng = np.random.default_rng(7)
    postings = _random_postings(rng, 400, 40, ties)
    for _ in range(60):
        terms = np.unique(rng.choice(40, size=int(rng.integers(1, 9)), replace=False))
        weights = rng.integers(1, 3, size=len(terms)).astype(np.float64)
        k = int(rng.choice([1, 5, 37, 399, 400, 1000]))
        positions, values = postings.top(terms, weights, k)
        want_positions, want_values = _dense_top(postings, terms, weights, k)
        np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-6)
        # equal scores may differ in the last bit (sums in another order): compare ids by score band
        assert len(positions) == len(want_positions) == min(k, 400)
        assert set(positions[values > want_values[-1] + 1e-4].tolist()) <= set(want_positions.tolist())
        if not ties:
            assert positions.tolist() == want_positions.tolist()
    assert not postings._local.work[0].any() and not postings._local.work[1].any()  # left zeroed


def test_miner_ranks_as_bm25s_scores_every_document():
    corpus = [f"protein {w} binding site" if i % 3 else f"gene {w} expression in cells" for i, w in
              enumerate(["alpha", "beta", "gamma", "delta", "kinase", "receptor", "membrane", "enzyme"] * 6)]
    miner = BM25Miner(corpus)
    queries = ["kinase binding", "gene expression receptor", "membrane protein site", "unknownword"]
    ranking = miner.rank(queries, 10)
    for i, query in enumerate(queries):
        dense = miner.retriever.get_scores(miner._bm25s.tokenize(
            [query], stopwords=miner._stopwords, stemmer=miner._stemmer, show_progress=False,
            return_ids=False)[0])
        order = np.lexsort((np.arange(len(dense)), -dense))[:10]
        got = ranking.positions[i][:10]
        np.testing.assert_allclose(dense[got], dense[order], rtol=1e-5, atol=1e-6)


def test_worker_processes_rank_as_one_process(monkeypatch):
    import maxsim.data.bm25 as bm25

    if not bm25.can_fork():
        pytest.skip("worker processes are forked: Linux only")
    rng = np.random.default_rng(3)
    words = [f"word{i}" for i in range(300)]
    corpus = [" ".join(rng.choice(words, size=20)) for _ in range(500)]
    queries = [" ".join(rng.choice(words, size=4)) for _ in range(600)]
    one = BM25Miner(corpus).rank(queries, 30)
    pools = []
    real = bm25.ProcessPoolExecutor
    monkeypatch.setattr(bm25, "ProcessPoolExecutor", lambda *a, **kw: pools.append(a) or real(*a, **kw))
    got = BM25Miner(corpus, workers=2).rank(queries, [30] * len(queries))
    assert pools == [(2,)]
    np.testing.assert_array_equal(got.positions, one.positions)
    np.testing.assert_allclose(got.scores, one.scores, rtol=1e-6)


def test_without_fork_the_miner_ranks_in_one_process_and_says_so(monkeypatch, caplog):
    import maxsim.data.bm25 as bm25

    monkeypatch.setattr(bm25, "can_fork", lambda: False)
    with caplog.at_level("WARNING", logger="maxsim.data.bm25"):
        miner = BM25Miner(["protein binding site", "gene expression cells"], workers=4)
    assert miner.workers == 1
    assert "one process" in caplog.text
