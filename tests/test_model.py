import pytest
import torch

from maxsim.model import ColBERT, ModelLoadError, pick_device


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ColBERT.from_pretrained(tiny_model_dir, dim=16, query_maxlen=8, doc_maxlen=12, seed=1)


def test_markers_follow_the_first_special_token(model):
    tokens = model.tokenize_queries(["the cat"])[0]
    vocab = model.tokenizer
    assert vocab.convert_ids_to_tokens(tokens) == ["[CLS]", "[unused0]", "the", "cat", "[SEP]"]
    doc = model.tokenize_documents(["the cat"])[0]
    assert vocab.convert_ids_to_tokens(doc)[:2] == ["[CLS]", "[unused1]"]


def test_query_expansion_with_mask_tokens(model):
    batch = model.pad_queries(model.tokenize_queries(["the cat"]))
    assert batch.input_ids.shape == (1, 8)
    assert model.tokenizer.convert_ids_to_tokens(batch.input_ids[0, 5:].tolist()) == ["[MASK]"] * 3
    assert batch.attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert batch.score_mask.all()  # expansion tokens take part in MaxSim
    vectors = model.encode_queries(["the cat"])[0]
    assert vectors.shape == (8, 16)


def test_attend_to_expansion_tokens(tiny_model_dir):
    m = ColBERT.from_pretrained(tiny_model_dir, dim=16, query_maxlen=8, attend_to_expansion_tokens=True)
    assert m.pad_queries(m.tokenize_queries(["the cat"])).attention_mask.all()


def test_documents_truncated_and_punctuation_not_scored(model):
    tokens = model.tokenize_documents(["a, b. c! " * 20])[0]
    assert len(tokens) == 12 and model.tokenizer.convert_ids_to_tokens(tokens[-1]) == "[SEP]"
    batch = model.pad_documents(model.tokenize_documents(["cat, dog.", "cat"]))
    words = model.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
    assert words == ["[CLS]", "[unused1]", "cat", ",", "dog", ".", "[SEP]"]
    assert batch.score_mask[0].tolist() == [True, True, True, False, True, False, True]
    assert batch.score_mask[1].tolist() == [True, True, True, True, False, False, False]
    assert [v.shape[0] for v in model.encode_documents(["cat, dog.", "cat"])] == [5, 4]


def test_vectors_are_unit_norm_and_batching_does_not_change_them(model):
    texts = ["short", "a somewhat longer document about cats", "mid length text"]
    one_by_one = [model.encode_documents([t])[0] for t in texts]
    together = model.encode_documents(texts, batch_size=2)
    for a, b in zip(one_by_one, together):
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(a.norm(dim=-1), torch.ones(a.shape[0]), atol=1e-5)
    padded, mask = model.encode_documents(texts, padded=True)
    assert padded.shape[0] == 3 and mask.sum(1).tolist() == [t.shape[0] for t in together]


def test_save_and_load_give_identical_embeddings(model, tmp_path):
    texts = ["the cat sat on the mat", "dogs, too."]
    model.save(tmp_path / "ckpt")
    names = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"model.safetensors", "config.json", "projection.safetensors", "maxsim_config.json",
            "tokenizer.json"} <= names
    loaded = ColBERT.from_pretrained(tmp_path / "ckpt")
    assert loaded.settings == model.settings
    for a, b in zip(model.encode_documents(texts), loaded.encode_documents(texts)):
        assert torch.equal(a, b)
    for a, b in zip(model.encode_queries(texts), loaded.encode_queries(texts)):
        assert torch.equal(a, b)


def test_dim_disagreeing_with_checkpoint_is_an_error(model, tmp_path):
    model.save(tmp_path / "ckpt")
    with pytest.raises(ModelLoadError, match="dim=16"):
        ColBERT.from_pretrained(tmp_path / "ckpt", dim=128)
    assert ColBERT.from_pretrained(tmp_path / "ckpt", dim=16).settings.dim == 16


def test_missing_base_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a local folder"):
        ColBERT.from_pretrained(tmp_path / "no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        ColBERT.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_vocabulary_without_unused_tokens_gets_new_markers(tmp_path, arch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", "<mask>", "cat", "dog", "."])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>", mask_token="<mask>")
    tok.save_pretrained(tmp_path)
    config_cls, model_cls = (BertConfig, BertModel) if arch == "bert" else (RobertaConfig, RobertaModel)
    model_cls(config_cls(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, pad_token_id=0, max_position_embeddings=64)).save_pretrained(tmp_path)
    m = ColBERT.from_pretrained(tmp_path, dim=8)
    assert type(m.encoder) is model_cls  # the class comes from the checkpoint's model_type
    assert (m.settings.query_marker, m.settings.document_marker) == ("[Q]", "[D]")
    assert m.encoder.get_input_embeddings().weight.shape[0] == len(vocab) + 2
    assert m.query_marker_id == len(vocab) and m.document_marker_id == len(vocab) + 1
    m.save(tmp_path / "saved")
    again = ColBERT.from_pretrained(tmp_path / "saved")
    assert torch.equal(again.encode_queries(["cat dog"])[0], m.encode_queries(["cat dog"])[0])


