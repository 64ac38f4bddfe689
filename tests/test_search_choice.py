"""The search configuration chosen on dev: the paired test, the choice, search.json, and every
place that searches following it unless told otherwise."""

import json
import logging

import numpy as np
import pytest
from conftest import write_jsonl
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.fusion import Hybrid
from maxsim.ranking import Ranking
from maxsim.search_config import SEARCH_FILE, SearchChoice, effective, read_choice, resolve, write_choice
from maxsim.search_tuning import Comparison, choose, compare, paired_p_value, report
from maxsim.training import TrainConfig, Trainer

WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron", "iris", "jade", "kelp", "lichen",
         "marble", "nectar", "onyx", "pollen", "quartz", "reed", "shale", "thistle", "umber", "violet", "willow",
         "yarrow"]


def lexical_dev_set(folder):
    """A BEIR folder where BM25 wins by far: each query is two rare words that only its relevant
    document holds, buried in filler that every document shares (an untrained model matches the
    filler as much as the words)."""
    folder.mkdir(parents=True, exist_ok=True)
    filler = "the study reports results of the trial in patients with the condition over time"
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, word in enumerate(WORDS):
        other = WORDS[(i + 7) % len(WORDS)]
        corpus.append({"_id": f"d{i}", "title": "", "text": f"{filler} {word}{i} {other}x{i} {filler}"})
        queries.append({"_id": f"q{i}", "text": f"{word}{i} {other}x{i}"})
        qrels.append(f"q{i}\td{i}\t1")
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "dev.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def comparison(model_values, fused_values, metric="ndcg@10"):
    """A Comparison of the model alone against one fusion, from per-query values."""
    model_values, fused_values = np.asarray(model_values, float), np.asarray(fused_values, float)
    names = ["maxsim", "bm25", "rrf"]
    metrics = {"maxsim": {metric: model_values.mean()}, "bm25": {metric: fused_values.mean()},
               "rrf": {metric: fused_values.mean()}}
    return Comparison(metric, names, {"rrf": Hybrid(fusion="rrf")}, metrics,
                      np.stack([model_values, fused_values, fused_values]))


def test_the_paired_test_keeps_the_model_alone_unless_a_fusion_clearly_wins():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 60)
    clear = choose(comparison(base, np.minimum(1, base + 0.2)))
    assert clear.search == "hybrid" and clear.hybrid == Hybrid(fusion="rrf") and clear.test["p_value"] < 0.001
    noise = choose(comparison(base, base + rng.normal(0, 0.05, 60)))
    assert noise.search == "maxsim" and noise.settings() is None and noise.test["p_value"] > 0.05
    # a single query cannot make the choice, however large its gain
    assert choose(comparison([0.1], [1.0])).search == "maxsim"


def test_taking_the_best_of_many_fusions_is_accounted_for():
    """The p-value is of the largest mean over the fusions: more fusions that gain by chance make it larger."""
    rng = np.random.default_rng(1)
    gains = rng.normal(0.01, 0.1, (1, 40))
    many = np.vstack([gains, rng.normal(0.01, 0.1, (9, 40))])
    assert paired_p_value(many) >= paired_p_value(gains) - 0.02
    assert paired_p_value(np.full((3, 12), -0.1)) == 1.0


