import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maxsim.data.errors import DataError
from maxsim.data.mining import BM25Miner, DenseMiner
from maxsim.data.prepare import prepare_training_data
from maxsim.data.training_folder import TrainingData, document_text
from maxsim.ids import stable_id

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"

PAIRS = [
    ("what do cats eat", "Cats eat fish and mice."),
    ("how do bees make honey", "Bees make honey from nectar."),
    ("what do cats eat", "Cats also eat dry food."),  # a second positive for the same query
]
DOCS = ["Rain falls from clouds.", "Iron rusts in water.", "Stars shine by fusion.", "Bread is baked in ovens."]


def _read(folder):
    def load(name):
        return [json.loads(x) for x in (folder / name).read_text().splitlines()]
    queries = {q["_id"]: q["text"] for q in load("queries.jsonl")}
    corpus = {d["_id"]: document_text(d["title"], d["text"]) for d in load("corpus.jsonl")}
    triples = [(queries[t["query_id"]], corpus[t["positive_ids"][0]], sorted(corpus[n] for n in t["negative_ids"]))
               for t in load("triples.jsonl")]
    return queries, corpus, triples


def _write_table(path: Path, rows: list[dict]):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix in (".csv", ".tsv"):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if path.suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


def test_stable_ids_from_normalised_text():
    assert stable_id("what do  cats\neat ", "q") == stable_id("what do cats eat", "q")
    assert stable_id("what do cats eat", "q") != stable_id("what do cats eat?", "q")
    assert stable_id("x", "q") == "q" + "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"[:16]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_pairs_from_every_file_format(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    _write_table(path, [{"query": q, "positive": p} for q, p in PAIRS])
    manifest = prepare_training_data([path], tmp_path / "out", all_documents=DOCS, mine="none", negatives=2)
    queries, corpus, triples = _read(tmp_path / "out")
    assert sorted(queries.values()) == ["how do bees make honey", "what do cats eat"]
    assert len(corpus) == 7
    assert sorted((q, p) for q, p, _ in triples) == sorted(PAIRS)
    for q, _, negs in triples:
        assert len(negs) == 2
        own = {pp for qq, pp in PAIRS if qq == q}
        assert not set(negs) & own  # never one of the query's own positives
    assert manifest["counts"] == {"queries": 2, "documents": 7, "positives": 3, "given_negatives": 0,
                                  "mined_negatives": 4, "triples": 3, "dev_queries": 0}
    assert manifest["merged"] == {"duplicate queries": 1}
    assert manifest["inputs"][0]["kind"] == "pairs" and len(manifest["inputs"][0]["sha256"]) == 64


def test_labelled_pairs_triplets_and_python_lists(tmp_path):
    labelled = tmp_path / "labelled.csv"
    _write_table(labelled, [
        {"query": "what do cats eat", "passage": "Cats eat fish and mice.", "label": "yes"},
        {"query": "what do cats eat", "passage": "Iron rusts in water.", "label": "no"},
    ])
    triplets = tmp_path / "triplets.jsonl"
    _write_table(triplets, [{"query": "how do bees make honey", "positive": ["Bees make honey from nectar."],
                             "negative": ["Rain falls from clouds.", "Stars shine by fusion."]}])
    python_rows = [("why does iron rust", "Iron rusts in water.", 1), ("why does iron rust", "Bread is baked in ovens.", 0)]
    manifest = prepare_training_data([labelled, triplets, python_rows], tmp_path / "out", mine="none", negatives=0,
                                     positive_labels=("yes", "1"), negative_labels=("no", "0"))
    _, _, triples = _read(tmp_path / "out")
    assert sorted(triples) == sorted([
        ("what do cats eat", "Cats eat fish and mice.", ["Iron rusts in water."]),
        ("how do bees make honey", "Bees make honey from nectar.", ["Rain falls from clouds.", "Stars shine by fusion."]),
        ("why does iron rust", "Iron rusts in water.", ["Bread is baked in ovens."]),
    ])
    assert [i["kind"] for i in manifest["inputs"]] == ["labelled", "triplets", "labelled"]
    # RAGatouille-style raw_data: one list of pairs
    prepare_training_data(list(PAIRS), tmp_path / "ragatouille", all_documents=DOCS, mine="none", negatives=1)
    assert len(_read(tmp_path / "ragatouille")[2]) == 3


def test_given_ids_are_kept_and_merged(tmp_path):
    rows = [{"query_id": "Q1", "query": "what do cats eat", "positive_id": "D1", "positive": "Cats eat fish."},
            {"query_id": "Q1", "query": "what do cats eat", "positive_id": "D2", "positive": "Cats eat mice."}]
    path = tmp_path / "pairs.jsonl"
    _write_table(path, rows)
    prepare_training_data([path], tmp_path / "out", all_documents=DOCS, mine="none", negatives=1)
    queries, corpus, triples = _read(tmp_path / "out")
    assert list(queries) == ["Q1"] and {"D1", "D2"} <= set(corpus)
    data = TrainingData.load(tmp_path / "out")
    assert data.positives_of()[0] == {data.corpus.index["D1"], data.corpus.index["D2"]}
    rows.append({"query_id": "Q1", "query": "something else", "positive_id": "D3", "positive": "x"})
    _write_table(path, rows)
    with pytest.raises(DataError, match=r'pairs.jsonl:3: id "Q1" was given two different texts'):
        prepare_training_data([path], tmp_path / "out2", all_documents=DOCS, mine="none")


def ranks_without(positions, positives) -> dict[int, int]:
    """1-based rank of each document in a ranking, counted without the query's positives."""
    others = [int(p) for p in positions if p >= 0 and int(p) not in positives]
    return {p: r for r, p in enumerate(others, start=1)}


def test_beir_folder_and_the_rank_window(tmp_path):
    manifest = prepare_training_data([SCIFACT], tmp_path / "out", negatives=5, min_rank=10, max_rank=30)
    assert manifest["counts"]["queries"] == 807  # 809 train queries; 2 repeat another's text
    assert manifest["merged"] == {"queries with the same text under two ids": 2}
    data = TrainingData.load(tmp_path / "out")
    assert len(data.corpus) == 5183
    # every negative sits at ranks 10..30 of BM25's own ranking counted without the query's
    # positives, never a positive of its query
    queries = sorted({ex.query for ex in data.examples})
    miner = BM25Miner(data.corpus.texts)
    ranking = miner.rank([data.queries.texts[q] for q in queries], 100)
    row_of = {q: i for i, q in enumerate(queries)}
    positives = data.positives_of()
    for ex in data.examples:
        ranks = ranks_without(ranking.positions[row_of[ex.query]], positives[ex.query])
        assert len(ex.negatives) == 5
        assert all(10 <= ranks[n] <= 30 for n in ex.negatives)
        assert not set(ex.negatives) & positives[ex.query]


def test_no_query_gets_its_own_positive_as_negative_even_when_given(tmp_path):
    # q2's given negative is q1's positive (fine) and q1's own positive (must be dropped for q1)
    rows = [("what do cats eat", "Cats eat fish.", "Cats eat mice."),
            ("what do cats eat", "Cats eat mice.", "Rain falls from clouds."),
            ("why does iron rust", "Iron rusts in water.", "Cats eat fish.")]
    manifest = prepare_training_data([rows], tmp_path / "out", all_documents=DOCS, mine="bm25", negatives=3,
                                     min_rank=1, max_rank=10)
    data = TrainingData.load(tmp_path / "out")
    positives = data.positives_of()
    for ex in data.examples:
        assert not set(ex.negatives) & positives[ex.query]
    assert manifest["dropped"]["given negative that is also a positive"] == 1
    iron = data.queries.index[next(q for q, t in zip(data.queries.ids, data.queries.texts) if "iron" in t)]
    assert data.corpus.index[stable_id("Cats eat fish.", "d")] in next(e for e in data.examples if e.query == iron).negatives


def test_small_corpus_shrinks_the_window_and_says_so(tmp_path):
    manifest = prepare_training_data([list(PAIRS)], tmp_path / "out", all_documents=DOCS, negatives=2)
    assert manifest["mining"]["window_requested"] == [10, 100]
    # 7 documents: the bees query has 6 others (ranks [5, 6] for two negatives), the cats query,
    # with two positives, 5 (ranks [4, 5])
    shrunk = manifest["mining"]["smaller_windows"]
    assert shrunk["queries"] == manifest["counts"]["queries"] == 2 and shrunk["smallest"] == [4, 5]
    assert shrunk["min_rank_lowered_by"] == {"mean": 5.5, "max": 6}
    assert shrunk["max_rank_lowered_by"] == {"mean": 94.5, "max": 95}
    assert "too few documents besides their positives" in manifest["mining"]["notes"][0]


def test_one_query_with_many_positives_keeps_every_other_querys_window(tmp_path):
    # one query with 250 positives among 320 documents; ten with one each
    heavy = [("which passages discuss the heavy subject", f"heavy subject passage {i} on topic{i % 20}")
             for i in range(250)]
    light = [(f"question about topic{j} and its kind", f"answer on topic{j} of its kind") for j in range(10)]
    filler = [f"filler on topic{i % 20} of some kind number {i}" for i in range(60)]
    manifest = prepare_training_data([heavy + light], tmp_path / "out", all_documents=filler, negatives=10)
    assert manifest["counts"]["documents"] == 320
    # only the heavy query is short of documents besides its positives (70): ranks [10, 70]
    assert manifest["mining"]["smaller_windows"] == {
        "queries": 1, "smallest": [10, 70], "min_rank_lowered_by": {"mean": 0.0, "max": 0},
        "max_rank_lowered_by": {"mean": 30.0, "max": 30}}
    data = TrainingData.load(tmp_path / "out")
    positives = data.positives_of()
    queries = sorted(positives)
    ranking = BM25Miner(data.corpus.texts).rank([data.queries.texts[q] for q in queries], 320)
    for i, q in enumerate(queries):
        ranks = ranks_without(ranking.positions[i], positives[q])
        negatives = {n for ex in data.examples if ex.query == q for n in ex.negatives}
        assert len(negatives) == 10
        assert all(10 <= ranks[n] <= (70 if len(positives[q]) == 250 else 100) for n in negatives)


def test_a_query_with_many_positives_is_noted_and_can_be_capped(tmp_path):
    heavy = [("which passages discuss the heavy subject", f"heavy subject passage {i}") for i in range(30)]
    light = [(f"question about topic{j}", f"answer on topic{j}") for j in range(10)]
    manifest = prepare_training_data([heavy + light], tmp_path / "all", mine="none", negatives=2)
    assert manifest["counts"]["triples"] == 40
    assert any("makes 30 of the 40 training examples (75.0%), the median query 1" in n
               for n in manifest["mining"]["notes"])
    manifest = prepare_training_data([heavy + light], tmp_path / "capped", mine="none", negatives=2,
                                     max_lines_per_query=3, export=("colbert",))
    assert manifest["counts"]["triples"] == 13 and not any("training examples" in n for n in manifest["mining"]["notes"])
    data = TrainingData.load(tmp_path / "capped")
    lines = [ex for ex in data.examples if len(data.positives_of()[ex.query]) == 30]
    assert [len(ex.positives) for ex in lines] == [10, 10, 10]  # every positive kept, spread over 3 lines
    # colbert-ai's lines hold one positive each: all 40 pairs again
    assert len((tmp_path / "capped" / "colbert" / "triples.jsonl").read_text().splitlines()) == 40


def test_same_seed_same_bytes_other_seed_other_negatives(tmp_path):
    args = dict(negatives=4, min_rank=5, max_rank=60, dev_fraction=0.1, export=("colbert",))
    prepare_training_data([SCIFACT], tmp_path / "a", seed=1, **args)
    prepare_training_data([SCIFACT], tmp_path / "b", seed=1, **args)
    prepare_training_data([SCIFACT], tmp_path / "c", seed=2, **args)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 11  # 4 colbert, 3 dev, corpus, queries, triples, manifest
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "triples.jsonl").read_bytes() != (tmp_path / "c" / "triples.jsonl").read_bytes()


