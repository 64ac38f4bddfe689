"""Distillation: teacher scores in the training folder, the KL loss, many documents per query."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_training_folder, write_jsonl

from maxsim.data.errors import DataError
from maxsim.data.training_folder import TrainingData
from maxsim.losses import distillation_loss


def _interrupt_scoring_at_chunk(monkeypatch, teacher_module, n: int):
    """Make scoring stop with KeyboardInterrupt as it starts its ``n``-th chunk of lines; returns
    the real chunk scorer, to put back."""
    real, calls = teacher_module._score_lines, []

    def die_on_chunk_n(*args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(teacher_module, "_score_lines", die_on_chunk_n)
    return real


def test_kl_by_hand_with_a_padding_candidate():
    student = torch.tensor([[1.0, 0.0, 5.0]])
    teacher = torch.tensor([[0.0, 0.0, -3.0]])
    mask = torch.tensor([[True, True, False]])  # the third candidate is padding
    # teacher: softmax(0, 0) = (1/2, 1/2); student: softmax(1, 0) = (e/(1+e), 1/(1+e))
    e = np.e
    expected = 0.5 * (np.log(0.5) - np.log(e / (1 + e))) + 0.5 * (np.log(0.5) - np.log(1 / (1 + e)))
    assert distillation_loss(student, teacher, mask).item() == pytest.approx(expected, rel=1e-6)
    # a temperature flattens or sharpens the teacher: T=2 on (2, 0) is the same as T=1 on (1, 0)
    assert distillation_loss(student[:, :2], torch.tensor([[2.0, 0.0]]), teacher_temperature=2.0).item() == \
        pytest.approx(distillation_loss(student[:, :2], torch.tensor([[1.0, 0.0]])).item(), rel=1e-6)


def test_equals_pylates_and_colbert_ais_distillation_losses():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 16, generator=g) * 5, torch.randn(6, 16, generator=g) * 3
    # PyLate 1.6 Distillation (normalize_scores=False): KLDivLoss(batchmean, log_target=True) of
    # log_softmax(student) against log_softmax(teacher)
    pylate = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)(
        torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1))
    assert distillation_loss(student, teacher).item() == pytest.approx(pylate.item(), rel=1e-6)
    # colbert-ai: the teacher's scores times distillation_alpha, then the same KL
    alpha = 0.5
    colbert = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)(
        torch.log_softmax(student, dim=-1), torch.log_softmax(teacher * alpha, dim=-1))
    assert distillation_loss(student, teacher, teacher_temperature=1 / alpha).item() == \
        pytest.approx(colbert.item(), rel=1e-6)


def scored_folder(folder, n_negatives=19, seed=0):
    """The tiny dataset with every other document as a negative and teacher scores: the positive
    high, the negatives spread below it."""
    make_training_folder(folder)
    rng = np.random.default_rng(seed)
    docs = [json.loads(x)["_id"] for x in (folder / "corpus.jsonl").read_text().splitlines()]
    rows = []
    for i in range(16):
        negatives = [d for d in docs if d != f"d{i}"][:n_negatives]
        scores = [12.0] + [float(x) for x in rng.uniform(0, 8, len(negatives))]
        rows.append({"query_id": f"q{i}", "positive_ids": [f"d{i}"], "negative_ids": negatives, "scores": scores})
    write_jsonl(folder / "triples.jsonl", rows)
    return folder


@pytest.mark.parametrize("bad, message", [
    ({"scores": [1.0]}, "has 1 numbers for 3 documents"),
    ({"scores": [1.0, "high", 2.0]}, "not a number"),
    ({"scores": [1.0, float("nan"), 2.0]}, "not a number"),
    ({"scores": "1 2 3"}, "must be a list of numbers"),
])
def test_bad_scores_name_the_file_and_line(tmp_path, bad, message):
    folder = make_training_folder(tmp_path / "data", extra_negatives=1)
    lines = [json.loads(x) for x in (folder / "triples.jsonl").read_text().splitlines()]
    for line in lines:
        line["scores"] = [1.0] * (len(line["positive_ids"]) + len(line["negative_ids"]))
    lines[2].update(bad)
    (folder / "triples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DataError, match=message) as info:
        TrainingData.load(folder)
    assert str(info.value).startswith(f"{folder / 'triples.jsonl'}:3:")


def test_scores_on_some_lines_only_is_an_error(tmp_path):
    folder = scored_folder(tmp_path / "data")
    lines = [json.loads(x) for x in (folder / "triples.jsonl").read_text().splitlines()]
    del lines[4]["scores"]
    write_jsonl(folder / "triples.jsonl", lines)
    with pytest.raises(DataError, match=r"triples.jsonl:5: no \"scores\""):
        TrainingData.load(folder)


def _gradients(model_dir, folder, chunk, objective, nway=16):
    from maxsim.data.batches import TokenCache, build_batch
    from maxsim.model import ColBERT
    from maxsim.training import TrainConfig
    from maxsim.training.distributed import Context
    from maxsim.training.trainer import forward_backward

    torch.manual_seed(0)
    model = ColBERT.from_pretrained(model_dir, dim=16, query_maxlen=12, doc_maxlen=24, seed=3)
    model.train()
    data = TrainingData.load(folder, nway)
    cfg = TrainConfig(data=folder, output="unused", nway=nway, grad_cache_chunk=chunk, loss=objective,
                      teacher_temperature=2.0)
    batch = build_batch(model, data, TokenCache(model, data), data.positives_of(), np.arange(4), nway, 0, 0)
    stats = forward_backward(model, batch, Context(), cfg, 0, 4, objective)
    return stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["distillation", "combined"])
def test_chunked_and_unchunked_gradients_are_equal_at_nway_16(no_dropout_dir, tmp_path, objective, monkeypatch):
    monkeypatch.setenv("MAXSIM_CPU_BF16", "0")  # compared to 1e-5: float32 on every CPU
    folder = scored_folder(tmp_path / "data")
    plain_stats, plain = _gradients(no_dropout_dir, folder, None, objective)
    cached_stats, cached = _gradients(no_dropout_dir, folder, 8, objective)
    assert cached_stats.distillation == pytest.approx(plain_stats.distillation, rel=1e-5)
    worst = max((plain[k] - cached[k]).abs().max().item() for k in plain)
    assert worst < 1e-5, worst


@pytest.fixture
def no_dropout_dir(tmp_path, tiny_model_dir):
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_model_dir)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    folder = tmp_path / "no-dropout"
    BertModel.from_pretrained(tiny_model_dir, config=config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    return folder


def test_a_short_run_on_scores_distils_and_its_loss_falls(tiny_model_dir, tmp_path, caplog):
    from maxsim.training import TrainConfig, Trainer

    folder = scored_folder(tmp_path / "data", n_negatives=7)
    config = TrainConfig(data=folder, output=tmp_path / "run", base_model=str(tiny_model_dir), dim=16,
                         query_maxlen=12, doc_maxlen=24, nway=8, batch_size=4, learning_rate=3e-3, epochs=12,
                         progress_bar=False, seed=1)
    with caplog.at_level("INFO"):
        Trainer(config).train()
    assert "loss: distillation (the data has teacher scores)" in caplog.text
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert all(r["loss"] == pytest.approx(r["loss_distillation"]) for r in rows)
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses


def test_distillation_without_scores_is_refused(tiny_model_dir, training_folder, tmp_path):
    from maxsim.training import TrainConfig, Trainer

    config = TrainConfig(data=training_folder, output=tmp_path / "run", base_model=str(tiny_model_dir), dim=16,
                         loss="distillation", max_steps=1, batch_size=4, progress_bar=False)
    with pytest.raises(DataError, match="needs teacher scores"):
        Trainer(config).train()


def _lines(folder):
    return [json.loads(x) for x in (folder / "triples.jsonl").read_text().splitlines()]


def test_score_with_bm25_writes_its_scores_and_trains(training_folder, tmp_path, tiny_model_dir):
    from maxsim.data.mining import BM25Miner
    from maxsim.data.teacher import score_training_folder

    out = tmp_path / "scored"
    manifest = score_training_folder(training_folder, "bm25", out, show_progress=False, chunk_lines=5)
    assert manifest["teacher_kind"] == "bm25" and manifest["lines"] == 16
    data = TrainingData.load(out, 2)
    assert data.has_scores
    line = _lines(out)[3]
    corpus = TrainingData.load(training_folder, 1).corpus
    miner = BM25Miner(corpus.texts)
    miner.rank([TrainingData.load(training_folder, 1).queries.texts[3]], 1)
    ids = line["positive_ids"] + line["negative_ids"]
    expected = miner.score_of(0, [corpus.index[i] for i in ids])
    assert line["scores"] == pytest.approx([round(float(x), 6) for x in expected], abs=1e-6)
    assert (out / "queries.jsonl").read_bytes() == (training_folder / "queries.jsonl").read_bytes()


def test_score_with_a_colbert_teacher_is_its_maxsim(training_folder, tmp_path, tiny_model_dir):
    from maxsim.data.teacher import score_training_folder
    from maxsim.model import ColBERT
    from maxsim.scoring import maxsim

    teacher = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24).save(tmp_path / "teacher")
    out = tmp_path / "scored"
    score_training_folder(training_folder, str(teacher), out, show_progress=False)
    model = ColBERT.from_pretrained(teacher)
    model.eval()
    data = TrainingData.load(training_folder, 1)
    lines = _lines(out)
    assert len(lines) > 1
    for line in lines:  # each document is encoded once for all the lines it is in: the same scores
        q, qm = model.encode_queries([data.queries.texts[data.queries.index[line["query_id"]]]], padded=True)
        d, dm = model.encode_documents([data.corpus.texts[data.corpus.index[i]]
                                        for i in line["positive_ids"] + line["negative_ids"]], padded=True)
        assert line["scores"] == pytest.approx(maxsim(q, qm, d, dm)[0].tolist(), abs=1e-5)


def test_score_with_a_cross_encoder_is_its_logit_and_candidates_keep_positives(training_folder, tmp_path,
                                                                               tiny_model_dir):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from maxsim.data.teacher import score_training_folder

    config = BertConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    torch.manual_seed(0)
    folder = tmp_path / "cross"
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    out = tmp_path / "scored"
    score_training_folder(training_folder, str(folder), out, candidates=6, show_progress=False)
    lines = _lines(out)
    assert all(len(x["positive_ids"]) + len(x["negative_ids"]) >= 6 for x in lines)
    assert all(f"d{i}" in x["positive_ids"] for i, x in enumerate(lines))
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = TrainingData.load(training_folder, 1)
    text = data.corpus.texts[data.corpus.index[lines[1]["positive_ids"][0]]]
    with torch.no_grad():
        logit = model(**tokenizer([data.queries.texts[1]], [text], return_tensors="pt")).logits[0, 0].item()
    assert lines[1]["scores"][0] == pytest.approx(logit, abs=1e-5)


def test_a_killed_scoring_run_goes_on_and_gives_the_same_folder(training_folder, tmp_path, monkeypatch):
    from maxsim.data import teacher as teacher_module

    whole = tmp_path / "whole"
    teacher_module.score_training_folder(training_folder, "bm25", whole, show_progress=False, chunk_lines=4)
    out = tmp_path / "killed"
    real = _interrupt_scoring_at_chunk(monkeypatch, teacher_module, 3)
    with pytest.raises(KeyboardInterrupt):
        teacher_module.score_training_folder(training_folder, "bm25", out, show_progress=False, chunk_lines=4)
    assert len(list((out / teacher_module.PARTIAL).glob("chunk-*.jsonl"))) == 2
    monkeypatch.setattr(teacher_module, "_score_lines", real)
    teacher_module.score_training_folder(training_folder, "bm25", out, show_progress=False, chunk_lines=4)
    assert (out / "triples.jsonl").read_bytes() == (whole / "triples.jsonl").read_bytes()
    assert not (out / teacher_module.PARTIAL).exists()


def test_pylate_distillation_rows_become_scored_triples_and_colbert_ai_scores(tmp_path):
    from maxsim.data.prepare import prepare_training_data

    rows = [{"query": f"question {i} about topic {i}",
             "documents": [f"an answer about topic {i}", f"unrelated text {i}", f"another text {i} on nothing"],
             "scores": [1.5, 7.25, -2.0] if i == 0 else [9.0, 1.0, 0.5]} for i in range(6)]
    write_jsonl(tmp_path / "kd.jsonl", rows)
    manifest = prepare_training_data(tmp_path / "kd.jsonl", tmp_path / "out", export=("colbert",))
    assert manifest["inputs"][0]["kind"] == "scored" and manifest["counts"]["mined_negatives"] == 0
    data = TrainingData.load(tmp_path / "out", 3)
    assert data.has_scores
    lines = _lines(tmp_path / "out")
    corpus = {json.loads(x)["_id"]: json.loads(x)["text"] for x in (tmp_path / "out" / "corpus.jsonl").read_text().splitlines()}
    first = next(x for x in lines if corpus[x["positive_ids"][0]] == "unrelated text 0")  # the best-scored is the positive
    assert first["scores"] == [7.25, 1.5, -2.0]
    assert [corpus[d] for d in first["negative_ids"]] == ["an answer about topic 0", "another text 0 on nothing"]
    colbert = [json.loads(x) for x in (tmp_path / "out" / "colbert" / "triples.jsonl").read_text().splitlines()]
    assert all(isinstance(pair, list) and len(pair) == 2 for pair in colbert[0][1:])
    assert sorted(pair[1] for pair in colbert[0][1:]) == sorted(lines[0]["scores"])


def test_a_bad_score_in_a_pylate_row_names_the_line(tmp_path):
    from maxsim.data.prepare import prepare_training_data

    rows = [{"query": "q one", "documents": ["a", "b"], "scores": [1.0, 2.0]},
            {"query": "q two", "documents": ["c", "d"], "scores": [1.0, "high"]}]
    write_jsonl(tmp_path / "kd.jsonl", rows)
    with pytest.raises(DataError, match=r"kd.jsonl:2: score 'high' is not a number"):
        prepare_training_data(tmp_path / "kd.jsonl", tmp_path / "out")


def test_colbert_ai_score_triples_round_trip_through_prepare(tmp_path):
    from maxsim.data.prepare import prepare_training_data

    (tmp_path / "queries.tsv").write_text("".join(f"{i}\tquestion {i} about topic {i}\n" for i in range(5)))
    (tmp_path / "collection.tsv").write_text("".join(f"{p}\tpassage {p} says something\n" for p in range(20)))
    lines = [[q, [q, 10.0 + q], [q + 5, 2.5], [q + 10, -1.0]] for q in range(5)]
    (tmp_path / "triples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    manifest = prepare_training_data(tmp_path / "triples.jsonl", tmp_path / "out", colbert_queries=tmp_path / "queries.tsv",
                                     colbert_collection=tmp_path / "collection.tsv", export=("colbert",))
    assert manifest["inputs"][0]["kind"] == "colbert-triples"
    ours = _lines(tmp_path / "out")
    assert ours[2] == {"query_id": "2", "positive_ids": ["2"], "negative_ids": ["7", "12"], "scores": [12.0, 2.5, -1.0]}
    exported = [json.loads(x) for x in (tmp_path / "out" / "colbert" / "triples.jsonl").read_text().splitlines()]
    assert [[pair[1] for pair in row[1:]] for row in exported] == [[10.0 + q, 2.5, -1.0] for q in range(5)]
    (tmp_path / "bad.jsonl").write_text(json.dumps([0, [0, 1.0], [99, 2.0]]) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: passage 99 is not in collection.tsv"):
        prepare_training_data(tmp_path / "bad.jsonl", tmp_path / "out2", colbert_queries=tmp_path / "queries.tsv",
                              colbert_collection=tmp_path / "collection.tsv")
    with pytest.raises(DataError, match="pass --queries"):
        prepare_training_data(tmp_path / "triples.jsonl", tmp_path / "out3")


def test_a_scoring_run_resumed_with_another_teacher_in_its_folder_is_refused(training_folder, tmp_path,
                                                                            tiny_model_dir, monkeypatch):
    import shutil

    from maxsim.data import teacher as teacher_module
    from maxsim.errors import SettingsError
    from maxsim.model import ColBERT

    folder = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24, seed=0).save(tmp_path / "teacher")
    real = _interrupt_scoring_at_chunk(monkeypatch, teacher_module, 2)
    out = tmp_path / "scored"
    with pytest.raises(KeyboardInterrupt):
        teacher_module.score_training_folder(training_folder, str(folder), out, show_progress=False, chunk_lines=4)
    monkeypatch.setattr(teacher_module, "_score_lines", real)
    shutil.rmtree(folder)  # teacher B where teacher A was
    ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24, seed=1).save(folder)
    with pytest.raises(SettingsError, match="the teacher's files changed since the run started"):
        teacher_module.score_training_folder(training_folder, str(folder), out, show_progress=False, chunk_lines=4)
    (training_folder / "triples.jsonl").write_text((training_folder / "triples.jsonl").read_text().replace(
        '"n0"', '"n1"'))
    with pytest.raises(SettingsError, match="the training folder's files changed"):
        teacher_module.score_training_folder(training_folder, str(folder), out, show_progress=False, chunk_lines=4)