def test_fusions_are_scored_from_the_two_rankings():
    qrels = {"q0": {"d1": 1}, "q1": {"d0": 1}}
    model = Ranking.from_rows([([0, 1], [2.0, 1.0]), ([1, 0], [2.0, 1.0])])  # wrong first for both
    bm25 = Ranking.from_rows([([1, 0], [5.0, 1.0]), ([0, 1], [5.0, 1.0])])  # right first for both
    found = compare(["q0", "q1"], ["d0", "d1"], qrels, model, bm25)
    assert found.metrics["bm25"]["ndcg@10"] == pytest.approx(1.0)
    assert found.metrics["maxsim"]["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert found.metrics["weighted 0.1"]["ndcg@10"] == pytest.approx(1.0)  # BM25's share decides
    assert found.metrics["weighted 0.9"]["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert found.best_fusion() == "weighted 0.1"
    assert set(found.row()) == {"bm25_ndcg@10", "bm25_mrr@10", "fusion_ndcg@10", "fusion_mrr@10", "fusion"}


def test_search_json_round_trip_and_resolution(tmp_path, caplog):
    choice = SearchChoice(search="hybrid", hybrid=Hybrid(weight=0.3), dev={"metric": "ndcg@10"})
    write_choice(tmp_path, choice)
    assert read_choice(tmp_path) == choice
    assert resolve(None, choice, tmp_path).hybrid == Hybrid(weight=0.3)
    assert resolve(True, choice, tmp_path).hybrid == Hybrid(weight=0.3)  # --hybrid alone: the model's fusion
    assert resolve(False, choice, tmp_path).hybrid is None
    assert "instead of the model's own choice" in resolve("rrf", choice, tmp_path).source
    assert resolve(None, None).hybrid is None and resolve(True, None).hybrid == Hybrid()
    fallback = effective(None, read_choice(tmp_path), tmp_path, has_bm25=False)
    assert fallback.hybrid is None and "add-bm25" in fallback.source
    (tmp_path / SEARCH_FILE).write_text('{"search": "sometimes"}')
    with caplog.at_level(logging.WARNING):
        assert read_choice(tmp_path) is None
    assert "cannot be read" in caplog.text


def test_a_run_where_bm25_wins_on_dev_says_so_and_chooses_fusion(tiny_model_dir, training_folder, tmp_path, caplog):
    dev = lexical_dev_set(tmp_path / "dev")
    cfg = TrainConfig(data=training_folder, output=tmp_path / "run", base_model=str(tiny_model_dir), dim=16,
                      query_maxlen=12, doc_maxlen=48, batch_size=4, learning_rate=1e-4, progress_bar=False, seed=5,
                      max_steps=2, eval_every=1, dev_data=dev)
    with caplog.at_level(logging.INFO):
        best = Trainer(cfg).train()
    choice = read_choice(best)
    assert choice is not None and choice.search == "hybrid" and choice.hybrid.fusion in ("rrf", "weighted")
    assert choice.dev["model_worse_than_bm25"] is True and choice.test["p_value"] < 0.05
    assert choice.dev["bm25"]["ndcg@10"] > choice.dev["maxsim"]["ndcg@10"] + 0.2
    assert choice.chosen_on["by"] == "maxsim train" and choice.chosen_on["dev"] == "dev, split dev"
    info = json.loads((best / "best.json").read_text())
    assert info["baselines"]["bm25"]["ndcg@10"] == choice.dev["bm25"]["ndcg@10"] and info["search"].startswith("hybrid")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r["step"] == 0)
    assert start["dev_bm25_ndcg@10"] == choice.dev["bm25"]["ndcg@10"] and isinstance(start["dev_fusion"], str)
    assert info["baselines"]["step_0"] == {"maxsim": start["dev_ndcg@10"], "fusion": start["dev_fusion_ndcg@10"],
                                           "fusion_name": start["dev_fusion"]}
    assert all("dev_fusion_ndcg@10" in r for r in rows if "dev_ndcg@10" in r)
    assert "WORSE than BM25" in caplog.text and "(step 0: " in caplog.text
    assert "## Search configuration" in (best / "README.md").read_text()


def test_report_says_plainly_when_the_model_alone_loses():
    choice = SearchChoice(search="maxsim", dev={"metric": "ndcg@10", "queries": 5, "maxsim": {"ndcg@10": 0.3},
                                                "bm25": {"ndcg@10": 0.4},
                                                "best_fusion": {"name": "rrf", "ndcg@10": 0.41},
                                                "model_worse_than_bm25": True},
                          test={"p_value": 0.2, "alpha": 0.05})
    lines = report(choice, {"maxsim": 0.1})
    assert "MaxSim alone 0.3000 (step 0: 0.1000), BM25 0.4000, best fusion (rrf) 0.4100" in lines[0]
    assert "not below 0.05" in lines[1] and "WORSE than BM25" in lines[2]


@pytest.fixture
def hybrid_model(tiny_model_dir, tmp_path):
    """A saved ColBERT whose search.json chose weighted fusion at 0.2."""
    from maxsim.model import ColBERT

    folder = tmp_path / "model"
    folder.mkdir()
    ColBERT.from_pretrained(str(tiny_model_dir), dim=16, seed=0).save_to(folder)
    write_choice(folder, SearchChoice(search="hybrid", hybrid=Hybrid(weight=0.2)))
    return folder


def test_every_search_follows_the_model_choice_unless_told_otherwise(hybrid_model, tmp_path, caplog):
    from maxsim.retriever import Retriever

    texts = [f"document about {w} and {w} things" for w in WORDS[:12]]
    with caplog.at_level(logging.INFO):
        Retriever.from_pretrained(hybrid_model).index(texts, path=tmp_path / "ix")
        retriever = Retriever.from_index(tmp_path / "ix")
    assert "search configuration: hybrid: weighted fusion with BM25 (weight 0.2" in caplog.text
    fused = retriever.search("basalt things", k=3)
    assert fused[0].bm25_score is not None  # fused by default, as search.json says
    assert retriever.search("basalt things", k=3, hybrid=False)[0].bm25_score is None
    assert retriever.search_config("rrf").hybrid.fusion == "rrf"
    # the command line: --no-hybrid for MaxSim alone
    runner = CliRunner()
    plain = runner.invoke(app, ["search", "basalt things", "--index", str(tmp_path / "ix"), "--json", "--no-hybrid"])
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout.strip().splitlines()[-1])[0].get("bm25_score") is None
    auto = runner.invoke(app, ["search", "basalt things", "--index", str(tmp_path / "ix"), "--json"])
    assert json.loads(auto.stdout.strip().splitlines()[-1])[0].get("bm25_score") is not None
    refused = runner.invoke(app, ["search", "q", "--index", str(tmp_path / "ix"), "--no-hybrid", "--fusion", "rrf"])
    assert refused.exit_code != 0 and "--no-hybrid" in refused.output
    # the service: a request without "hybrid" follows search.json, "hybrid": false does not
    from fastapi.testclient import TestClient

    from maxsim.serve import create_app

    with TestClient(create_app(retriever)) as http:
        auto_hits = http.post("/search", json={"queries": ["basalt things"], "k": 2}).json()["results"][0]
        plain_hits = http.post("/search", json={"queries": ["basalt things"], "k": 2, "hybrid": False}).json()
        browser = http.get("/search", params={"q": "basalt things", "k": 2}).json()
    assert auto_hits[0].get("bm25_score") is not None and plain_hits["results"][0][0].get("bm25_score") is None
    assert str(browser).count("bm25_score") == 2
    # RAGatouille's search follows it too
    from maxsim.ragatouille import RAGPretrainedModel

    rag = RAGPretrainedModel.from_index(tmp_path / "ix")
    assert rag.search("basalt things", k=2)[0]["score"] == pytest.approx(fused[0].score)