def test_dev_fraction_writes_a_beir_dev_folder_that_train_uses(tmp_path, tiny_model_dir):
    from maxsim.data.training_folder import read_beir_split
    from maxsim.training import TrainConfig, Trainer

    rows = [(f"question number {i} about topic {i}", f"answer text {i} for topic {i}") for i in range(20)]
    manifest = prepare_training_data([rows], tmp_path / "data", mine="none", negatives=2, dev_fraction=0.2)
    assert manifest["counts"]["dev_queries"] == 4 and manifest["counts"]["queries"] == 16
    queries, corpus, qrels = read_beir_split(tmp_path / "data" / "dev", "dev")
    train_queries = {json.loads(x)["_id"] for x in (tmp_path / "data" / "queries.jsonl").read_text().splitlines()}
    assert len(qrels) == 4 and not set(qrels) & train_queries and len(corpus) == 20
    cfg = TrainConfig(data=tmp_path / "data", output=tmp_path / "run", base_model=str(tiny_model_dir), dim=16,
                      batch_size=8, max_steps=2, progress_bar=False)
    best = Trainer(cfg).train()
    assert best.name == "best" and json.loads((best / "best.json").read_text())["step"] == 2


def test_colbert_export_round_trips(tmp_path):
    prepare_training_data([SCIFACT], tmp_path / "out", negatives=3, export=("colbert",))
    queries, corpus, triples = _read(tmp_path / "out")
    colbert = tmp_path / "out" / "colbert"
    q_text = dict(line.split("\t", 1) for line in colbert.joinpath("queries.tsv").read_text().splitlines())
    lines = colbert.joinpath("collection.tsv").read_text().splitlines()
    assert [int(line.split("\t", 1)[0]) for line in lines] == list(range(len(lines)))  # pid = line number
    p_text = [line.split("\t", 1)[1] for line in lines]
    rebuilt = []
    for line in colbert.joinpath("triples.jsonl").read_text().splitlines():
        qid, pos, *negs = json.loads(line)
        rebuilt.append((q_text[str(qid)], p_text[pos], sorted(p_text[n] for n in negs)))
    assert rebuilt == triples
    ids = json.loads(colbert.joinpath("ids.json").read_text())
    assert ids["queries"] == list(queries) and ids["documents"] == list(corpus)


