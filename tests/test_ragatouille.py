"""RAGatouille's calls, with only the import changed, end to end on a small SciFact slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maxsim.errors import SettingsError
from maxsim.ragatouille import RAGPretrainedModel, RAGTrainer

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/data/scifact")]
N_QUERIES = 40


def scifact_slice():
    """(pairs of query and abstract, the other abstracts) for the first train queries."""
    corpus = {}
    for line in (SCIFACT / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        corpus[row["_id"]] = f"{row['title']} {row['text']}"
    queries = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (SCIFACT / "queries.jsonl").read_text().splitlines()}
    pairs = []
    for line in (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        if len({q for q, _ in pairs} | {queries[qid]}) > N_QUERIES:
            break
        pairs.append((queries[qid], corpus[did]))
    used = {p for _, p in pairs}
    others = [text for text in list(corpus.values())[:400] if text not in used][:120]
    return pairs, others


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run shared by the tests: (trainer, data folder, best checkpoint, workdir)."""
    work = tmp_path_factory.mktemp("ragatouille")
    pairs, others = scifact_slice()
    trainer = RAGTrainer(model_name="scifact-colbert", pretrained_model_name=str(default_model()))
    data = trainer.prepare_training_data(raw_data=pairs, all_documents=others, data_out_path=str(work / "data"),
                                         num_new_negatives=4, hard_negative_minimum_rank=5)
    best = trainer.train(batch_size=8, maxsteps=4, learning_rate=3e-5, doc_maxlen=96, output=work / "run",
                         progress_bar=False)
    return trainer, data, best, work, pairs, others


def default_model() -> Path:
    from maxsim.model import default_base_model

    return default_base_model()


def test_prepare_returns_the_path_and_writes_ragatouille_files(trained):
    trainer, data, _, work, pairs, others = trained
    assert data == str(work / "data")
    folder = Path(data)
    queries = (folder / "queries.train.colbert.tsv").read_text().splitlines()
    corpus = (folder / "corpus.train.colbert.tsv").read_text().splitlines()
    triples = [json.loads(x) for x in (folder / "triples.train.colbert.jsonl").read_text().splitlines()]
    assert len(queries) == len(trainer.queries) == len({q for q, _ in pairs})
    assert all(line.split("\t")[0] == str(i) for i, line in enumerate(queries))
    assert len(corpus) == len(trainer.collection) >= len(others)
    assert triples == trainer.training_triplets and all(len(t) == 3 for t in triples)
    assert all(0 <= q < len(queries) and 0 <= p < len(corpus) and 0 <= n < len(corpus) for q, p, n in triples)
    assert isinstance(trainer.queries, set) and isinstance(trainer.collection, list)
    # the minimum rank is honoured: the manifest records the window the negatives came from
    manifest = json.loads((folder / "maxsim" / "manifest.json").read_text())
    assert manifest["mining"]["window_requested"][0] == 5 and manifest["settings"]["mine"] == "bm25"
    assert manifest["mining"]["smaller_windows"] == {"queries": 0}


def test_train_returns_the_best_checkpoint(trained):
    _, _, best, work, _, _ = trained
    assert isinstance(best, str) and Path(best) == work / "run" / "best"
    chosen = json.loads((Path(best) / "best.json").read_text())
    assert chosen["metric"] == "ndcg@10" and 1 <= chosen["step"] <= 4
    assert set(chosen["metrics"]) == {"ndcg@10", "mrr@10"}


def test_ragatouille_value_errors(tmp_path):
    trainer = RAGTrainer("m", str(default_model()))
    with pytest.raises(ValueError, match="Raw data must be a list of pairs or triplets"):
        trainer.prepare_training_data([("a", "b", "c", "d")], data_out_path=tmp_path)
    with pytest.raises(ValueError, match="Queries must be a strings"):
        trainer.prepare_training_data([(1, "b")], data_out_path=tmp_path)
    with pytest.raises(ValueError, match="Invalid value for label"):
        trainer.prepare_training_data([("q", "p", 7)], pairs_with_labels=True, data_out_path=tmp_path)
    with pytest.raises(ValueError, match="must correspond to either positive_label or negative_label"):
        trainer.prepare_training_data([("q", "p", 1), ("q", "p2", 5)], pairs_with_labels=True, data_out_path=tmp_path)


