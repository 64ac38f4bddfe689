"""Index, search, add/delete, reload, damage, rerank and in-memory search with the real MiniLM."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maxsim.index import Codec, IndexLoadError, build_ivf, n_centroids_for
from maxsim.index_settings import nbits_for
from maxsim.model import ColBERT
from maxsim.retriever import Retriever
from maxsim.scoring import maxsim

pytestmark = pytest.mark.slow
SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


@pytest.fixture(scope="module")
def corpus():
    docs = []
    with (SCIFACT / "corpus.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            docs.append((d["_id"], d["text"]))
            if len(docs) == 120:
                break
    return docs


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus):
    retriever = Retriever.from_pretrained(None)
    path = tmp_path_factory.mktemp("index") / "scifact-120"
    retriever.index([t for _, t in corpus], path=path, document_ids=[i for i, _ in corpus],
                    metadata=[{"n": n} for n in range(len(corpus))], max_document_tokens=128)
    return retriever, path


@pytest.fixture(scope="module")
def exact_documents(built, corpus):
    """Every chunk of the corpus encoded by the model itself: (C, L, 128) vectors, (C, L) mask and
    each chunk's document position (C,) (encoded once for every test that ranks exactly)."""
    model = built[0].model
    chunks = model.tokenize_document_chunks([t for _, t in corpus], True, 128)
    tokens = [c for doc in chunks for c, _ in doc]
    owner = [i for i, doc in enumerate(chunks) for _ in doc]
    vectors = torch.zeros(len(tokens), max(map(len, tokens)), 128)
    mask = torch.zeros(len(tokens), vectors.shape[1], dtype=torch.bool)
    for positions, v, m in model.encode_batches(tokens, False):
        vectors[positions, : v.shape[1]], mask[positions, : m.shape[1]] = v, m
    return vectors, mask, owner


def _exact_top(retriever, queries, exact_documents, k):
    """(Q, k) positions in the corpus of each query's best documents by exact MaxSim."""
    vectors, mask, owner = exact_documents
    q, qm = retriever.query_vectors(queries)
    scores = maxsim(q, qm, vectors, mask)
    doc_scores = torch.full((len(queries), max(owner) + 1), -1e9)
    for j, o in enumerate(owner):
        doc_scores[:, o] = torch.maximum(doc_scores[:, o], scores[:, j])
    return doc_scores.topk(k, dim=1).indices


def test_index_files_and_size(built):
    _, path = built
    meta = json.loads((path / "index.json").read_text())
    # under 10,000 documents the default is 4 bits
    assert meta["nbits"] == nbits_for(120) == 4 and meta["n_documents"] == 120 and meta["n_chunks"] > 120
    assert meta["n_centroids"] == n_centroids_for(meta["n_tokens"])
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    per_token = size / meta["n_tokens"]
    # 64 bytes of residual, 2 of centroid id, 2 + 2 of row maps (token -> row, row -> chunk),
    # the inverted file and the (stored) document texts
    assert per_token < 96, per_token


def test_query_from_a_document_finds_it_first(built, corpus, exact_documents):
    retriever, _ = built
    picks = [3, 17, 42, 77, 101]
    queries = [" ".join(corpus[i][1].split()[5:25]) for i in picks]
    exact = _exact_top(retriever, queries, exact_documents, 1)[:, 0].tolist()
    hits = retriever.search(queries, k=5)
    assert [h[0].document_id for h in hits] == [corpus[i][0] for i in exact]
    assert [h[0].document_id for h in hits] == [corpus[i][0] for i in picks]
    first = hits[0][0]
    assert first.rank == 1 and first.metadata == {"n": picks[0]} and first.content in corpus[picks[0]][1]


