import json
import math

import pytest
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.evaluation import evaluate_run, run_from_ranking, write_trec_run
from maxsim.ranking import Ranking


def test_metrics_on_a_hand_made_qrels_and_run():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}}
    run = {"q1": {"d1": 3.0, "d4": 2.0, "d2": 1.0}, "q2": {"d5": 2.0, "d3": 1.0}}
    m = evaluate_run(qrels, run, ("ndcg@10", "mrr@10", "recall@100", "map"))
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["recall@100"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2, abs=1e-4)


def test_mrr_cutoff_and_missing_queries_count_as_zero():
    qrels = {"q1": {"d11": 1}, "q2": {"d1": 1}}
    run = {"q1": {f"d{i}": 100.0 - i for i in range(1, 12)}}  # the relevant one is 11th
    m = evaluate_run(qrels, run, ("mrr@10", "ndcg@10"))
    assert m["mrr@10"] == 0.0 and m["ndcg@10"] == 0.0


def test_self_hits_are_dropped_and_trec_file(tmp_path):
    run = run_from_ranking(["a", "b"], ["a", "b", "c"],
                           Ranking.from_rows([([0, 1, 2], [3.0, 2.0, 1.0]), ([0, 1, 2], [3.0, 2.0, 1.0])]),
                           drop_self_hits=True, k=2)
    assert run == {"a": {"b": 2.0, "c": 1.0}, "b": {"a": 3.0, "c": 1.0}}
    write_trec_run(run, tmp_path / "run.trec")
    assert (tmp_path / "run.trec").read_text().splitlines()[:2] == [
        "a Q0 b 1 2.000000 maxsim", "a Q0 c 2 1.000000 maxsim"]


def test_eval_command_bm25_on_a_small_beir_folder(tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = {"d1": "Cats eat fish and mice.", "d2": "Rain falls from clouds.", "d3": "Iron rusts in water."}
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()))
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "what do cats eat"}\n{"_id": "q2", "text": "why does iron rust"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    result = CliRunner().invoke(app, ["eval", "--model", "bm25", "--data", str(beir), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["ndcg@10"] == 1.0 and metrics["mrr@10"] == 1.0 and metrics["recall@100"] == 1.0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["map"] == 1.0
    assert (tmp_path / "out" / "run.trec").read_text().startswith("q1 Q0 d1 1 ")


def test_index_and_search_commands(tmp_path, tiny_model_dir):
    from maxsim.model import ColBERT

    ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=32).save(tmp_path / "ckpt")
    corpus = tmp_path / "corpus.jsonl"
    texts = [f"document {i} talks about topic number {i} and nothing else" for i in range(40)]
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(texts)))
    built = CliRunner().invoke(app, ["index", "build", str(corpus), "--model", str(tmp_path / "ckpt"), "--output",
                                     str(tmp_path / "ix"), "--nbits", "4"])
    assert built.exit_code == 0, built.output
    found = CliRunner().invoke(app, ["search", "--index", str(tmp_path / "ix"), "topic number 7", "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout.strip().splitlines()[-1])
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert set(hits[0]) == {"document_id", "score", "rank", "content", "metadata", "chunk", "start", "end"}
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    # the folder holding corpus.jsonl is a BEIR folder once it has queries and qrels
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"topic number {i}"}) + "\n" for i in range(10)))
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(10)))
    results = {}
    for how in (["--model", str(tmp_path / "ckpt")], ["--index", str(tmp_path / "ix")]):
        done = CliRunner().invoke(app, ["eval", "--data", str(tmp_path), *how, "--k", "10"])
        assert done.exit_code == 0, done.output
        results[how[0]] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["--index"]["model"] == str((tmp_path / "ckpt").resolve())
    assert abs(results["--index"]["ndcg@10"] - results["--model"]["ndcg@10"]) < 0.05, results
    # hybrid (BM25 cannot tell these documents apart: a one-character number is no bm25s token)
    hybrid = CliRunner().invoke(app, ["eval", "--data", str(tmp_path), "--index", str(tmp_path / "ix"), "--k", "10",
                                      "--hybrid", "--fusion", "weighted", "--fusion-weight", "0.1"])
    assert hybrid.exit_code == 0, hybrid.output
    fused = json.loads(hybrid.stdout.strip().splitlines()[-1])
    assert fused["hybrid"]["fusion"] == "weighted" and fused["hybrid"]["weight"] == 0.1 and 0 <= fused["ndcg@10"] <= 1
    found = CliRunner().invoke(app, ["search", "--index", str(tmp_path / "ix"), "topic number 7", "-k", "3", "--json",
                                     "--hybrid"])
    hits = json.loads(found.stdout.strip().splitlines()[-1])
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["bm25_score"] > 0 and "maxsim_score" in h for h in hits)
    (broken,) = (tmp_path / "ix").glob("seg-*/codes.npy")
    broken.write_bytes(broken.read_bytes()[:-8])
    failed = CliRunner().invoke(app, ["search", "--index", str(tmp_path / "ix"), "topic"])
    assert failed.exit_code == 2 and "codes.npy holds" in failed.output and "truncated" in failed.output


