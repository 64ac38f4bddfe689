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


def _check_top(postings, terms, weights, k, positions, values, ties):
    want_positions, want_values = _dense_top(postings, terms, weights, k)
    np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-6)
    # equal scores may differ in the last bit (sums in another order): compare ids by score band
    assert len(positions) == len(want_positions) == min(k, postings.n_documents)
    assert set(positions[values > want_values[-1] + 1e-4].tolist()) <= set(want_positions.tolist())
    if not ties:
        assert positions.tolist() == want_positions.tolist()


@pytest.mark.parametrize("ties", [False, True])
def test_pruned_top_k_equals_dense_top_k(ties):
    rng = np.random.default_rng(7)
    postings = _random_postings(rng, 400, 40, ties)
    for _ in range(60):
        terms = np.unique(rng.choice(40, size=int(rng.integers(1, 9)), replace=False))
        weights = rng.integers(1, 3, size=len(terms)).astype(np.float64)
        k = int(rng.choice([1, 5, 37, 399, 400, 1000]))
        positions, values = postings.top(terms, weights, k)
        _check_top(postings, terms, weights, k, positions, values, ties)


@pytest.mark.parametrize("window, scan_per_candidate", [(64, 0), (64, 10**9), (128, 4), (1000, 256)])
@pytest.mark.parametrize("ties", [False, True])
def test_every_path_of_the_windowed_kernel_equals_dense_top_k(window, scan_per_candidate, ties):
    """Many windows, the essential terms shrinking as the k-th score rises, and the non-essential
    lists searched per candidate (0), scanned (10**9) or either: one batch of queries, each with
    its own depth, checked against scoring every document."""
    rng = np.random.default_rng(11)
    postings = _random_postings(rng, 3000, 60, ties)
    queries, depths = [], []
    for _ in range(80):
        terms = np.unique(rng.choice(60, size=int(rng.integers(1, 10)), replace=False))
        queries.append((terms, rng.integers(1, 4, size=len(terms)).astype(np.float64)))
        depths.append(int(rng.choice([1, 10, 110, 2999, 5000])))
    ranking = postings.rank(queries, depths, window=window, scan_per_candidate=scan_per_candidate)
    assert ranking.positions.shape == (80, 3000)
    for (terms, weights), k, positions, values in zip(queries, depths, ranking.positions, ranking.scores):
        depth = min(k, 3000)
        assert (positions[depth:] == -1).all() and np.isneginf(values[depth:]).all()
        _check_top(postings, terms, weights, k, positions[:depth], values[:depth], ties)


