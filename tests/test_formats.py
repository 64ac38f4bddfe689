"""Checkpoints written by colbert-ai and PyLate read exactly: the fixtures in
../shared/fixtures/interop hold each library's own token ids and vectors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from maxsim.model import ColBERT, ModelLoadError
from maxsim.model.formats import detect_format

INTEROP = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "interop"
FIXTURES = ["stanford", "pylate", "pylate_from_stanford"]
pytestmark = pytest.mark.skipif(not INTEROP.is_dir(), reason="needs ../shared/fixtures/interop")


def stanford_with_bin(tmp_path: Path) -> Path:
    """The Stanford fixture as older hub copies hold it: pytorch_model.bin, no safetensors."""
    folder = tmp_path / "stanford-bin"
    shutil.copytree(INTEROP / "stanford" / "checkpoint", folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def check_against_library(model: ColBERT, fixture: str) -> None:
    """Token ids of the attended positions identical; vectors within 1e-5 of the library's."""
    expected = json.loads((INTEROP / fixture / "expected.json").read_text())
    q_expected = np.load(INTEROP / fixture / "query_vectors.npy")
    d_expected = np.load(INTEROP / fixture / "document_vectors.npy")
    queries, documents = expected["queries"], expected["documents"]
    ids = model.tokenize_queries(queries["texts"])
    batch = model.pad_queries(ids)
    for i in range(len(ids)):
        assert batch.input_ids[i].tolist() == queries["input_ids"][i], fixture
        assert batch.attention_mask[i].tolist() == queries["attention_mask"][i], fixture
    for i, vectors in enumerate(model.encode_queries(queries["texts"])):
        assert vectors.shape[0] == queries["lengths"][i]
        np.testing.assert_allclose(vectors.numpy(), q_expected[i, : vectors.shape[0]], atol=1e-5)
    doc_ids = model.tokenize_documents(documents["texts"])
    for i, row in enumerate(doc_ids):
        attended = [t for t, a in zip(documents["input_ids"][i], documents["attention_mask"][i]) if a]
        assert row == attended, fixture
    for i, vectors in enumerate(model.encode_documents(documents["texts"])):
        n = documents["lengths"][i]
        assert vectors.shape[0] == n, (fixture, i)
        np.testing.assert_allclose(vectors.numpy(), d_expected[i, :n], atol=1e-5)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_library_checkpoints_encode_as_the_library_does(fixture):
    folder = INTEROP / fixture / "checkpoint"
    expected = json.loads((INTEROP / fixture / "expected.json").read_text())
    assert detect_format(folder) == expected["format"]
    model = ColBERT.from_pretrained(folder)
    s = model.settings
    assert (s.dim, s.query_maxlen, s.doc_maxlen) == (expected["dim"], expected["query_maxlen"], expected["doc_maxlen"])
    assert (s.query_marker, s.document_marker) == (expected["query_marker"], expected["document_marker"])
    check_against_library(model, fixture)


def test_an_older_stanford_checkpoint_with_pytorch_model_bin(tmp_path):
    model = ColBERT.from_pretrained(stanford_with_bin(tmp_path))
    check_against_library(model, "stanford")