# ----------------------------------------------------------------------------- qrels as published
def _beir(folder, qrels_lines, corpus=None, queries=None):
    (folder / "qrels").mkdir(parents=True)
    corpus = corpus or {"d1": "Cats eat fish and mice.", "d2": "Rain falls from clouds.", "d3": "Iron rusts in water."}
    queries = queries or {"q1": "what do cats eat", "q2": "why does iron rust"}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in corpus.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels_lines))
    return folder


def test_graded_and_fractional_judgements_count_as_pytrec_eval_would():
    from maxsim.data.qrels import integer_gains

    assert integer_gains({"q": {"a": 0.5, "b": 1.0, "c": 0.25}}) == {"q": {"a": 2, "b": 4, "c": 1}}
    assert integer_gains({"q": {"a": 2, "b": 1}}) == {"q": {"a": 2, "b": 1}}
    run = {"q1": {"d2": 3.0, "d1": 2.0, "d3": 1.0}}
    half = evaluate_run({"q1": {"d1": 0.5, "d3": 1.0}}, run, ("ndcg@10", "mrr@10", "recall@100"))
    whole = evaluate_run({"q1": {"d1": 1, "d3": 2}}, run, ("ndcg@10", "mrr@10", "recall@100"))
    assert half == pytest.approx(whole)  # the same grades up to a common factor
    assert half["mrr@10"] == pytest.approx(0.5) and half["recall@100"] == 1.0
    graded = (1 / math.log2(3) + 2 / math.log2(4)) / (2 + 1 / math.log2(3))
    assert half["ndcg@10"] == pytest.approx(graded, abs=1e-4)


def test_eval_keeps_fractional_judgements(tmp_path):
    beir = _beir(tmp_path / "beir", ["q1\td1\t0.5", "q2\td3\t0.5"])
    result = CliRunner().invoke(app, ["eval", "--model", "bm25", "--data", str(beir)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["ndcg@10"] == 1.0  # both queries evaluated; was an error (all 0.5 read as 0)
    mixed = _beir(tmp_path / "mixed", ["q1\td1\t1", "q2\td3\t0.5"])
    from maxsim.data.training_folder import read_beir_split

    assert read_beir_split(mixed, "test")[2] == {"q1": {"d1": 1.0}, "q2": {"d3": 0.5}}


def test_qrels_naming_documents_the_corpus_lacks_warn_unless_strict(tmp_path, caplog):
    beir = _beir(tmp_path / "beir", ["q1\td1\t1", "q1\td404\t1", "q2\td3\t1"])
    result = CliRunner().invoke(app, ["eval", "--model", "bm25", "--data", str(beir)])
    assert result.exit_code == 0, result.output
    assert "1 relevant judgements name documents that corpus.jsonl lacks" in caplog.text
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["recall@100"] == 0.75  # q1 found 1 of its 2, the missing one counts as unretrieved
    strict = CliRunner().invoke(app, ["eval", "--model", "bm25", "--data", str(beir), "--strict"])
    assert strict.exit_code == 2 and 'test.tsv:3: document "d404" is not in corpus.jsonl' in strict.output


def test_eval_checks_k_output_and_ids_before_the_work(tmp_path):
    beir = _beir(tmp_path / "beir", ["q1\td1\t1"])
    for k in ("-1", "0"):
        result = CliRunner().invoke(app, ["eval", "--model", "base", "--data", str(beir), "--k", k])
        assert result.exit_code == 2 and "--k must be 1 or more" in result.output
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(app, ["eval", "--model", "base", "--data", str(beir), "--output", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
    spaced = _beir(tmp_path / "spaced", ["q1\tdoc 1\t1"], corpus={"doc 1": "Cats eat fish.", "d2": "Rain."})
    result = CliRunner().invoke(app, ["eval", "--model", "nope", "--data", str(spaced), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'doc 1' holds whitespace" in result.output  # before loading any model
    assert not (tmp_path / "o").exists()