def test_half_precision_checkpoint_loads_as_float32(tiny_model_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(tiny_model_dir).half().save_pretrained(tmp_path / "fp16")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "fp16")
    model = ColBERT.from_pretrained(tmp_path / "fp16", dim=16, seed=1)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.encode_queries(["a question"])[0].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_forward_matches_the_model(model, dtype):
    from maxsim.model import InferenceForward

    fast = InferenceForward(model, dtype=dtype)
    texts = ["what do cats eat", "a much longer question about the way bees make their honey"]
    exact = model.encode_queries(texts, padded=True)[0]
    got, mask = model.encode_queries(texts, padded=True, forward=fast)
    assert got.dtype == torch.float32 and mask.all()
    cosines = (got * exact).sum(-1)
    assert cosines.min() > (0.9999 if dtype == torch.float32 else 0.99), cosines.min()
    assert len(fast._traces) == 1  # queries have one shape, traced once
    if dtype == torch.float32:  # the trace runs optimize_for_inference's graph (linear layers pre-transposed)
        graph = str(next(iter(fast._traces.values())).graph)
        assert "aten::linear" not in graph and "aten::matmul" in graph
    # a query that fills every position (no [MASK] padding) goes through the same trace correctly
    full = ["word " * 40]
    assert torch.allclose(model.encode_queries(full, padded=True, forward=fast)[0],
                          model.encode_queries(full, padded=True)[0], atol=0.02 if dtype == torch.bfloat16 else 1e-5)
    docs = model.encode_documents(texts, forward=fast)
    for a, b in zip(docs, model.encode_documents(texts)):
        assert a.shape == b.shape and (a * b).sum(-1).min() > 0.99


def test_batches_of_many_queries_share_one_trace_whatever_their_number(model):
    from maxsim.model import InferenceForward

    fast = InferenceForward(model, dtype=torch.float32)
    texts = [f"question {i} about {'bees ' * (i % 5)}honey" for i in range(12)]
    for n in (2, 5, 12):
        got, _ = model.encode_queries(texts[:n], padded=True, forward=fast)
        want, _ = model.encode_queries(texts[:n], padded=True)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    key = ("rows", model.settings.query_maxlen)
    assert list(fast._traces) == [key]  # one trace for the three sizes
    assert isinstance(fast._traces[key], torch.jit.ScriptModule)  # a trace, not the untraced module


def test_custom_code_in_a_model_folder_never_runs(tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "EVIL_RAN"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\nfrom transformers import BertModel as EvilModel\n")
    ColBERT.from_pretrained(folder, dim=16)  # trust_remote_code=False: the built-in BERT class, no prompt
    assert not marker.exists()


def test_pick_device_reads_auto_cpu_and_cuda(tiny_model_dir):
    gpu = torch.cuda.is_available()
    assert pick_device("auto").type == pick_device(None).type == ("cuda" if gpu else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert ColBERT.from_pretrained(tiny_model_dir, device="auto").device.type == ("cuda" if gpu else "cpu")
    assert ColBERT.from_pretrained(tiny_model_dir).device.type == "cpu"  # None: where it was loaded
    for bad in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(ModelLoadError, match="use auto, cpu, cuda or cuda:N"):
            pick_device(bad)
    if not gpu:
        with pytest.raises(ModelLoadError, match="no CUDA GPU is visible"):
            pick_device("cuda:0")


def test_tokenising_ahead_in_windows_keeps_each_texts_vectors(tiny_model_dir, monkeypatch):
    """The GPU path (texts tokenised a window ahead by a thread, batches sorted within a window),
    forced here on the CPU: every text gets the vectors the one-pass path gives it, in order."""
    import maxsim.model.colbert as colbert

    model = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24, seed=3)
    texts = [f"document {i} " + "word " * (i % 17) for i in range(150)]
    want = model.encode_documents(texts, batch_size=16)
    monkeypatch.setattr(colbert, "TOKENIZE_WINDOW", 40)
    monkeypatch.setattr(ColBERT, "_tokenizes_ahead", lambda self, n: n > 40)
    got = model.encode_documents(texts, batch_size=16)
    queries = model.encode_queries(texts[:90], padded=True)
    assert len(got) == len(want)
    for a, b in zip(want, got):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    monkeypatch.setattr(ColBERT, "_tokenizes_ahead", lambda self, n: False)
    plain = model.encode_queries(texts[:90], padded=True)
    assert torch.allclose(queries[0], plain[0], atol=1e-5) and torch.equal(queries[1], plain[1])