def test_a_query_whose_pairs_are_all_negative_is_kept_as_ragatouille_keeps_it(tmp_path):
    trainer = RAGTrainer("m", str(default_model()))
    raw = [("what do cats eat", "Cats eat fish.", 1), ("what do cats eat", "Rain falls from clouds.", 0),
           ("why does iron rust", "Iron rusts in water.", 0), ("why does iron rust", "Stars shine by fusion.", 0)]
    trainer.prepare_training_data(raw, pairs_with_labels=True, data_out_path=tmp_path, mine_hard_negatives=False,
                                  num_new_negatives=1)
    assert trainer.queries == {"what do cats eat", "why does iron rust"}
    assert set(trainer.collection) == {"Cats eat fish.", "Rain falls from clouds.", "Iron rusts in water.",
                                       "Stars shine by fusion."}
    lines = (tmp_path / "queries.train.colbert.tsv").read_text().splitlines()
    assert lines == ["0\twhat do cats eat", "1\twhy does iron rust"]
    assert all(q == 0 for q, _, _ in trainer.training_triplets)


@pytest.fixture(scope="module")
def rag(trained):
    _, _, best, work, pairs, others = trained
    model = RAGPretrainedModel.from_pretrained(best, index_root=str(work / "root"))
    documents = others[:40]
    ids = [f"doc{i}" for i in range(len(documents))]
    metadata = [{"n": i} if i % 2 == 0 else {} for i in range(len(documents))]
    path = model.index(collection=documents, document_ids=ids, document_metadatas=metadata, index_name="sci",
                       max_document_length=96, split_documents=True)
    return model, path, documents, ids, work


def test_index_path_and_side_files_have_ragatouille_shapes(rag):
    model, path, documents, ids, work = rag
    assert path == str(work / "root" / "colbert" / "indexes" / "sci")
    collection = json.loads((Path(path) / "collection.json").read_text())
    pid_docid = json.loads((Path(path) / "pid_docid_map.json").read_text())
    metadata = json.loads((Path(path) / "docid_metadata_map.json").read_text())
    assert isinstance(collection, list) and len(collection) == len(pid_docid) >= len(documents)
    assert set(pid_docid.values()) == set(ids) and all(k.isdigit() for k in pid_docid)
    assert metadata["doc0"] == {"n": 0} and metadata["doc1"] == {}


def test_search_finds_a_document_by_its_title(rag):
    model, _, documents, ids, _ = rag
    title = documents[7].split(". ")[0]
    hits = model.search(title, k=5)
    assert hits[0]["document_id"] == "doc7"
    assert set(hits[0]) == {"content", "score", "rank", "document_id", "passage_id", "document_metadata"}
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert isinstance(hits[0]["score"], float) and isinstance(hits[0]["passage_id"], int)
    zero = model.search(title, k=3, zero_index_ranks=True)
    assert [h["rank"] for h in zero] == [0, 1, 2]
    several = model.search([title, documents[4].split(". ")[0]], k=2)
    assert len(several) == 2 and several[1][0]["document_id"] == "doc4"
    assert several[1][0]["document_metadata"] == {"n": 4}
    only = model.search(title, k=3, doc_ids=["doc3", "doc5"])
    assert {h["document_id"] for h in only} == {"doc3", "doc5"}


def test_add_and_delete_also_after_from_index(rag):
    model, path, documents, ids, _ = rag
    new = "Zebrafish regenerate their heart muscle after injury through cardiomyocyte proliferation."
    model.add_to_index([new], new_document_ids=["zebra"], new_document_metadatas=[{"source": "test"}])
    assert model.search(new, k=1)[0]["document_id"] == "zebra"
    model.add_to_index([new], new_document_ids=["zebra"])  # present already: skipped, as RAGatouille does
    model.delete_from_index("doc7")
    model.delete_from_index(["no-such-id"])  # unknown ids are ignored
    again = RAGPretrainedModel.from_index(path)
    title = documents[7].split(". ")[0]
    assert all(h["document_id"] != "doc7" for h in again.search(title, k=10))
    hit = again.search(new, k=1)[0]
    assert hit["document_id"] == "zebra" and hit["document_metadata"] == {"source": "test"}
    pid_docid = json.loads((Path(path) / "pid_docid_map.json").read_text())
    assert "doc7" not in pid_docid.values() and "zebra" in pid_docid.values()
    plain = "Tardigrades survive drying out by making protective sugars."
    again.add_to_index([plain], new_document_ids=["plain"])
    hit = again.search(plain, k=1)[0]
    assert hit["document_id"] == "plain" and "document_metadata" not in hit  # none given: no key