def test_an_index_without_bm25_falls_back_to_maxsim_and_says_so(hybrid_model, tmp_path, caplog):
    from maxsim.retriever import Retriever

    with caplog.at_level(logging.WARNING):
        retriever = Retriever.from_pretrained(hybrid_model)
        retriever.index(["one text", "another text"], path=tmp_path / "ix", bm25_language=None)
        hits = retriever.search("text", k=1)
    assert hits[0].bm25_score is None
    assert "gets none (--no-bm25)" in caplog.text and "searching with MaxSim alone" in caplog.text


def test_tune_search_writes_search_json_into_the_model_folder(hybrid_model, tmp_path):
    dev = lexical_dev_set(tmp_path / "dev")
    (hybrid_model / SEARCH_FILE).unlink()
    runner = CliRunner()
    dry = runner.invoke(app, ["tune-search", "--model", str(hybrid_model), "--data", str(dev), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert not (hybrid_model / SEARCH_FILE).exists()
    result = runner.invoke(app, ["tune-search", "--model", str(hybrid_model), "--data", str(dev)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert read_choice(hybrid_model).model_dump(mode="json") == printed
    assert printed["search"] == "hybrid" and printed["chosen_on"]["by"] == "maxsim tune-search"
    missing = runner.invoke(app, ["tune-search", "--model", "someone/model", "--data", str(dev)])
    assert missing.exit_code != 0 and "not a folder here" in missing.output