@pytest.mark.parametrize("nbits, floor", [(2, 0.5), (4, 0.5)])
def test_recall_against_exact_maxsim(built, corpus, exact_documents, tmp_path, nbits, floor):
    # the untrained model scores documents close together (top 15 within 1.5 of 13.7), so
    # residual noise (mean reconstruction cosine 0.96 at 2 bits, 0.99 at 4) and the imputed
    # similarities of unprobed centroids reorder the tail of the top 10; measured overlaps with
    # the default search settings and the middle-quantile codec: 0.56 and 0.58. With a trained
    # model the index tracks exact MaxSim closely (bench/search_engines.py: SciFact test nDCG@10
    # 0.7150 through a 2-bit index against 0.7215 exact, recall@10 0.836)
    retriever, path = built
    if nbits != json.loads((path / "index.json").read_text())["nbits"]:
        forward = retriever.inference_forward  # its traces made once, shared
        retriever = Retriever(retriever.model)
        retriever.inference_forward = forward
        retriever.index([t for _, t in corpus], path=tmp_path / "ix", document_ids=[i for i, _ in corpus],
                        max_document_tokens=128, nbits=nbits)
    queries = ["effects of vitamin D on bone density", "cancer cell proliferation and apoptosis",
               "antibiotic resistance in bacteria", "neural stem cells in the brain", "blood pressure and diet"]
    exact = _exact_top(retriever, queries, exact_documents, 10)
    hits = retriever.search(queries, k=10)
    overlap = np.mean([len({corpus[i][0] for i in exact[q].tolist()} & {h.document_id for h in hits[q]}) / 10
                       for q in range(len(queries))])
    assert overlap >= floor, overlap


def test_add_delete_and_reload(built, corpus, tmp_path):
    retriever, path = built
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(path, copy)
    r = Retriever.from_index(copy, model=retriever.model)
    r.inference_forward = retriever.inference_forward  # the model's query traces, made once
    query = "antibiotic resistance in bacteria"
    everything = {"ncells": len(r.index_data.centroids), "ndocs": r.index_data.n_chunks}  # exact MaxSim
    before, before_all = r.search(query, k=5), r.search(query, k=5, **everything)
    new_text = "Zebrafish regenerate their fins through blastema formation after amputation."
    r.add([new_text], document_ids=["zebra"], metadata=[{"source": "test"}])
    hit = r.search("how do zebrafish regenerate fins", k=1)[0]
    assert hit.document_id == "zebra" and hit.metadata == {"source": "test"}
    r.delete(["zebra", before[0].document_id])
    after = r.search(query, k=5)
    assert "zebra" not in {h.document_id for h in after} and before[0].document_id not in {h.document_id for h in after}
    # the approximate search's candidates change with the deletion; the documents found both
    # times keep their (exactly rescored) scores, and with every chunk scored the rest move up
    kept = {h.document_id: h.score for h in before}
    for h in after:
        if h.document_id in kept:
            assert h.score == pytest.approx(kept[h.document_id], rel=1e-5)
    after_all = r.search(query, k=5, **everything)
    assert before_all[0].document_id == before[0].document_id
    assert [h.document_id for h in after_all[:4]] == [h.document_id for h in before_all[1:5]]
    again = Retriever.from_index(copy, model=retriever.model)
    again.inference_forward = retriever.inference_forward
    fresh, carried = again.search("antibiotic resistance in bacteria", k=5), r.search("antibiotic resistance in bacteria", k=5)
    assert [h.document_id for h in fresh] == [h.document_id for h in carried]
    assert [h.score for h in fresh] == pytest.approx([h.score for h in carried], rel=1e-6)
    # the delete wrote a tombstone in the first segment; the segment of the add, all of it
    # deleted, was dropped by the merge policy
    meta = json.loads((copy / "index.json").read_text())
    assert [(s["n_documents"], s["deleted"]["count"]) for s in meta["segments"]] == [(len(corpus), 1)]
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith("seg-")) == [meta["segments"][0]["name"]]
    with pytest.raises(ValueError, match="already in the index"):
        r.add([corpus[5][1]], document_ids=[corpus[5][0]])


def test_exact_scores_equal_maxsim_over_the_decompressed_vectors(built):
    from maxsim.index import chunk_scores
    from maxsim.scoring import maxsim_packed

    retriever, path = built
    data = Retriever.from_index(path, model=retriever.model).index_data
    q, qm = retriever.query_vectors(["antibiotic resistance in bacteria"])
    chunk_ids = np.array([7, 3, 0, 42, data.n_chunks - 1])
    vectors, lengths = data.decompress(chunk_ids)
    want = maxsim_packed(q[0], qm[0], vectors, lengths, 1 / vectors.norm(dim=1))
    assert torch.allclose(chunk_scores(data, q, qm, chunk_ids), want, rtol=1e-5, atol=1e-5)


