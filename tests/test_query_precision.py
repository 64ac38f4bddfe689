"""Query encoding in a precision of its own: float32, bf16 (either CPU path, forced) and int8,
each close to float32's vectors, made once and kept across queries."""

from __future__ import annotations

import pytest
import torch

from maxsim.errors import SettingsError
from maxsim.model import ColBERT
from maxsim.retriever import Retriever

QUERIES = ["what lowers ldl cholesterol", "does vitamin d prevent fractures in older adults"]


@pytest.fixture(scope="module")
def retriever(tiny_model_dir):
    return Retriever(ColBERT.from_pretrained(str(tiny_model_dir), dim=16))


@pytest.mark.parametrize("native", ["0", "1"])
@pytest.mark.parametrize("precision, least", [("float32", 0.99999), ("bf16", 0.99), ("int8", 0.95)])
def test_each_precision_is_close_to_float32(retriever, precision, least, native, monkeypatch):
    monkeypatch.setenv("MAXSIM_CPU_BF16", native)  # auto follows the CPU: both answers, on any CPU
    retriever.encoder.query_precision = "float32"
    reference, mask = retriever.query_vectors(QUERIES)
    retriever.encoder.query_precision = precision
    vectors, same_mask = retriever.query_vectors(QUERIES)
    assert torch.equal(mask, same_mask) and vectors.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(vectors[mask], reference[mask], dim=-1)
    assert cosine.mean() >= least and cosine.min() >= least - 0.05, (precision, cosine.mean(), cosine.min())
    retriever.encoder.query_precision = "auto"  # back to the documents' copy


def test_the_query_copy_is_made_once_and_kept(retriever):
    retriever.encoder.query_precision = "int8"
    forward = retriever.encoder._query_forward
    assert forward.precision == "int8"
    for text in QUERIES * 3:
        retriever.query_vectors([text])
    assert retriever.encoder._query_forward is forward and len(forward._traces) <= 1  # one shape: one trace
    retriever.encoder.query_precision = "auto"
    assert retriever.encoder._query_forward is None


def test_an_unknown_precision_is_refused_by_name(retriever):
    with pytest.raises(SettingsError, match="fp8.*auto, float32, bf16, int8"):
        retriever.encoder.query_precision = "fp8"


@pytest.mark.parametrize("precision", ["auto", "int8"])
def test_queries_encode_untraced_alike_and_make_no_trace(tiny_model_dir, precision, cpu_bf16):
    # (auto follows the CPU: cpu_bf16 runs it in bf16 and in float32, on any CPU)
    traced = Retriever(ColBERT.from_pretrained(str(tiny_model_dir), dim=16))
    plain = Retriever(traced.model)
    plain.encoder.trace_queries = False
    for retriever in (traced, plain):
        retriever.encoder.query_precision = precision  # a new copy keeps the choice
    forward = traced.encoder._query_forward or traced.inference_forward
    untraced = plain.encoder._query_forward or plain.inference_forward
    (a, mask), (b, same_mask) = traced.query_vectors(QUERIES[:1]), plain.query_vectors(QUERIES[:1])
    assert torch.equal(mask, same_mask) and torch.allclose(a, b, atol=1e-3)
    assert len(forward._traces) == 1 and not untraced._traces and not untraced.trace
