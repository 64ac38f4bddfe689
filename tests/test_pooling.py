"""Token pooling: the clustering itself, and indexes that store pooled vectors (saved factor,
adds pooled alike, fewer tokens, documents still found)."""

import json

import numpy as np
import pytest
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.errors import SettingsError
from maxsim.index import IndexData
from maxsim.index.pooling import pool_tokens
from maxsim.retriever import Retriever


def test_pooling_means_clusters_and_keeps_the_first_token():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    tokens = np.concatenate([centres[:1], np.repeat(centres[1:], 3, axis=0) + 0.01 * rng.standard_normal((9, 16))])
    tokens = (tokens / np.linalg.norm(tokens, axis=1, keepdims=True)).astype(np.float32)
    pooled = pool_tokens(tokens, 3)  # 9 pooled tokens into 3 clusters: one per centre
    assert pooled.shape == (4, 16) and np.array_equal(pooled[0], tokens[0])
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5)
    assert sorted(np.argmax(pooled[1:] @ centres[1:].T, axis=1).tolist()) == [0, 1, 2]
    assert pool_tokens(tokens, 1) is tokens and len(pool_tokens(tokens[:2], 2)) == 2
    assert len(pool_tokens(tokens, 2)) == 1 + 9 // 2


def test_an_index_stores_pooled_vectors_and_pools_its_adds(retriever, tmp_path):  # noqa: F811
    plain, pooled = tmp_path / "plain", tmp_path / "pooled"
    retriever.index(DOCS, path=plain, document_ids=IDS)
    result = CliRunner().invoke(app, ["index", "build", str(_corpus(tmp_path)), "--model", str(retriever.model_path),
                                      "--output", str(pooled), "--pool-factor", "2"])
    assert result.exit_code == 0, result.output
    before, after = IndexData.load(plain), IndexData.load(pooled)
    assert json.loads((pooled / "index.json").read_text())["pool_factor"] == 2
    assert after.n_chunks == before.n_chunks and after.n_tokens < 0.62 * before.n_tokens
    r = Retriever.from_index(pooled)
    r.add([DOCS[3] + " Again."], document_ids=["again"])
    added = r.index_data.segments[-1]
    unpooled = Retriever.from_index(plain)
    unpooled.add([DOCS[3] + " Again."], document_ids=["again"])
    assert added.n_tokens < unpooled.index_data.segments[-1].n_tokens  # pooled with the index's factor
    for i in (0, 5, 9):
        query = " ".join(DOCS[i].split()[:8])
        assert r.search(query, k=1)[0].document_id in (IDS[i], "again")
    with pytest.raises(SettingsError, match="pool_factor must be"):
        retriever.index(DOCS, path=tmp_path / "bad", pool_factor=0)


def _corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": i, "text": d}) + "\n" for i, d in zip(IDS, DOCS)))
    return path