def test_past_the_limit_an_add_removes_the_side_files_and_says_how_to_write_them(rag, monkeypatch, caplog):
    import maxsim.ragatouille.side_files as ragatouille

    model, path, *_ = rag
    monkeypatch.setattr(ragatouille, "SIDE_FILES_MAX_PASSAGES", 1)
    with caplog.at_level("WARNING", logger="maxsim.ragatouille"):
        model.add_to_index(["Axolotls regrow whole limbs."], new_document_ids=["axolotl"],
                           new_document_metadatas=[{"source": "limit"}])
    assert not any((Path(path) / name).exists() for name in ragatouille.SIDE_FILES)
    assert "write_side_files" in caplog.text and "collection.json" in caplog.text
    assert model.search("Axolotls regrow whole limbs.", k=1)[0]["document_id"] == "axolotl"
    ragatouille.write_side_files(path)  # on demand, whole, in step with the index
    pid_docid = json.loads((Path(path) / "pid_docid_map.json").read_text())
    collection = json.loads((Path(path) / "collection.json").read_text())
    metadata = json.loads((Path(path) / "docid_metadata_map.json").read_text())
    assert "axolotl" in pid_docid.values() and len(collection) == len(pid_docid)
    assert metadata["axolotl"] == {"source": "limit"}
    monkeypatch.setattr(ragatouille, "SIDE_FILES_MAX_PASSAGES", 10**9)
    model.delete_from_index("axolotl")  # under the limit: rewritten
    assert "axolotl" not in json.loads((Path(path) / "pid_docid_map.json").read_text()).values()


def test_document_id_errors_are_ragatouilles(rag):
    model, *_ = rag
    with pytest.raises(ValueError, match="document_ids must be the same length as collection"):
        model.index(["a", "b"], document_ids=["x"], index_name="bad")
    with pytest.raises(ValueError, match="document_ids must be unique"):
        model.index(["a", "b"], document_ids=["x", "x"], index_name="bad")
    with pytest.raises(ValueError, match="must not contain empty strings"):
        model.index(["a", "b"], document_ids=["x", " "], index_name="bad")
    with pytest.raises(ValueError, match="document_metadatas must be the same length"):
        model.index(["a", "b"], document_metadatas=[{}], index_name="bad")


def test_rerank_and_in_memory_search(rag):
    model, _, documents, _, _ = rag
    title = documents[2].split(". ")[0]
    ranked = model.rerank(title, documents[:6], k=3)
    assert [r["rank"] for r in ranked] == [1, 2, 3] and ranked[0]["result_index"] == 2
    assert set(ranked[0]) == {"content", "score", "rank", "result_index"}
    assert [r["rank"] for r in model.rerank(title, documents[:6], k=2, zero_index_ranks=True)] == [0, 1]
    model.encode(documents[:5], document_metadatas=[{"i": i} for i in range(5)])
    model.encode(documents[5:8])
    found = model.search_encoded_docs(title, k=3)
    assert found[0]["result_index"] == 2 and found[0]["document_metadata"] == {"i": 2} and found[0]["rank"] == 1
    assert len(model.search_encoded_docs([title, title], k=2)) == 2
    model.clear_encoded_docs()
    with pytest.raises(ValueError, match="nothing encoded"):
        model.search_encoded_docs(title)


def test_langchain_wrappers(rag):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    model, _, documents, _, _ = rag
    title = documents[2].split(". ")[0]
    found = model.as_langchain_retriever(k=2).invoke(title)
    assert len(found) == 2 and isinstance(found[0], Document) and found[0].page_content
    compressor = model.as_langchain_document_compressor(k=2)
    kept = compressor.compress_documents([Document(page_content=d) for d in documents[:5]], title)
    assert len(kept) == 2 and kept[0].page_content == documents[2] and "relevance_score" in kept[0].metadata