def test_false_negative_margin_drops_close_candidates(tmp_path):
    manifest = prepare_training_data([SCIFACT], tmp_path / "out", negatives=5, min_rank=1, max_rank=20,
                                     false_negative_margin=0.9)
    assert manifest["mining"]["dropped_by_false_negative_margin"] > 0
    data = TrainingData.load(tmp_path / "out")
    queries = sorted({ex.query for ex in data.examples})[:50]
    miner = BM25Miner(data.corpus.texts)
    miner.rank([data.queries.texts[q] for q in queries], 20)
    positives = data.positives_of()
    for i, q in enumerate(queries):
        floor = miner.score_of(i, sorted(positives[q])).min()
        negatives = {n for ex in data.examples if ex.query == q for n in ex.negatives}
        assert (miner.score_of(i, sorted(negatives)) <= 0.9 * floor + 1e-5).all()


def test_dense_mining_with_a_colbert_model(tmp_path, tiny_model_dir):
    from maxsim.model import ColBERT

    rows = [(f"question {i} about topic {i}", f"answer {i} for topic {i}") for i in range(12)]
    docs = [f"filler document number {i}" for i in range(30)]
    prepare_training_data([rows], tmp_path / "out", all_documents=docs, mine="dense", miner_model=str(tiny_model_dir),
                          negatives=3, min_rank=3, max_rank=15)
    data = TrainingData.load(tmp_path / "out")
    miner = DenseMiner(ColBERT.from_pretrained(tiny_model_dir), data.corpus.texts)
    queries = sorted({ex.query for ex in data.examples})
    ranking = miner.rank([data.queries.texts[q] for q in queries], 42)
    for i, q in enumerate(queries):
        ranks = ranks_without(ranking.positions[i], data.positives_of()[q])
        ex = next(e for e in data.examples if e.query == q)
        assert len(ex.negatives) == 3 and all(3 <= ranks[n] <= 15 for n in ex.negatives)