def test_queries_searched_on_a_pool_rank_as_one_by_one(built, monkeypatch):
    import importlib

    from maxsim.index import search, search_pool

    search_module = importlib.import_module("maxsim.index.search")  # (the package's `search` is the function)

    retriever, path = built
    data = Retriever.from_index(path, model=retriever.model).index_data
    queries = ["antibiotic resistance", "vitamin D and bones", "stem cells", "cancer immunotherapy", "sleep",
               "obesity in children", "malaria vaccine", "gene expression in yeast", "heart failure"]
    q, qm = retriever.query_vectors(queries)
    alone = [search(data, q[i : i + 1], qm[i : i + 1], 5) for i in range(len(queries))]
    made: list[int] = []
    real_pool = search_module.search_pool
    monkeypatch.setattr(search_module, "search_pool", lambda *a: made.append(1) or real_pool(*a))
    with search_pool(2) as pool:
        given = search(data, q, qm, 5, pool=pool)  # the caller's pool
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # (a test worker may hold one core's share)
    try:
        own = search(data, q, qm, 5)  # 9 queries >= POOL_MIN_QUERIES: a pool of its own, where torch has 2+ threads
    finally:
        torch.set_num_threads(threads)
    assert made == [1]
    for ranking in (given, own):
        assert ranking.positions.tolist() == [a.positions[0].tolist() for a in alone]
        np.testing.assert_allclose(ranking.scores, np.concatenate([a.scores for a in alone]), rtol=1e-5, atol=1e-5)


def test_damaged_file_and_wrong_dim_are_errors(built, tmp_path):
    retriever, path = built
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(path, copy)
    (residuals,) = copy.glob("seg-*/residuals.npy")
    data = residuals.read_bytes()
    residuals.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexLoadError, match="residuals.npy holds .* bytes, not the .* the manifest records"):
        Retriever.from_index(copy, model=retriever.model)
    other = ColBERT.from_pretrained(None, dim=64)
    with pytest.raises(IndexLoadError, match="128-dim"):
        Retriever.from_index(path, model=other)


def test_rerank_and_in_memory_search(built, corpus):
    retriever, _ = built
    docs = [t for _, t in corpus[:20]]
    query = " ".join(docs[7].split()[:20])
    ranked = retriever.rerank(query, docs, k=3)
    assert ranked[0].document_id == "7" and [h.rank for h in ranked] == [1, 2, 3]
    assert ranked[0].score >= ranked[1].score >= ranked[2].score
    fresh = Retriever(retriever.model)
    fresh.encode(docs[:10], document_ids=[f"a{i}" for i in range(10)])
    fresh.encode(docs[10:], document_ids=[f"b{i}" for i in range(10)])
    assert fresh.search_encoded(query, k=1)[0].document_id == "a7"
    assert fresh.search_encoded(" ".join(docs[15].split()[:20]), k=1)[0].document_id == "b5"


def test_codec_and_ivf_by_hand():
    residuals = np.array([[-0.3, -0.1, 0.1, 0.3]] * 4, dtype=np.float32)
    codec = Codec.fit(residuals, 2)
    packed = codec.encode(residuals)
    assert packed.shape == (4, 1) and packed.dtype == np.uint8
    decoded = codec.decode(packed, 4)
    assert np.allclose(decoded, residuals, atol=1e-6)  # four distinct values: exact buckets
    chunks, offsets = build_ivf(np.array([0, 2, 2, 0, 1]), np.array([2, 3]), 3)
    # chunk 0 holds tokens with centroids 0, 2; chunk 1 holds 2, 0, 1
    assert [chunks[offsets[c] : offsets[c + 1]].tolist() for c in range(3)] == [[0, 1], [1], [0, 1]]


def test_codec_cutoffs_leave_out_tokens_on_their_centroids():
    """Nine rows in ten of zeros (tokens that are their centroids) do not pull the cutoffs to zero:
    the other residuals keep their four buckets, and a zero still decodes near zero."""
    rng = np.random.default_rng(0)
    spread = rng.uniform(-0.2, 0.2, (100, 8)).astype(np.float32)
    residuals = np.concatenate([np.zeros((900, 8), np.float32), spread])
    codec = Codec.fit(residuals, 2)
    np.testing.assert_allclose(codec.cutoffs, Codec.fit(spread, 2).cutoffs)
    assert codec.cutoffs[0] < -0.05 and codec.cutoffs[2] > 0.05
    error = np.abs(codec.decode(codec.encode(spread), 8) - spread).mean()
    assert error < 0.03, error  # each of four buckets about 0.1 wide
    assert np.abs(codec.decode(codec.encode(np.zeros((1, 8), np.float32)), 8)).max() < 0.1
    assert Codec.fit(np.zeros((10, 8), np.float32), 2).values.tolist() == [0.0] * 4  # all zeros: kept


