"""Qdrant as a backend, through the real client running the collection in-process (the same
client class and calls that reach a server or cluster over HTTP or gRPC)."""

import numpy as np
import pytest
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures

from maxsim.model import ColBERT
from maxsim.qdrant import QdrantError
from maxsim.retriever import Retriever

qdrant_client = pytest.importorskip("qdrant_client")

QUERIES = ["why do stars shine", "how do cells divide", "ocean tides and the moon", "the immune system",
           "volcanoes and lava", "filler note about nothing"]


def records(metadata=True):
    return [{"id": i, "content": d, "metadata": {"n": n, "kind": "filler" if "filler" in d else "topic"}
             if metadata else None} for n, (i, d) in enumerate(zip(IDS, DOCS))]


@pytest.fixture
def client():
    return qdrant_client.QdrantClient(":memory:")


def exact(r: Retriever, query: str, k: int) -> list[tuple[str, float]]:
    """Exact MaxSim of every document (its best chunk), from the same vectors, by hand."""
    return [(h.document_id, h.score) for h in r.search_encoded(query, k=k)]


def test_without_the_first_stage_results_equal_exact_maxsim(retriever, client):  # noqa: F811
    q = retriever.index_to_qdrant(records(), client, "docs")
    q.backend.first_stage = False
    retriever.clear_encoded()
    retriever.encode(DOCS, document_ids=IDS)  # documents here fit one chunk (doc_maxlen 24 splits none of these)
    for query in QUERIES:
        got = [(h.document_id, h.score) for h in q.search(query, k=8)]
        want = exact(retriever, query, 8)
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=2e-3, atol=2e-3)  # (float16 storage)


def test_int8_storage_makes_a_quantised_collection_that_searches(retriever, client):  # noqa: F811
    q = retriever.index_to_qdrant(records(), client, "docs8", storage="int8")
    config = client.get_collection("docs8").config.params.vectors["tokens"]
    assert config.quantization_config.scalar.type == qdrant_client.models.ScalarType.INT8
    q.backend.first_stage = False
    want = [h.document_id for h in retriever.index_to_qdrant(records(), client, "docs16").search("stars", k=5)]
    assert [h.document_id for h in q.search("stars", k=5)] == want  # (the local mode scores the float32 vectors)


def test_the_muvera_first_stage_recall_is_measured(retriever, client):  # noqa: F811
    q = retriever.index_to_qdrant(records(), client, "docs", muvera={"k_sim": 3, "d_proj": 8, "repetitions": 10})
    recalls = []
    for query in QUERIES:
        q.backend.first_stage = False
        want = {h.document_id for h in q.search(query, k=10)}
        q.backend.first_stage = True
        got = {h.document_id for h in q.search(query, k=10, ndocs=20)}
        recalls.append(len(got & want) / 10)
    assert np.mean(recalls) >= 0.5, recalls  # (20 candidates of 40 documents; measured, not exact)
    # the first stage really limits what is reranked: 3 candidates give at most 3 documents
    assert all(len(q.search(query, k=10, ndocs=3)) <= 3 for query in QUERIES)


def test_add_delete_and_filters_behave_as_on_the_index(retriever, client, tmp_path):  # noqa: F811
    q = retriever.index_to_qdrant(records(), client, "docs")
    q.backend.first_stage = False
    index = tmp_path / "ix"
    retriever.index(DOCS, path=index, document_ids=IDS, metadata=[r["metadata"] for r in records()])
    own = Retriever.from_index(index)
    for r in (q, own):
        r.add(["a late note about stars and their light"], document_ids=["late"], metadata=[{"n": 99, "kind": "late"}])
        with pytest.raises(Exception, match="already in"):
            r.add(["again"], document_ids=["late"])
        assert r.delete(["doc0", "doc1"]) == 2
        with pytest.raises(Exception, match="not in the"):
            r.delete(["doc0"])
    everyone = own.index_data.n_documents
    assert q.backend.count() == everyone == len(DOCS) - 1
    for query in QUERIES + ["stars and their light"]:
        ranked = [h.document_id for h in q.search(query, k=everyone)]
        assert len(ranked) == everyone and "doc0" not in ranked and "late" in ranked
        for spec in ({"kind": "topic"}, {"n": {"gte": 10, "lt": 30}}, {"kind": {"ne": "filler"}},
                     {"id": {"in": ["doc2", "doc5", "late"]}}, {"kind": {"in": ["late", "topic"]}}, {"n": 99}):
            passing = {h.document_id for h in own.search(query, k=everyone, filter=spec)}  # what the index lets through
            got = [h.document_id for h in q.search(query, k=5, filter=spec)]
            assert got == [d for d in ranked if d in passing][:5], (query, spec)


def test_a_collection_of_another_models_dimensions_is_refused(retriever, client, tiny_model_dir):  # noqa: F811
    retriever.index_to_qdrant(records(), client, "docs")
    other = ColBERT.from_pretrained(tiny_model_dir, dim=8, doc_maxlen=24, query_maxlen=12, seed=0)
    with pytest.raises(QdrantError, match="8-dim"):
        Retriever.from_qdrant(client, "docs", model=other)
    with pytest.raises(QdrantError, match="exists"):
        retriever.index_to_qdrant(records(), client, "docs")
    same = Retriever.from_qdrant(client, "docs")  # the model the collection records
    assert [h.document_id for h in same.search("stars", k=3)] == [h.document_id for h in
                                                                   Retriever.from_qdrant(client, "docs").search("stars", k=3)]
    with pytest.raises(Exception, match="hybrid"):
        same.search("stars", hybrid=True)