@pytest.mark.parametrize(
    "name, content, line, message",
    [
        ("bad.jsonl", '{"query": "a", "positive": "b"}\n{"query": "c", "positive": \n', 2, "malformed JSON"),
        ("bad.csv", "query,passage\nwhat,that\n", 1, "cannot tell the kind"),
        ("bad.tsv", "query\tpositive\nwhat\tthat\n \tother\n", 3, "the query is empty"),
        ("bad.csv", "query,passage,label\na,b,1\nc,d,maybe\n", 3, "label 'maybe' is neither"),
        ("bad.jsonl", '{"query": "a", "positive": ""}\n', 1, "the passage is empty"),
        ("bad.jsonl", '{"query": "a", "positive": "b"}\n{"query": "a", "query": "b", "positive": "c"}\n', 2,
         'the key "query" appears twice'),
        ("bad.jsonl", '{"query": "a", "positive": "b", "meta": {"x": 1, "x": 2}}\n', 1, 'the key "x" appears twice'),
        ("bad.csv", 'query,positive\na,b\n"c,d\ne,f\ng,h\n', 3, "a quoted field opens on this line and is never"),
        ("bad.csv", 'query,positive\na,"b\nc,d\ne,f\n', 2, "a quoted field opens on this line and is never"),
        ("bad.csv", 'query,positive\na,"two\nlines",x\nc,d\n', 2, "3 columns where the header has 2"),
    ],
)
def test_bad_input_names_the_file_and_line(tmp_path, name, content, line, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        prepare_training_data([path], tmp_path / "out", all_documents=DOCS, mine="none")
    assert str(err.value).startswith(f"{path}:{line}: ") and message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written before the input is clean


def test_qrels_id_absent_from_corpus_and_skip_invalid(tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "Cats eat fish."}\n{"_id": "d2", "text": "Rain falls."}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "what do cats eat"}\n{"_id": "q2", "text": "rain"}\n')
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n")
    with pytest.raises(DataError, match=r'train.tsv:3: document "d9" is not in corpus.jsonl'):
        prepare_training_data([beir], tmp_path / "out", mine="none", negatives=1)
    manifest = prepare_training_data([beir], tmp_path / "out", mine="none", negatives=1, skip_invalid=True)
    assert manifest["dropped"] == {"qrels id absent from corpus": 1}
    assert manifest["counts"]["triples"] == 1


