"""Shared fixtures: a tiny random-weight BERT (with MiniLM's tokenizer) and a tiny dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The suite runs in worker processes (pytest-xdist: -n in pyproject.toml). Each takes its share of
# the cores for its thread pools (torch's, MKL's, numba's), and so do the processes it starts, so
# that workers do not fight over the cores; a test that needs more threads asks for them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, CORES // WORKERS)))

import torch  # noqa: E402 - after the thread settings above, which torch reads as it loads

if WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TOPICS = [
    ("cats", "what do cats eat", "cats eat fish and mice every day"),
    ("bees", "how do bees make honey", "bees make honey from flower nectar"),
    ("rain", "why does it rain", "rain falls when clouds hold too much water"),
    ("iron", "why does iron rust", "iron rusts when oxygen and water meet it"),
    ("stars", "why do stars shine", "stars shine because of nuclear fusion in their cores"),
    ("bread", "how is bread baked", "bread is baked from dough in a hot oven"),
    ("whales", "how do whales breathe", "whales breathe air through a blowhole on their head"),
    ("tides", "what causes the tides", "the moon pulls the oceans and causes the tides"),
    ("snow", "how does snow form", "snow forms when water vapour freezes in cold clouds"),
    ("volcano", "why do volcanoes erupt", "volcanoes erupt when magma pressure builds under the crust"),
    ("coffee", "where does coffee grow", "coffee grows on shrubs in tropical highlands"),
    ("glass", "how is glass made", "glass is made by melting sand at high heat"),
    ("owls", "when do owls hunt", "owls hunt small animals at night"),
    ("salt", "where does salt come from", "salt comes from sea water and old mines"),
    ("wind", "what makes wind blow", "wind blows because air moves from high to low pressure"),
    ("ants", "how do ants find food", "ants find food by following scent trails"),
]


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_training_folder(folder: Path, n_topics: int = len(TOPICS), extra_negatives: int = 2) -> Path:
    """Queries q0..qN, a positive d0..dN each and unrelated negatives n0..nM."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = TOPICS[:n_topics]
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": q} for i, (_, q, _) in enumerate(topics)])
    corpus = [{"_id": f"d{i}", "title": t, "text": d} for i, (t, _, d) in enumerate(topics)]
    corpus += [{"_id": f"n{i}", "title": "", "text": f"unrelated filler text number {i} about nothing"}
               for i in range(4)]
    write_jsonl(folder / "corpus.jsonl", corpus)
    triples = []
    for i in range(len(topics)):
        negatives = [f"d{(i + k) % len(topics)}" for k in range(1, extra_negatives + 1)] + [f"n{i % 4}"]
        triples.append({"query_id": f"q{i}", "positive_ids": [f"d{i}"], "negative_ids": negatives})
    write_jsonl(folder / "triples.jsonl", triples)
    return folder


@pytest.fixture(params=[False, True], ids=["cpu-float32", "cpu-bf16"])
def cpu_bf16(request, monkeypatch) -> bool:
    """Runs a test twice, the CPU taken as computing bf16 natively and as not (whatever it does):
    both paths are tested on every machine."""
    from maxsim.model.inference import CPU_BF16_ENV

    monkeypatch.setenv(CPU_BF16_ENV, "1" if request.param else "0")
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with the real MiniLM (uncased WordPiece) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from maxsim.model import default_base_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def training_folder(tmp_path) -> Path:
    return make_training_folder(tmp_path / "data")
