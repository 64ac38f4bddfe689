"""Validation during training: the smaller dev corpus and the precision the dev evaluation runs in."""

import json
import logging
import re

import pytest
import torch
from test_training import _config, _rows

from maxsim.data.errors import DataError
from maxsim.errors import SettingsError
from maxsim.evaluation import evaluation_corpus
from maxsim.model import ColBERT
from maxsim.training import Trainer, validation


def test_evaluation_corpus_keeps_judged_documents_then_each_querys_bm25_best():
    ids = [f"d{i}" for i in range(8)]
    texts = ["whale song in the ocean", "whales breathe air", "cats eat fish", "cat food and mice",
             "rain clouds", "iron rusts", "bread in an oven", "owls hunt at night"]
    queries = ["how do whales breathe", "what do cats eat"]
    # judged: d6 (not a BM25 match at all); then rank 1 of each query (d1, d2), then rank 2 (d0, d3)
    assert evaluation_corpus(queries, ["d6"], ids, texts, 3) == [1, 2, 6]
    assert evaluation_corpus(queries, ["d6"], ids, texts, 5) == [0, 1, 2, 3, 6]
    # judged documents are all kept, even past the size; a size over the corpus keeps it whole
    assert evaluation_corpus(queries, ["d6", "d7", "d5"], ids, texts, 2) == [5, 6, 7]
    assert evaluation_corpus(queries, [], ids, texts, 100) == list(range(8))


def test_dev_max_documents_cuts_the_dev_corpus(tiny_model_dir, training_folder, tmp_path, caplog, cpu_bf16):
    caplog.set_level(logging.INFO)
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=2, dev_fraction=0.25,
                  dev_max_documents=8)
    Trainer(cfg).train()
    # 16 queries, 4 held out; 20 documents in all, cut to 8: the 4 judged ones and 4 BM25 ones
    assert "dev corpus: 8 of 20 documents" in caplog.text
    said = re.search(r"dev evaluation: 4 queries, 8 documents, (.*)", caplog.text).group(1)
    if cpu_bf16:  # bf16 where its vectors agree with float32's, else float32 with a warning why
        assert re.fullmatch(r"bf16 \(token vectors at mean cosine (0\.99\d\d|1\.0000) to float32.s\)", said) or (
            said == "float32" and "bf16 token vectors have mean cosine" in caplog.text)
    else:
        assert said == "float32 (this CPU has no native bf16)"
    assert "dev_ndcg@10" in _rows(tmp_path / "run")[-1]


def test_the_bf16_detection_can_be_forced_both_ways(monkeypatch):
    from maxsim.model.inference import CPU_BF16_ENV, cpu_computes_bf16

    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_computes_bf16() is True
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert cpu_computes_bf16() is False
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(SettingsError, match="MAXSIM_CPU_BF16='yes': set it to 1"):
        cpu_computes_bf16()


def test_dev_forward_is_float32_without_native_bf16_and_checks_bf16_where_used(tiny_model_dir, monkeypatch, caplog):
    model = ColBERT.from_pretrained(str(tiny_model_dir), dim=16, doc_maxlen=24, seed=0)
    sample = model.tokenize_documents(["whales breathe air through a blowhole", "cats eat fish and mice"])
    monkeypatch.setattr(validation, "cpu_computes_bf16", lambda: False)
    assert validation.dev_forward(model, sample) == (None, "float32 (this CPU has no native bf16)")
    # a CPU with bf16 (emulated here): the bf16 copy is used when its vectors agree with float32's
    monkeypatch.setattr(validation, "cpu_computes_bf16", lambda: True)
    monkeypatch.setattr(validation, "MIN_FAST_COSINE", 0.99)
    forward, said = validation.dev_forward(model, sample)
    assert forward is not None and forward.dtype == torch.bfloat16 and said.startswith("bf16 (token vectors at")
    exact = model.encode_token_ids(sample, False)
    quick = model.encode_token_ids(sample, False, forward=forward)
    for a, b in zip(exact, quick):
        assert (a * b).sum(-1).min().item() > 0.99
    # and is refused, with a warning, when they do not
    monkeypatch.setattr(validation, "MIN_FAST_COSINE", 1.01)
    caplog.set_level(logging.WARNING)
    assert validation.dev_forward(model, sample) == (None, "float32")
    assert "dev evaluation in float32: bf16 token vectors have mean cosine" in caplog.text


def test_dev_max_documents_is_refused_when_changed_on_resume(tiny_model_dir, training_folder, tmp_path):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=2, save_every=1)
    Trainer(cfg).train()
    with pytest.raises(Exception, match="dev_max_documents: None -> 8"):
        Trainer(cfg.model_copy(update={"dev_max_documents": 8, "max_steps": 2})).train(resume=True)


def _with_dev_folder(training_folder):
    """The tiny training folder with a dev/ BEIR folder beside it, as maxsim prepare writes one."""
    dev = training_folder / "dev"
    (dev / "qrels").mkdir(parents=True)
    (dev / "queries.jsonl").write_text("".join(json.dumps({"_id": f"v{i}", "text": t}) + "\n" for i, t in
                                               enumerate(["what do cats eat", "why does it rain", "how is glass made"])))
    (dev / "corpus.jsonl").write_text((training_folder / "corpus.jsonl").read_text())
    (dev / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nv0\td0\t1\nv1\td2\t1\nv2\td11\t1\n")
    return dev


def test_resume_refuses_a_changed_dev_set(tiny_model_dir, training_folder, tmp_path):
    dev = _with_dev_folder(training_folder)
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=2, save_every=1)
    Trainer(cfg).train()
    (dev / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nv0\td0\t1\n")  # cut to one query
    with pytest.raises(SettingsError, match="the dev set is not the one .* validated on"):
        Trainer(cfg).train(resume=True)


def test_a_dev_set_whose_positives_are_not_in_its_corpus_is_refused_before_training(
        tiny_model_dir, training_folder, tmp_path):
    dev = _with_dev_folder(training_folder)
    (dev / "corpus.jsonl").write_text(json.dumps({"_id": "other", "text": "a document no qrels line names"}) + "\n")
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=2)
    with pytest.raises(DataError, match="none of the 3 relevant documents of the dev set is in"):
        Trainer(cfg).train()
    assert not (tmp_path / "run").exists()  # nothing started
