"""Integration tests with the real bundled all-MiniLM-L6-v2."""

import json

import pytest
import torch

from maxsim.model import ColBERT, default_base_model
from maxsim.scoring import maxsim
from maxsim.training import TrainConfig, Trainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return ColBERT.from_pretrained(seed=0)


def test_default_base_model_is_the_bundled_minilm(minilm):
    assert (default_base_model() / "config.json").is_file()
    assert minilm.settings.dim == 128 and minilm.settings.doc_maxlen == 256
    assert minilm.encoder.config.hidden_size == 384
    assert (minilm.settings.query_marker, minilm.settings.document_marker) == ("[unused0]", "[unused1]")


def test_untrained_minilm_already_ranks_the_matching_document_first(minilm):
    docs = ["Bees make honey from the nectar of flowers.",
            "Iron rusts when it meets oxygen and water.",
            "The moon's gravity causes ocean tides."]
    queries = ["how do bees make honey", "why does iron rust", "what causes tides"]
    dv, dm = minilm.encode_documents(docs, padded=True)
    qv, qm = minilm.encode_queries(queries, padded=True)
    scores = maxsim(qv, qm, dv, dm)
    assert scores.argmax(dim=1).tolist() == [0, 1, 2]
    # scores are sums of 32 cosine similarities
    assert (scores <= 32 + 1e-4).all() and (scores > 0).all()


def test_short_training_run_with_minilm(training_folder, tmp_path):
    cfg = TrainConfig(data=training_folder, output=tmp_path / "run", batch_size=8, epochs=2, max_steps=3,
                      doc_maxlen=48, learning_rate=3e-5, dev_fraction=0.25, progress_bar=False)
    best = Trainer(cfg).train()
    assert best == tmp_path / "run" / "best"
    info = json.loads((best / "best.json").read_text())
    assert info["step"] == 3 and 0 < info["metrics"]["ndcg@10"] <= 1
    model = ColBERT.from_pretrained(best)
    assert model.settings.doc_maxlen == 48
    assert torch.isfinite(model.encode_queries(["what do cats eat"])[0]).all()