def test_index_by_name_goes_under_the_index_root(tmp_path, tiny_model_dir, monkeypatch):
    from maxsim.model import ColBERT

    monkeypatch.chdir(tmp_path)
    retriever = Retriever(ColBERT.from_pretrained(tiny_model_dir, dim=16, seed=0))
    with pytest.raises(ValueError, match="path= .* or a name="):
        retriever.index(["a document"])
    path = retriever.index([f"document {i} about topic {i}" for i in range(12)], name="notes")
    assert path == Path(".maxsim") / "indexes" / "notes" and (tmp_path / path / "index.json").is_file()
    assert Retriever.from_index(path, model=retriever.model).search("topic 3", k=2)[0].rank == 1


def test_an_untrained_projection_is_said_once_with_the_fix(tiny_model_dir, caplog, tmp_path):
    from maxsim.model import ColBERT

    model = ColBERT.from_pretrained(tiny_model_dir, dim=16)  # a plain encoder: a new projection
    assert model.untrained
    with caplog.at_level("WARNING", logger="maxsim.model.colbert"):
        retriever = Retriever(model)
        retriever.rerank("a query", ["a document"])
        Retriever(model)
    said = [r.message for r in caplog.records if "untrained" in r.message]
    assert len(said) == 1 and "maxsim train" in said[0] and "answerai-colbert-small-v1" in said[0]
    assert not ColBERT.from_pretrained(model.save(tmp_path / "saved-colbert")).untrained
    assert ColBERT.from_pretrained("base").untrained  # "base" is the bundled MiniLM everywhere


def test_a_hit_says_which_chunk_of_its_document_it_is(tiny_model_dir, tmp_path):
    from maxsim.errors import UnknownIdError
    from maxsim.model import ColBERT

    retriever = Retriever(ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24))
    long_text = " ".join(f"sentence {i} about tides and the moon." for i in range(30))
    retriever.index([long_text, "a short note on volcanoes"], path=tmp_path / "ix", document_ids=["long", "short"],
                    metadata=[{"kind": "long"}, None])
    hits = retriever.search("sentence 20 about tides", k=2)
    for hit in hits:
        whole = retriever.document(hit.document_id)["content"]
        assert whole[hit.start : hit.end] == hit.content and hit.chunk >= 0
    chunks = {h.chunk for h in retriever.search("tides", k=1)}
    assert chunks <= set(range(30))
    assert retriever.document("long") == {"document_id": "long", "content": long_text, "metadata": {"kind": "long"}}
    assert [h.document_id for h in retriever.search("tides", k=2, filter={"document_id": "long"})] == ["long"]
    with pytest.raises(UnknownIdError):
        retriever.document("nobody")
    places = retriever.index_data.chunk_places(np.arange(retriever.index_data.n_chunks))
    assert (places == 0).sum() == 2 and places.max() >= 1  # each document's first chunk is 0; "long" has more


def test_in_a_notebook_indexing_shows_its_progress(tiny_model_dir, tmp_path, monkeypatch):
    import sys
    import types

    import maxsim.retriever as retriever_module
    from maxsim import progress
    from maxsim.model import ColBERT

    shown, real = [], retriever_module.build_index
    monkeypatch.setattr(retriever_module, "build_index", lambda *args: (shown.append(args[-1]), real(*args))[1])
    retriever = Retriever(ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24))
    retriever.index(["a note on tides", "a note on volcanoes"], path=tmp_path / "plain")
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # as a Jupyter kernel has it
    retriever.index(["a note on tides", "a note on volcanoes"], path=tmp_path / "notebook")
    assert shown == [False, True]
    assert not isinstance(progress.progress(3, "encoding"), progress.LogProgress)  # a tqdm bar, drawn as a widget
