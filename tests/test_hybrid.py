"""Hybrid search: the index's BM25 side (per segment, statistics of the whole index, in step
through adds, deletes and merges), the two fusions, hits with both component scores, and an
index without a BM25 side refused with the way to add one."""

import json

import bm25s
import numpy as np
import pytest
import Stemmer
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.fusion import Hybrid, fuse, hybrid_settings, min_max
from maxsim.index import IndexData, compact_index, manifest
from maxsim.index.bm25_search import NoBM25Error, bm25_matches
from maxsim.index.writer import add_bm25
from maxsim.lexical import Analyzer
from maxsim.retriever import Retriever

QUERIES = ["why do stars shine", "how do cells divide", "ocean tides and the moon", "filler note about nothing",
           "the immune system", "volcanoes and lava", "note 7"]
MORE = [f"a later note {i} about stars, tides and volcanoes" for i in range(6)]


def reference_scores(texts: list[str], query: str) -> np.ndarray:
    """One bm25s BM25 over ``texts``: each one's score for ``query``."""
    stemmer = Stemmer.Stemmer("english")
    reference = bm25s.BM25()
    reference.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    (terms,) = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)
    known = [t for t in terms if t in reference.vocab_dict]
    return reference.get_scores(known) if known else np.zeros(len(texts))


def assert_bm25_matches_one_bm25(data: IndexData) -> None:
    """Every query's BM25 over the index's segments equals one bm25s over its live documents."""
    live = list(data.iter_documents())
    analyzer = Analyzer("en")
    for query in QUERIES:
        numbers, scores = bm25_matches(data, *analyzer.query(query))
        want = reference_scores([r["content"] for _, r in live], query)
        got = np.zeros(len(live))
        where = {number: i for i, (number, _) in enumerate(live)}
        got[[where[n] for n in numbers.tolist()]] = scores
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert (scores > 0).all() and len(numbers) == int((want > 0).sum())