def test_cli_prepare(tmp_path):
    from typer.testing import CliRunner

    from maxsim.cli import app

    path = tmp_path / "pairs.jsonl"
    _write_table(path, [{"query": q, "positive": p} for q, p in PAIRS])
    docs = tmp_path / "docs.jsonl"
    _write_table(docs, [{"text": t} for t in DOCS])
    result = CliRunner().invoke(app, ["prepare", str(path), "--corpus", str(docs), "--output", str(tmp_path / "out"),
                                      "--mine", "bm25", "--negatives", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "out")
    assert "2 queries, 7 documents" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["triples"] == 3 and np.isclose(manifest["settings"]["negatives"], 2)
    bad = CliRunner().invoke(app, ["prepare", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "file not found" in bad.output


def test_dense_mining_through_an_index_agrees_with_exact(tmp_path, tiny_model_dir):
    from maxsim.data.mining import IndexMiner
    from maxsim.model import ColBERT

    rows = [(f"question {i} about topic {i}", f"answer {i} for topic {i}") for i in range(12)]
    docs = [f"filler document number {i} on subject {i % 5}" for i in range(60)]
    manifest = prepare_training_data([rows], tmp_path / "out", all_documents=docs, mine="dense",
                                     miner_model=str(tiny_model_dir), dense_search="index", negatives=3,
                                     min_rank=2, max_rank=15)
    assert manifest["settings"]["dense_search"] == "index"
    assert any("compressed index" in note for note in manifest["mining"]["notes"])
    data = TrainingData.load(tmp_path / "out")
    assert all(len(ex.negatives) == 3 and not set(ex.positives) & set(ex.negatives) for ex in data.examples)

    model = ColBERT.from_pretrained(tiny_model_dir)
    queries = [data.queries.texts[q] for q in sorted({ex.query for ex in data.examples})]
    exact = DenseMiner(model, data.corpus.texts).rank(queries, 15)
    indexed_miner = IndexMiner(model, data.corpus.texts)
    indexed = indexed_miner.rank(queries, 15)
    overlap = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(exact.positions, indexed.positions)])
    assert overlap >= 0.7, overlap
    # scores of given documents are exact MaxSim over the decompressed vectors: close to exact
    exact_scores = DenseMiner(model, data.corpus.texts)
    exact_scores.rank(queries, 15)
    for i in range(3):
        positions = exact.positions[i][:5].tolist()
        assert np.allclose(indexed_miner.score_of(i, positions), exact_scores.score_of(i, positions), rtol=0.03)


# ----------------------------------------------------------------------------- nothing lost, nothing silent
def _pairs_file(tmp_path, name="pairs.jsonl"):
    path = tmp_path / name
    _write_table(path, [{"query": q, "positive": p} for q, p in PAIRS])
    return path


def test_a_second_prepare_replaces_only_its_own_files(tmp_path):
    out = tmp_path / "out"
    prepare_training_data([_pairs_file(tmp_path)], out, all_documents=DOCS, mine="none", negatives=2,
                          dev_fraction=0.5, export=("colbert",))
    (out / "my_notes.txt").write_text("notes")
    (out / "run1" / "checkpoints" / "step-2").mkdir(parents=True)
    (out / "run1" / "checkpoints" / "step-2" / "model.bin").write_text("weights")
    manifest = prepare_training_data([[("why is the sky blue", "Light scatters.")]], out, all_documents=DOCS,
                                     mine="none", negatives=2)
    assert (out / "my_notes.txt").read_text() == "notes"
    assert (out / "run1" / "checkpoints" / "step-2" / "model.bin").read_text() == "weights"
    assert not (out / "dev").exists() and not (out / "colbert").exists()  # the earlier run's, gone
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert list(_read(out)[0].values()) == ["why is the sky blue"]
    assert not list(out.glob(".tmp-*")) and not (out / ".prepare-incomplete").exists()
    TrainingData.load(out)


def test_an_interrupted_replacement_is_refused_by_train_and_redone_by_prepare(tmp_path):
    from maxsim.data import training_output as prepare_module

    out = tmp_path / "out"
    prepare_training_data([_pairs_file(tmp_path)], out, all_documents=DOCS, mine="none", negatives=2)
    real_replace = prepare_module.os.replace

    def die_at_corpus(src, dst):
        if Path(dst).name == "corpus.jsonl":
            raise KeyboardInterrupt  # killed half-way through the swap
        real_replace(src, dst)

    prepare_module.os.replace = die_at_corpus
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_training_data([[("why is the sky blue", "Light scatters.")]], out, all_documents=DOCS,
                                  mine="none", negatives=2)
    finally:
        prepare_module.os.replace = real_replace
    with pytest.raises(DataError, match="did not finish"):
        TrainingData.load(out)
    prepare_training_data([[("why is the sky blue", "Light scatters.")]], out, all_documents=DOCS, mine="none",
                          negatives=2)
    assert list(TrainingData.load(out).queries.texts) == ["why is the sky blue"]


def test_an_input_inside_the_output_and_an_output_file_are_refused(tmp_path):
    out = tmp_path / "out"
    prepare_training_data([_pairs_file(tmp_path)], out, all_documents=DOCS, mine="none", negatives=2)
    inside = _pairs_file(out, "my_pairs.jsonl")
    with pytest.raises(FileExistsError, match="inside the output folder"):
        prepare_training_data([inside], out, all_documents=DOCS, mine="none")
    assert inside.is_file()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        prepare_training_data([_pairs_file(tmp_path)], tmp_path / "afile", mine="none")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "queries.jsonl").write_text("mine\n")
    with pytest.raises(FileExistsError, match="not a maxsim prepare output"):
        prepare_training_data([_pairs_file(tmp_path)], tmp_path / "theirs", mine="none")
    assert (tmp_path / "theirs" / "queries.jsonl").read_text() == "mine\n"


