"""The CUDA path: bf16 autocast training, CUDA RNG state in checkpoints, resume, NCCL under torchrun.

Skipped on machines without a GPU (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``.
"""

import json
import os

import pytest
import torch
from test_distributed import kill_at_first_checkpoint_then_resume, torchrun_train_command
from test_training import _config, _max_diff, _rows, _weights, kill_then_resume

from maxsim.model import ColBERT
from maxsim.scoring import maxsim
from maxsim.training import Trainer, checkpoints

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def deterministic():
    """cuBLAS and scatter-add kernels that give the same bits on every run."""
    old = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    if old is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = old


def test_maxsim_on_cuda_sums_in_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8, 16, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(5, 11, 16, generator=g), dim=-1)
    qm, dm = torch.ones(3, 8, dtype=torch.bool), torch.rand(5, 11, generator=g) > 0.3
    dm[:, 0] = True
    cpu = maxsim(q, qm, d, dm)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu = maxsim(q.cuda().bfloat16(), qm.cuda(), d.cuda().bfloat16(), dm.cuda())
    assert gpu.dtype == torch.float32
    # bf16 inputs: each cosine is off by at most ~2^-8, and 8 of them are summed
    assert (gpu.cpu() - cpu).abs().max().item() < 8 * 2**-7


def test_training_on_cuda_uses_bf16_autocast_and_float32_weights(tiny_model_dir, training_folder, tmp_path):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", batch_size=16, epochs=25,
                  learning_rate=3e-3, device="cuda")
    path = Trainer(cfg).train()
    rows = _rows(tmp_path / "run")
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert {v.dtype for v in _weights(path).values()} == {torch.float32}
    state = torch.load(path / checkpoints.STATE_FILE, weights_only=True)
    assert len(state["rng_cuda"]) == torch.cuda.device_count()
    model = ColBERT.from_pretrained(path, device="cuda")
    assert model.encode_queries(["what do cats eat"])[0].dtype == torch.float32


def test_kill_then_resume_on_cuda_matches_uninterrupted(
        tiny_model_dir, training_folder, tmp_path, monkeypatch, deterministic):
    whole, resumed = kill_then_resume(tiny_model_dir, training_folder, tmp_path, monkeypatch, device="cuda")
    diff = _max_diff(_weights(whole), _weights(resumed))
    print(f"CUDA resume max abs weight difference: {diff:.3g}")
    assert diff <= 1e-6


def test_torchrun_nccl_trains_and_resumes(tiny_model_dir, training_folder, tmp_path):
    out = tmp_path / "run"
    command = torchrun_train_command(tiny_model_dir, training_folder, out, 1, "cuda") + ["--max-steps", "8"]
    killed, second = kill_at_first_checkpoint_then_resume(command, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.strip().splitlines() == [str(out / "best")]
    assert "resumed from" in second.stderr or not killed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and "dev_ndcg@10" in rows[1]


def test_encoding_on_cuda_pads_ahead_and_keeps_each_texts_vectors(tiny_model_dir):
    texts = [f"document {i} " + "word " * (i % 17) for i in range(150)]  # lengths vary: batches are length-sorted
    cpu = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24, seed=3)
    gpu = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24, seed=3, device="cuda")
    want, got = cpu.encode_documents(texts, batch_size=16), gpu.encode_documents(texts, batch_size=16)
    for a, b in zip(want, got):
        assert b.device.type == "cpu" and b.dtype == torch.float32 and a.shape == b.shape
        assert (a * b).sum(-1).min().item() > 0.99  # bf16 autocast on the GPU