def test_a_pickle_that_is_not_plain_tensors_is_refused_unread(tmp_path):
    folder = stanford_with_bin(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"linear.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="plain tensors"):
        ColBERT.from_pretrained(folder)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_a_dim_that_contradicts_the_checkpoint_is_an_error(fixture):
    with pytest.raises(ModelLoadError, match="dim=32, but dim=128"):
        ColBERT.from_pretrained(INTEROP / fixture / "checkpoint", dim=128)
    assert ColBERT.from_pretrained(INTEROP / fixture / "checkpoint", dim=32).settings.dim == 32


def test_settings_a_model_cannot_honour_are_errors_that_name_them(tmp_path):
    folder = tmp_path / "l2"
    shutil.copytree(INTEROP / "stanford" / "checkpoint", folder)
    meta = json.loads((folder / "artifact.metadata").read_text())
    (folder / "artifact.metadata").write_text(json.dumps({**meta, "similarity": "l2"}))
    with pytest.raises(ModelLoadError, match="similarity 'l2'"):
        ColBERT.from_pretrained(folder)
    folder = tmp_path / "bias"
    shutil.copytree(INTEROP / "pylate" / "checkpoint", folder)
    config = json.loads((folder / "1_Dense" / "config.json").read_text())
    (folder / "1_Dense" / "config.json").write_text(json.dumps({**config, "activation_function": "torch.nn.Tanh"}))
    with pytest.raises(ModelLoadError, match="activation torch.nn.Tanh"):
        ColBERT.from_pretrained(folder)


def test_pylate_options_maxsim_had_no_words_for(tmp_path):
    """An empty prefix (no marker, full length) and do_query_expansion off, as PyLate does them."""
    folder = tmp_path / "options"
    shutil.copytree(INTEROP / "pylate" / "checkpoint", folder)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config.update(query_prefix="", do_query_expansion=False)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    model = ColBERT.from_pretrained(folder)
    ids = model.tokenize_queries(["a query that is rather longer than sixteen tokens in all, really it is"])[0]
    assert len(ids) == 16 and ids[0] == 101 and ids[1] != 2099  # no marker: the whole length is text
    short = model.encode_queries(["cats"])[0]
    own = model.tokenize_queries(["cats"])[0]  # [CLS] cats [SEP]: no [MASK] expansion
    assert short.shape[0] == len(own) < 16 and 103 not in own


def vectors_of(model: ColBERT) -> list[torch.Tensor]:
    texts = ["what do cats eat?", "bees make honey, from nectar; every day!"]
    return model.encode_queries(texts) + model.encode_documents(texts)


@pytest.mark.parametrize("source", ["tiny", *FIXTURES])
@pytest.mark.parametrize("fmt", ["maxsim", "pylate", "stanford"])
def test_saved_in_each_format_it_reloads_with_the_same_vectors(source, fmt, tiny_model_dir, tmp_path):
    model = ColBERT.from_pretrained(tiny_model_dir if source == "tiny" else INTEROP / source / "checkpoint",
                                    **({"dim": 16, "query_maxlen": 12, "doc_maxlen": 24} if source == "tiny" else {}))
    folder = model.save(tmp_path / fmt, format=fmt)
    assert detect_format(folder) == fmt
    again = ColBERT.from_pretrained(folder)
    for key in ("dim", "query_maxlen", "doc_maxlen", "query_marker", "document_marker",
                "attend_to_expansion_tokens", "do_query_expansion"):
        assert getattr(again.settings, key) == getattr(model.settings, key), key
    assert again.tokens.punctuation_ids.tolist() == model.tokens.punctuation_ids.tolist()
    for a, b in zip(vectors_of(model), vectors_of(again)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_model_a_library_would_encode_differently_is_not_exported_to_it(tiny_model_dir, tmp_path):
    model = ColBERT.from_pretrained(tiny_model_dir, dim=16)
    model.settings = model.settings.model_copy(update={"do_query_expansion": False})
    with pytest.raises(ModelLoadError, match="query expansion off"):
        model.save(tmp_path / "s", format="stanford")
    assert not (tmp_path / "s").exists()
    with pytest.raises(ModelLoadError, match="format 'onnx'"):
        model.save(tmp_path / "o", format="onnx")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_fine_tuning_a_library_checkpoint_keeps_its_settings(fixture, training_folder, tmp_path):
    from maxsim.training import TrainConfig, Trainer

    folder = INTEROP / fixture / "checkpoint"
    before = ColBERT.from_pretrained(folder).settings
    best = Trainer(TrainConfig(data=training_folder, output=tmp_path / "run", base_model=str(folder), max_steps=2,
                               batch_size=4, progress_bar=False)).train()
    after = ColBERT.from_pretrained(best).settings
    assert after.model_dump(exclude={"base_model"}) == before.model_dump(exclude={"base_model"})
    assert (after.dim, after.query_maxlen, after.doc_maxlen) == (32, 16, 32)


def test_export_command_writes_a_folder_the_library_layout_expects(tmp_path):
    from typer.testing import CliRunner

    from maxsim.cli import app

    out = tmp_path / "as-pylate"
    result = CliRunner().invoke(app, ["export", str(INTEROP / "stanford" / "checkpoint"), "--format", "pylate",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "modules.json").read_text())[1]["type"] == "pylate.models.Dense.Dense"
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert (config["query_prefix"], config["query_length"], config["document_length"]) == ("[unused0]", 16, 32)
    check_against_library(ColBERT.from_pretrained(out), "stanford")
    result = CliRunner().invoke(app, ["export", str(INTEROP / "stanford" / "checkpoint"), "--format", "onnx",
                                      "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "format 'onnx'" in result.output


HUB_SCRIPT = """
import sys
from maxsim.model import ColBERT
model = ColBERT.from_pretrained(sys.argv[1])
print(model.settings.dim, model.settings.query_maxlen, model.settings.query_marker)
"""


def hub_cache(tmp_path: Path, repo: str, folder: Path) -> Path:
    """A Hugging Face home whose hub cache holds ``folder`` as ``repo``, laid out as the Hub writes it."""
    home = tmp_path / "hf-home"
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = home / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return home


def test_a_hub_name_is_found_in_the_local_cache_offline(tmp_path):
    import os
    import subprocess
    import sys

    home = hub_cache(tmp_path, "colbert-ir/tiny-colbert", INTEROP / "stanford" / "checkpoint")
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", HUB_SCRIPT, "colbert-ir/tiny-colbert"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["32", "16", "[unused0]"]
    missing = subprocess.run([sys.executable, "-m", "maxsim", "export", "colbert-ir/not-cached", "--format", "maxsim",
                              "--output", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "not in the Hugging Face cache" in lines[0] and "Traceback" not in missing.stderr


def test_a_sentence_transformers_encoder_is_a_base_model_not_a_pylate_one():
    from maxsim.model import default_base_model

    assert (default_base_model() / "modules.json").is_file()  # Transformer, Pooling, Normalize
    assert detect_format(default_base_model()) is None


def test_the_stanford_export_gives_back_a_pad_token_that_is_not_mask(tmp_path):
    """colbert-ai zeroes query positions holding the pad id: PyLate's pad=[MASK] must not reach it."""
    model = ColBERT.from_pretrained(INTEROP / "pylate" / "checkpoint")
    assert model.tokenizer.pad_token == "[MASK]"
    folder = model.save(tmp_path / "s", format="stanford")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["pad_token"] == "[PAD]" and model.tokenizer.pad_token == "[MASK]"  # the model keeps its own


def test_a_checkpoint_read_only_in_part_is_logged(tiny_model_dir, tmp_path, caplog):
    from safetensors.torch import save_file

    folder = ColBERT.from_pretrained(tiny_model_dir, dim=16).save(tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    state.pop(next(k for k in state if "encoder.layer.1" in k))
    state["stray.weight"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    with caplog.at_level("WARNING"):
        ColBERT.from_pretrained(folder)
    assert "newly initialised" in caplog.text and "stray.weight" in caplog.text


def test_a_maxsim_checkpoint_of_another_dim_trains_without_dim(tiny_model_dir, training_folder, tmp_path):
    from maxsim.training import TrainConfig, Trainer

    base = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24).save(tmp_path / "dim16")
    best = Trainer(TrainConfig(data=training_folder, output=tmp_path / "run", base_model=str(base), max_steps=1,
                               batch_size=4, progress_bar=False)).train()
    assert (ColBERT.from_pretrained(best).settings.dim, ColBERT.from_pretrained(best).settings.doc_maxlen) == (16, 24)


def test_training_from_a_checkpoint_refuses_a_contradicting_dim(training_folder, tmp_path):
    from maxsim.training import TrainConfig, Trainer

    config = TrainConfig(data=training_folder, output=tmp_path / "run", dim=128, max_steps=1, batch_size=4,
                         base_model=str(INTEROP / "stanford" / "checkpoint"), progress_bar=False)
    with pytest.raises(ModelLoadError, match="dim=32, but dim=128"):
        Trainer(config).train()