def _beir(folder, queries, qrels, corpus=None):
    (folder / "qrels").mkdir(parents=True)
    corpus = corpus or {"d1": "Cats eat fish.", "d2": "Rain falls.", "d3": "Iron rusts.", "d4": "Stars shine."}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in corpus.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return folder


def test_a_repeated_beir_query_id_is_an_error_as_in_eval(tmp_path):
    beir = _beir(tmp_path / "beir", [("0", "what do cats eat"), ("1", "rain"), ("0", "why do volcanoes erupt")],
                 [("0", "d1", 1), ("1", "d2", 1)])
    with pytest.raises(DataError, match=r'queries.jsonl:3: duplicate id "0" \(first on line 1\)'):
        prepare_training_data([beir], tmp_path / "out", mine="none", negatives=1)


def test_fractional_and_graded_qrels_are_positives_when_above_zero(tmp_path):
    beir = _beir(tmp_path / "beir", [("q1", "what do cats eat"), ("q2", "rain"), ("q3", "iron")],
                 [("q1", "d1", "0.5"), ("q2", "d2", "2"), ("q3", "d3", "0"), ("q3", "d4", "-1")])
    manifest = prepare_training_data([beir], tmp_path / "out", mine="none", negatives=1)
    assert manifest["counts"]["positives"] == 2 and manifest["counts"]["queries"] == 2