def test_pair_scores_equal_the_scores_of_each_document():
    rng = np.random.default_rng(5)
    postings = _random_postings(rng, 500, 30, False)
    queries = [(np.unique(rng.choice(30, size=4, replace=False)), np.ones(4)) for _ in range(7)]
    pair_queries, pair_documents = rng.integers(0, 7, size=200), rng.integers(0, 500, size=200)
    got = postings.pair_scores(queries, pair_queries, pair_documents)
    want = [postings.scores(*queries[q], np.array([d]))[0] for q, d in zip(pair_queries, pair_documents)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def _bm25s(corpus):
    """bm25s's own index of ``corpus`` (the reference) and a tokeniser of queries as it tokenises."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    return retriever, lambda texts: bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False,
                                                   return_ids=False)


def test_miner_ranks_as_bm25s_scores_every_document():
    corpus = [f"protein {w} binding site" if i % 3 else f"gene {w} expression in cells" for i, w in
              enumerate(["alpha", "beta", "gamma", "delta", "kinase", "receptor", "membrane", "enzyme"] * 6)]
    miner = BM25Miner(corpus)
    retriever, tokenize = _bm25s(corpus)
    queries = ["kinase binding", "gene expression receptor", "membrane protein site", "unknownword"]
    ranking = miner.rank(queries, 10)
    for i, words in enumerate(tokenize(queries)):
        dense = retriever.get_scores(words)
        order = np.lexsort((np.arange(len(dense)), -dense))[:10]
        got = ranking.positions[i][:10]
        np.testing.assert_allclose(dense[got], dense[order], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ranking.scores[i][:10], dense[order], rtol=1e-5, atol=1e-6)


def test_miner_postings_hold_bm25s_scores():
    """Every (term, document) score the miner computes is bm25s's, over a corpus with an empty
    text, one of stop words only, repeated words, upper case and accents."""
    corpus = ["Proteins bind the receptors", "", "the and of", "gene gene gene expression", "Café naïve résumé",
              "running runners run", "Kinases phosphorylate proteins in cells, cells and CELLS"]
    miner = BM25Miner(corpus)
    retriever, _ = _bm25s(corpus)
    theirs = retriever.scores
    # (bm25s adds a term for the empty string after its score lists, holding no document)
    assert retriever.vocab_dict[""] == len(theirs["indptr"]) - 1
    assert sorted(set(retriever.vocab_dict) - {""}) == sorted(miner.vocabulary)
    for term, t in retriever.vocab_dict.items():
        if not term:
            continue
        start, end = theirs["indptr"][t], theirs["indptr"][t + 1]
        documents, impacts = miner.postings.term(miner.vocabulary[term])
        assert documents.tolist() == theirs["indices"][start:end].tolist()
        np.testing.assert_allclose(impacts, theirs["data"][start:end], rtol=1e-6)


def test_query_terms_are_bm25s_tokens_through_the_word_cache():
    corpus = ["Proteins bind the receptors", "The gene's expression in cells", "Kinases phosphorylate proteins",
              "Café naïve résumé", "running runners run"]
    miner = BM25Miner(corpus)
    _, tokenize = _bm25s(corpus)
    queries = ["the PROTEIN binds, binding proteins", "unknownword and the", "", "Café café naïve!",
               "run running ran runner", "gene's genes: expression (cells) cells cells"]
    for _ in range(2):  # the second time, every word comes from the cache
        got = miner.query_terms(queries)
        for (terms, weights), words in zip(got, tokenize(queries)):
            ids = [miner.vocabulary[w] for w in words if w in miner.vocabulary]
            want, counts = np.unique(np.array(ids, dtype=np.int64), return_counts=True)
            assert terms.tolist() == want.tolist() and weights.tolist() == counts.tolist()
    assert sorted(got[3][1].tolist()) == [1.0, 2.0]  # café twice, naïve once


def test_threads_rank_as_one_thread_and_floors_match_each_positive():
    import numba

    rng = np.random.default_rng(3)
    words = [f"word{i}" for i in range(300)]
    corpus = [" ".join(rng.choice(words, size=20)) for _ in range(500)]
    queries = [" ".join(rng.choice(words, size=4)) for _ in range(600)]
    positives = [sorted(rng.choice(500, size=int(rng.integers(0, 4)), replace=False).tolist()) for _ in queries]
    one = BM25Miner(corpus).rank(queries, 30, positives)
    miner = BM25Miner(corpus, workers=2)
    got = miner.rank(queries, [30] * len(queries), positives)
    np.testing.assert_array_equal(got.positions, one.positions)
    np.testing.assert_allclose(got.scores, one.scores, rtol=1e-6)
    for i, p in enumerate(positives):
        if p:
            assert got.positive_floor[i] == pytest.approx(float(miner.score_of(i, p).min()), rel=1e-6)
        else:
            assert np.isnan(got.positive_floor[i])
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # restored after ranking


def test_more_workers_than_numba_threads_says_so(caplog):
    import numba

    with caplog.at_level("WARNING", logger="maxsim.data.bm25"):
        miner = BM25Miner(["protein binding site", "gene expression cells"],
                          workers=numba.config.NUMBA_NUM_THREADS + 3)
    assert miner.workers == numba.config.NUMBA_NUM_THREADS
    assert "NUMBA_NUM_THREADS" in caplog.text


def test_impacts_in_chunks_equal_impacts_at_once():
    from maxsim import lexical

    rng = np.random.default_rng(0)
    indptr = np.concatenate([[0], np.cumsum(rng.integers(0, 50, size=300))])
    documents, tfs = rng.integers(0, 500, size=indptr[-1]), rng.integers(1, 4, size=indptr[-1])
    lengths = rng.integers(1, 60, size=500)
    df = np.diff(indptr)
    want = lexical.term_weight(tfs, lengths[documents], lengths.mean()) * np.repeat(lexical.idf(df, 500), df)
    for chunk in (1, 37, 1 << 22):
        np.testing.assert_allclose(lexical.impacts(indptr, documents, tfs, lengths, chunk=chunk), want, rtol=1e-6)