def test_the_commands_and_the_service_over_a_local_collection(retriever, checkpoint, tmp_path):  # noqa: F811
    import gc
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from maxsim.cli import app
    from maxsim.serve import create_app

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": d}) + "\n" for i, d in zip(IDS, DOCS)))
    built = CliRunner().invoke(app, ["index", "build", str(corpus), "--model", str(checkpoint), "--qdrant", str(tmp_path / "q"),
                                     "--collection", "docs", "--no-muvera"])
    assert built.exit_code == 0 and f"{len(DOCS)} documents" in built.output, built.output
    retriever.index(DOCS, path=tmp_path / "ix", document_ids=IDS)
    exported = CliRunner().invoke(app, ["export-index", str(tmp_path / "ix"), "--qdrant", str(tmp_path / "q2"),
                                        "--collection", "docs"])
    assert exported.exit_code == 0 and f"{len(DOCS)} documents" in exported.output, exported.output
    gc.collect()  # (the commands' clients let go of the local folders)
    served = Retriever.from_qdrant(str(tmp_path / "q"), "docs")
    served.backend.first_stage = False
    want = [h.document_id for h in served.search("why do stars shine", k=3)]
    from_index = Retriever.from_qdrant(str(tmp_path / "q2"), "docs")
    assert len(from_index.search("why do stars shine", k=3)) == 3
    with TestClient(create_app(served)) as http:
        got = http.post("/search", json={"queries": ["why do stars shine"], "k": 3}).json()
        assert [h["document_id"] for h in got["results"][0]] == want
        assert http.post("/documents", json={"documents": [{"id": "late", "text": "stars shine late"}]}).status_code == 200
        assert http.get("/health").json()["documents"] == len(DOCS) + 1
        assert http.request("DELETE", "/documents", json={"ids": ["late"]}).json()["deleted"] == 1
        assert http.post("/search", json={"queries": ["stars"], "hybrid": True}).status_code == 400


PARITY_METADATA = [
    {"n": 1, "tags": ["a", "b"], "j": {"name": "x"}, "open": True, "day": "2021-03-01", "big": 2**53},
    {"n": 1.0, "tags": "a", "j": {"name": "y"}, "open": False, "day": "2022-01-05", "big": 2**53 - 1},
    {"n": 2.5, "tags": ["b"], "j": {"name": "x", "v": 3}, "day": "2020-12-31"},
    {"n": [1, 3], "tags": [], "open": None},
    {"n": None, "tags": ["c"], "j": None},
    {"n": -4, "open": True, "day": "2023-07-07"},
    None,
    {"n": 3, "tags": ["a"], "j": {"name": "z"}, "big": -(2**53)},
]
PARITY_FILTERS = [
    {"n": 1}, {"n": 1.0}, {"n": 2.5}, {"n": {"ne": 1}}, {"n": {"in": [1, 2.5]}}, {"n": {"gt": 1}}, {"n": {"gte": 1}},
    {"n": {"lt": 1}}, {"n": {"lte": 2.5, "gt": -5}}, {"n": None}, {"tags": "a"}, {"tags": {"ne": "a"}},
    {"tags": {"in": ["b", "c"]}}, {"j.name": "x"}, {"j.name": {"in": ["y", "z"]}}, {"j.v": {"gte": 3}},
    {"open": True}, {"open": False}, {"open": {"ne": True}}, {"open": None}, {"day": {"gte": "2021-01-01"}},
    {"day": {"lt": "2022-01-05"}}, {"big": 2**53}, {"big": {"gt": 2**53 - 1}}, {"big": {"lte": -(2**53)}},
    {"id": "doc3"}, {"id": {"in": ["doc1", "doc7", "nope"]}}, {"id": {"ne": "doc0"}}, {"n": 1, "tags": "b"},
    {"tags": {"in": ["a", "b"]}, "open": True},
]


def test_a_filter_means_the_same_on_qdrant_and_on_the_index(retriever, client, tmp_path):  # noqa: F811
    """The whole grammar run on both backends over the same documents: the same ids, every time
    (float equality, list-valued fields, nested fields, nulls, booleans, dates, integers at 2**53)."""
    n = len(PARITY_METADATA)
    rows = [{"id": IDS[i], "content": DOCS[i], "metadata": PARITY_METADATA[i]} for i in range(n)]
    q = retriever.index_to_qdrant(rows, client, "parity")
    q.backend.first_stage = False
    retriever.index(DOCS[:n], path=tmp_path / "ix", document_ids=IDS[:n], metadata=PARITY_METADATA)
    own = Retriever.from_index(tmp_path / "ix")
    for spec in PARITY_FILTERS:
        on_index = sorted(h.document_id for h in own.search("stars", k=n, filter=spec))
        on_qdrant = sorted(h.document_id for h in q.search("stars", k=n, filter=spec))
        assert on_index == on_qdrant, spec
    for r in (own, q):  # a field no document has, top-level or nested, is an error on both
        for spec in ({"nope": 1}, {"j.nope": 1}):
            with pytest.raises(Exception, match="no document of"):
                r.search("stars", filter=spec)


def test_bad_collection_names_and_a_held_folder_are_one_line_errors(retriever, tmp_path):  # noqa: F811
    from maxsim.errors import SettingsError
    from maxsim.qdrant import connect

    for name in ("bad/name", "../x", "", ".hidden", "a" * 256, "tab\tname"):
        with pytest.raises(SettingsError, match="is not one maxsim uses"):
            retriever.index_to_qdrant(records(), ":memory:", name)
    held = connect(tmp_path / "q")
    with pytest.raises(QdrantError, match="is open in another process"):
        connect(tmp_path / "q")
    held.close()