def test_the_dev_slice_keeps_the_grades_of_graded_qrels(tmp_path):
    queries = [(f"q{i}", f"question {i}") for i in range(10)]
    corpus = {f"d{i}": f"passage {i}" for i in range(20)}
    qrels = [(f"q{i}", f"d{i}", 2) for i in range(10)] + [(f"q{i}", f"d{i + 10}", "0.5") for i in range(10)]
    beir = _beir(tmp_path / "beir", queries, qrels, corpus)
    prepare_training_data([beir], tmp_path / "out", mine="none", negatives=1, dev_fraction=0.5)
    lines = (tmp_path / "out" / "dev" / "qrels" / "dev.tsv").read_text().splitlines()[1:]
    grades = {(q, d): g for q, d, g in (line.split("\t") for line in lines)}
    assert len(grades) == 10 and all(g == ("2" if int(d[1:]) < 10 else "0.5") for (_, d), g in grades.items())


def test_ids_with_tabs_or_line_breaks_are_refused(tmp_path):
    path = tmp_path / "tabids.jsonl"
    _write_table(path, [{"query": "a question", "query_id": "q\t0", "positive": "an answer"}])
    with pytest.raises(DataError, match=r"tabids.jsonl:1: id 'q\\t0' holds a tab"):
        prepare_training_data([path], tmp_path / "out", all_documents=DOCS, mine="none")