def test_language_code_picks_the_stemmer_or_dense_mining(tiny_model_dir, tmp_path):
    pairs = [(f"question number {i} about topic {i}", f"an answer text {i} about topic {i}") for i in range(12)]
    others = [f"filler document {i} on nothing in particular" for i in range(30)]
    for code, mine in (("fr", "bm25"), ("ja", "dense")):
        trainer = RAGTrainer("m", str(tiny_model_dir), language_code=code)
        trainer.prepare_training_data(pairs, all_documents=others, data_out_path=tmp_path / code, num_new_negatives=2,
                                      hard_negative_minimum_rank=2)
        settings = json.loads((tmp_path / code / "maxsim" / "manifest.json").read_text())["settings"]
        assert settings["mine"] == mine and (mine == "dense" or settings["bm25_language"] == "fr")
    trainer.prepare_training_data(pairs, all_documents=others, data_out_path=tmp_path / "random", num_new_negatives=2,
                                  mine_hard_negatives=False)
    assert json.loads((tmp_path / "random" / "maxsim" / "manifest.json").read_text())["settings"]["mine"] == "none"


def test_langchain_without_langchain_core_names_the_extra(tiny_model_dir, monkeypatch):
    import sys

    model = RAGPretrainedModel.from_pretrained(str(tiny_model_dir))
    monkeypatch.setitem(sys.modules, "langchain_core", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"maxsim\[langchain\]"):
        model.as_langchain_retriever()


def test_an_unknown_model_is_one_clear_error(tmp_path):
    from maxsim.model import ModelLoadError

    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        RAGTrainer("m", "colbert-ir/not-a-cached-model")


def test_several_processes_run_under_torchrun_and_stream_the_log(tiny_model_dir, training_folder, tmp_path, capsys):
    """The multi-GPU path, run with 2 CPU processes (gloo): the command, the streamed log, the result."""
    from maxsim.ragatouille.trainer import _torchrun
    from maxsim.training import TrainConfig

    config = TrainConfig(data=training_folder, output=tmp_path / "run", base_model=str(tiny_model_dir), dim=16,
                         query_maxlen=12, doc_maxlen=24, batch_size=4, max_steps=2, dev_fraction=0.25,
                         progress_bar=False)
    best = _torchrun(config, 2, device="cpu")
    assert best == tmp_path / "run" / "best" and (best / "best.json").is_file()
    assert "best checkpoint" in capsys.readouterr().out


def test_reuse_force_fast_and_an_untrained_encoder(rag, tiny_model_dir, caplog):
    model, path, documents, _, _ = rag
    assert model.index(["ignored"], index_name="sci", overwrite_index="reuse") == path
    title = documents[3].split(". ")[0]
    assert model.search(title, k=2, force_fast=True)[0]["document_id"] == "doc3"
    with caplog.at_level("WARNING"):
        RAGPretrainedModel.from_pretrained(str(tiny_model_dir))
    assert "untrained" in caplog.text


def test_an_index_name_never_leaves_its_folder_and_bad_searches_are_one_line(rag, tmp_path):
    """index_name="../.." replaced an unrelated index elsewhere on disk (overwrite is the
    default); now every name that is not one plain folder name is refused before any work."""
    model, *_ = rag
    elsewhere = Path(model.index_root) / "colbert" / "mine.txt"
    elsewhere.write_text("a user's file")
    for name in ("../..", "..", "../elsewhere", "/tmp/abs", "a/b", "", " ", "a\\b"):
        with pytest.raises(SettingsError, match="index_name|must be one folder name"):
            model.index(["a text"], index_name=name)
        with pytest.raises(SettingsError):
            model.search("a query", index_name=name)
    assert elsewhere.read_text() == "a user's file"
    for query, message in (("a\ud800b", "lone surrogate"), ([], "non-empty list"), (None, "got NoneType"),
                           ("x" * 10_001, "over the 10000 allowed")):
        with pytest.raises(SettingsError, match=message):
            model.search(query, index_name="sci")
    with pytest.raises(SettingsError, match="k must be a whole number"):
        model.search("a query", index_name="sci", k=-1)
    with pytest.raises(SettingsError, match="force_fast sets ncells"):
        model.search("a query", index_name="sci", force_fast=True, ncells=4)
    assert model.rerank("a query", []) == []
    with pytest.raises(SettingsError, match="lone surrogate"):
        model.rerank("a\ud800", ["a text"])