def test_bm25_over_segments_is_one_bm25_through_adds_deletes_and_compaction(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    r = Retriever.from_index(path)
    assert r.index_data.has_bm25 and r.index_data.settings.bm25_language == "en"
    assert_bm25_matches_one_bm25(r.index_data)
    for i, text in enumerate(MORE):  # one segment each
        r.add([text], document_ids=[f"more{i}"])
    r.delete(["doc0", "doc3", "more2", "doc30"])
    data = IndexData.load(path)
    assert len(data.segments) > 1 and data.verify() == []
    assert_bm25_matches_one_bm25(data)
    compact_index(path)
    data = IndexData.load(path)
    assert len(data.segments) == 1 and data.n_documents == len(DOCS) + len(MORE) - 4 and data.verify() == []
    assert_bm25_matches_one_bm25(data)


def test_damaged_bm25_files_are_found_by_verify(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    entry = json.loads((path / "index.json").read_text())["segments"][0]
    tfs = path / entry["name"] / entry["bm25"]["folder"] / "tfs.npy"
    raw = bytearray(tfs.read_bytes())
    raw[-1] ^= 0x01
    tfs.write_bytes(bytes(raw))
    assert any("tfs.npy is damaged" in p for p in IndexData.load(path).verify())


def test_hybrid_hits_carry_both_scores_and_follow_the_fusion(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    r = Retriever.from_index(path)
    n = r.index_data.n_documents
    for settings in (Hybrid(fusion="rrf", depth=12), Hybrid(fusion="weighted", weight=0.3, depth=12)):
        for query in QUERIES:
            dense = r.search(query, k=12, ndocs=12)  # as the fusion's MaxSim side: its 12 best rescored exactly
            lexical = r.search_bm25(query, k=12)
            hits = r.search(query, k=5, hybrid=settings)
            assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
            order, fused = fuse(np.array([IDS.index(h.document_id) for h in dense]), np.array([h.score for h in dense]),
                                np.array([IDS.index(h.document_id) for h in lexical]),
                                np.array([h.score for h in lexical]), settings)
            assert [h.document_id for h in hits] == [IDS[i] for i in order[:5].tolist()]
            np.testing.assert_allclose([h.score for h in hits], fused[:5], rtol=1e-6)
            dense_score = {h.document_id: h.score for h in dense}
            lexical_score = {h.document_id: h.score for h in r.search_bm25(query, k=n)}  # every matching one
            everything = {h.document_id: h.score  # every document's best chunk, exactly
                          for h in r.search(query, k=n, ndocs=10 * n)}
            for hit in hits:
                assert hit.maxsim_score == pytest.approx(dense_score.get(hit.document_id, everything[hit.document_id]),
                                                         rel=1e-4, abs=1e-4)
                assert hit.bm25_score == pytest.approx(lexical_score.get(hit.document_id, 0.0), rel=1e-6)
                assert {"maxsim_score", "bm25_score"} <= set(hit.to_dict())
    assert "maxsim_score" not in r.search("stars", k=2)[0].to_dict()


def test_hybrid_honours_a_filter(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    metadata = [{"kind": "filler" if "filler" in d else "topic"} for d in DOCS]
    retriever.index(DOCS, path=path, document_ids=IDS, metadata=metadata)
    r = Retriever.from_index(path)
    for query in QUERIES:
        hits = r.search(query, k=6, hybrid=True, filter={"kind": "topic"})
        assert hits and all(h.metadata["kind"] == "topic" for h in hits)
        assert all(h.metadata["kind"] == "filler" for h in r.search_bm25(query, k=6, filter={"kind": "filler"}))


def test_an_index_without_bm25_is_refused_with_the_fix_then_given_one(retriever, tmp_path):  # noqa: F811
    with_bm25, without = tmp_path / "with", tmp_path / "without"
    retriever.index(DOCS, path=with_bm25, document_ids=IDS)
    retriever.index(DOCS, path=without, document_ids=IDS, bm25_language=None)
    r = Retriever.from_index(without)
    assert not r.index_data.has_bm25
    with pytest.raises(NoBM25Error, match=r"maxsim index add-bm25"):
        r.search("stars", hybrid=True)
    result = CliRunner().invoke(app, ["search", "stars", "--index", str(without), "--hybrid"])
    assert result.exit_code != 0 and "add-bm25" in result.output
    result = CliRunner().invoke(app, ["index", "add-bm25", str(without)])
    assert result.exit_code == 0, result.output
    a, b = Retriever.from_index(with_bm25), Retriever.from_index(without)
    assert b.index_data.verify() == []
    for query in QUERIES:
        assert ([(h.document_id, round(h.score, 6)) for h in a.search(query, k=5, hybrid=True)]
                == [(h.document_id, round(h.score, 6)) for h in b.search(query, k=5, hybrid=True)])
    assert add_bm25(without).has_bm25  # a second time does nothing


def test_fusions_by_hand():
    assert min_max(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]
    first, first_scores = np.array([1, 2, 3]), np.array([30.0, 20.0, 10.0])
    second, second_scores = np.array([3, 4]), np.array([8.0, 4.0])
    items, scores = fuse(first, first_scores, second, second_scores, Hybrid(fusion="rrf", rrf_k=60))
    assert items.tolist() == [3, 1, 2, 4]
    assert scores[0] == pytest.approx(1 / 63 + 1 / 61)
    items, scores = fuse(first, first_scores, second, second_scores, Hybrid(fusion="weighted", weight=0.25))
    want = {1: 0.25, 2: 0.125, 3: 0.75, 4: 0.0}
    assert items.tolist() == [3, 1, 2, 4] and scores.tolist() == pytest.approx([want[i] for i in items.tolist()])
    assert hybrid_settings(None) is None and hybrid_settings("weighted").fusion == "weighted"
    assert hybrid_settings({"weight": 0.2}).weight == 0.2
    with pytest.raises(ValueError, match="fusion"):
        hybrid_settings("bm26")


def test_an_index_of_the_previous_format_gets_a_bm25_side(retriever, tmp_path):  # noqa: F811
    from test_segments import write_legacy

    path, old = tmp_path / "ix", tmp_path / "old"
    retriever.index(DOCS, path=path, document_ids=IDS)
    write_legacy(IndexData.load(path), old)
    with pytest.raises(NoBM25Error, match="add-bm25"):
        Retriever.from_index(old).search("stars", hybrid="rrf")
    data = add_bm25(old)
    assert data.has_bm25 and json.loads((old / "index.json").read_text())["format"] == manifest.FORMAT
    assert_bm25_matches_one_bm25(IndexData.load(old))
    assert IndexData.load(old).verify() == []