def test_byte_order_mark_long_fields_bad_bytes_and_fake_parquet(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffquery,positive\nwhat do cats eat,Cats eat fish.\n".encode())
    prepare_training_data([bom], tmp_path / "o1", all_documents=DOCS, mine="none", negatives=1)
    big = tmp_path / "big.csv"
    big.write_text("query,positive\nwhat do cats eat," + "fish " * 60_000 + "\n")  # a 300 KB field
    prepare_training_data([big], tmp_path / "o2", all_documents=DOCS, mine="none", negatives=1)
    for name in ("latin1.csv", "latin1.jsonl"):
        path = tmp_path / name
        head = "query,positive\n" if name.endswith(".csv") else ""
        line = "caf\xe9,coffee\n" if name.endswith(".csv") else '{"query": "caf\xe9", "positive": "coffee"}\n'
        path.write_bytes((head + ("a,b\n" if head else '{"query": "a", "positive": "b"}\n')).encode() +
                         line.encode("latin-1"))
        with pytest.raises(DataError, match=rf"{name}:{3 if head else 2}: byte 0xe9 .* not valid UTF-8"):
            prepare_training_data([path], tmp_path / "o3", all_documents=DOCS, mine="none")
    fake = tmp_path / "fake.parquet"
    fake.write_text("query,positive\n")
    with pytest.raises(DataError, match=r"fake.parquet: not a readable Parquet file"):
        prepare_training_data([fake], tmp_path / "o4", mine="none")


def test_a_beir_folder_as_extra_corpus(tmp_path):
    beir = _beir(tmp_path / "beir", [("q1", "what do cats eat")], [("q1", "d1", 1)])
    manifest = prepare_training_data([_pairs_file(tmp_path)], tmp_path / "out", corpus=[beir], mine="none",
                                     negatives=1)
    assert manifest["counts"]["documents"] == 3 + 4


def test_dense_mining_in_query_blocks_equals_one_block(tmp_path, tiny_model_dir):
    """Many queries go in blocks with a running top-k (memory bounded); the ranking is the same."""
    from maxsim.model import ColBERT

    model = ColBERT.from_pretrained(tiny_model_dir)
    docs = [f"document {i} about subject {i % 7} and topic {i % 3}" for i in range(40)]
    queries = [f"question about subject {i % 7} topic {i % 3}" for i in range(9)]
    positives = [[i, i + 9] for i in range(9)]
    one = DenseMiner(model, docs, batch_size=8).rank(queries, 12, positives)
    blocks = DenseMiner(model, docs, batch_size=8, query_block=4).rank(queries, 12, positives)
    assert np.allclose(one.scores, blocks.scores, atol=0.05)  # later blocks read float16 vectors
    assert (one.positions[:, :3] == blocks.positions[:, :3]).mean() > 0.9
    miner = DenseMiner(model, docs)
    miner.rank(queries, 12)
    floors = [miner.score_of(i, p).min() for i, p in enumerate(positives)]
    assert np.allclose(one.positive_floor, floors, atol=1e-4)


def test_a_full_disk_is_one_line_that_says_so(tmp_path, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from maxsim.cli import app
    from maxsim.data import prepare as prepare_module

    def full(output, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(output / "corpus.jsonl"))

    monkeypatch.setattr(prepare_module, "write_output", full)
    result = CliRunner().invoke(app, ["prepare", str(_pairs_file(tmp_path)), "--output", str(tmp_path / "out"),
                                      "--mine", "none"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no space left on the device while writing" in result.output and "free some space" in result.output


def _one_query_reference(positions, scores, positives, low, high, margin, floor):
    """One query's candidates the slow way: its ranking without padding or positives, ranks
    ``low..high`` (1-based) of what is left, then those within the margin."""
    others = [(p, s) for p, s in zip(positions.tolist(), scores.tolist()) if p >= 0 and p not in set(positives)]
    window = others[low - 1 : high]
    kept = [p for p, s in window if margin is None or s <= margin * floor]
    return kept, len(window) - len(kept)


@pytest.mark.parametrize("margin", [None, 0.8])
def test_block_sampling_draws_within_each_querys_own_window(margin):
    from maxsim.data.mining import query_keys, sample_negatives
    from maxsim.ranking import Ranking

    rng = np.random.default_rng(0)
    n_queries, width, n = 40, 30, 4
    positions = np.stack([rng.permutation(200)[:width] for _ in range(n_queries)])
    scores = -np.sort(-rng.random((n_queries, width)), axis=1).astype(np.float32)
    positions[5, 20:], scores[5, 20:] = -1, -np.inf  # a short row
    positives = [sorted(rng.choice(positions[q][:12], size=int(rng.integers(1, 6)), replace=False).tolist())
                 for q in range(n_queries)]
    windows = np.array([[int(rng.integers(1, 5)), int(rng.integers(6, 25))] for _ in range(n_queries)])
    floor = rng.random(n_queries).astype(np.float32)
    floor[3] = np.nan  # (a query whose floor is unknown keeps no candidate under a margin)
    ranking = Ranking(positions, scores, floor)
    ids = [f"q{i}" for i in range(n_queries)]
    chosen, dropped = sample_negatives(ranking, positives, windows, n, query_keys(7, ids), margin)
    for q in range(n_queries):
        kept, lost = _one_query_reference(positions[q], scores[q], positives[q], *windows[q], margin, floor[q])
        assert dropped[q] == lost
        assert len(chosen[q]) == min(n, len(kept)) and set(chosen[q].tolist()) <= set(kept)
        assert chosen[q].tolist() == [p for p in kept if p in set(chosen[q].tolist())]  # in rank order
    # a query's draw depends on the seed and its id only, not on the block it came in
    again, _ = sample_negatives(Ranking(positions[::-1], scores[::-1], floor[::-1]), positives[::-1],
                                windows[::-1], n, query_keys(7, ids[::-1]), margin)
    assert [c.tolist() for c in again[::-1]] == [c.tolist() for c in chosen]
    other, _ = sample_negatives(ranking, positives, windows, n, query_keys(8, ids), margin)
    assert [c.tolist() for c in other] != [c.tolist() for c in chosen]


def test_block_sampling_is_uniform_over_the_window():
    from maxsim.data.mining import query_keys, sample_negatives
    from maxsim.ranking import Ranking

    n_queries, width = 4000, 20
    positions = np.tile(np.arange(width), (n_queries, 1))
    scores = np.tile(-np.arange(width, dtype=np.float32), (n_queries, 1))
    chosen, _ = sample_negatives(Ranking(positions, scores), [[] for _ in range(n_queries)],
                                 np.tile([1, width], (n_queries, 1)), 5, query_keys(0, [str(i) for i in range(n_queries)]))
    counts = np.bincount(np.concatenate(chosen), minlength=width)
    expected = n_queries * 5 / width  # 1000 each
    assert counts.sum() == n_queries * 5
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)  # each rank as often, to noise
