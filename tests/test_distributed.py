"""Two CPU processes (gloo) must give the loss and gradients of one process on the same batch."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from maxsim.data.batches import TokenCache, build_batch, micro_batches, shard
from maxsim.data.training_folder import TrainingData
from maxsim.model import ColBERT
from maxsim.training import TrainConfig
from maxsim.training.distributed import Context, average_gradients, setup, teardown
from maxsim.training.stats import StepStats
from maxsim.training.trainer import forward_backward

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def float32_training(monkeypatch):
    """These tests compare gradients to 1e-5: float32 on every CPU, in the spawned processes too
    (bf16 autocast training is tested in test_training.py)."""
    monkeypatch.setenv("MAXSIM_CPU_BF16", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(model_dir, data_dir, ctx, batch, grad_cache_chunk=None):
    """Gradients of one global batch on this rank, averaged over ranks."""
    torch.manual_seed(0)
    model = ColBERT.from_pretrained(model_dir, dim=16, query_maxlen=12, doc_maxlen=24, seed=3)
    model.train()
    cfg = TrainConfig(data=data_dir, output="unused", nway=3, temperature=0.5, grad_cache_chunk=grad_cache_chunk)
    data = TrainingData.load(data_dir, nway=3)
    cache = TokenCache(model, data)
    stats = StepStats()
    for micro in micro_batches(batch, 1, ctx.world_size):
        local, offset = shard(micro, ctx.rank, ctx.world_size)
        tb = build_batch(model, data, cache, data.positives_of(), local, 3, 7, 0)
        stats += forward_backward(model, tb, ctx, cfg, offset, len(batch))
    params = [p for p in model.parameters()]
    average_gradients(ctx, params)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return stats.to_tensor(), grads


def _worker(rank, world, port, model_dir, data_dir, batch, out, grad_cache_chunk=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = setup("cpu")
    completed = False
    try:
        stats, grads = _step(model_dir, data_dir, ctx, batch, grad_cache_chunk)
        from maxsim.training.distributed import all_sum
        stats = all_sum(ctx, stats)
        if rank == 0:
            torch.save({"stats": stats, "grads": grads}, out)
        completed = True
    finally:
        teardown(ctx, completed)


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory, tiny_model_dir):
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-no-dropout")
    config = BertConfig.from_pretrained(tiny_model_dir)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = BertModel.from_pretrained(tiny_model_dir, config=config)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    return folder


@pytest.mark.parametrize("batch_size", [6, 5])  # 5: ranks hold 3 and 2 queries
def test_two_processes_match_one(no_dropout_model, training_folder, tmp_path, batch_size):
    batch = np.random.default_rng(0).permutation(16)[:batch_size]
    one_stats, one_grads = _step(no_dropout_model, training_folder, Context(), batch)
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), no_dropout_model, training_folder, batch, out), nprocs=2)
    two = torch.load(out)
    assert abs(one_stats[0] - two["stats"][0]) / batch_size < 1e-5  # the mean loss
    assert one_grads.keys() == two["grads"].keys()
    worst = max((one_grads[k] - two["grads"][k]).abs().max().item() for k in one_grads)
    assert worst < 1e-5, worst


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_grad_cache_gives_the_gradients_of_the_whole_batch(no_dropout_model, training_folder, chunk):
    batch = np.random.default_rng(1).permutation(16)[:6]
    plain_stats, plain = _step(no_dropout_model, training_folder, Context(), batch)
    cached_stats, cached = _step(no_dropout_model, training_folder, Context(), batch, grad_cache_chunk=chunk)
    assert cached_stats[0].item() == pytest.approx(plain_stats[0].item(), rel=1e-6)
    assert plain.keys() == cached.keys()
    worst = max((plain[k] - cached[k]).abs().max().item() for k in plain)
    assert worst < 1e-5, worst


def test_grad_cache_across_two_processes_keeps_the_cross_rank_negatives(no_dropout_model, training_folder, tmp_path):
    batch = np.random.default_rng(2).permutation(16)[:5]  # ranks hold 3 and 2 queries
    _, one_grads = _step(no_dropout_model, training_folder, Context(), batch)
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), no_dropout_model, training_folder, batch, out, 2), nprocs=2)
    two = torch.load(out)
    worst = max((one_grads[k] - two["grads"][k]).abs().max().item() for k in one_grads)
    assert worst < 1e-5, worst


def test_grad_cache_replays_each_chunks_dropout(tiny_model_dir):
    """With dropout on, the chunk encoded again for its graph is the one whose vectors gave the loss."""
    from maxsim.training import grad_cache

    model = ColBERT.from_pretrained(tiny_model_dir, dim=16, query_maxlen=12, doc_maxlen=24)
    model.train()
    batch = model.pad_documents(model.tokenize_documents([f"document number {i} about cats" for i in range(5)]))
    cached, states = grad_cache.encode_without_graph(model, batch, 2, _no_autocast)
    seen = []
    real_backward = torch.Tensor.backward

    def record(self, gradient=None, *args, **kwargs):
        seen.append(self.detach().clone())
        return real_backward(self, gradient, *args, **kwargs)

    torch.Tensor.backward = record
    try:
        grad_cache.backward_through_chunks(model, batch, 2, torch.ones_like(cached), states, _no_autocast)
    finally:
        torch.Tensor.backward = real_backward
    torch.testing.assert_close(torch.cat(seen), cached, atol=1e-6, rtol=0)  # (with and without a graph)
    again, _ = grad_cache.encode_without_graph(model, batch, 2, _no_autocast)
    assert (again - cached).abs().max() > 1e-3  # dropout is on: a new draw differs


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def torchrun_train_command(tiny_model_dir, training_folder, out, nproc: int, device: str) -> list[str]:
    """``torchrun -m maxsim train`` of the tiny model, with checkpoints and dev evaluations every 2 steps."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(_free_port()), "-m", "maxsim", "train", "--data", str(training_folder),
            "--output", str(out), "--base-model", str(tiny_model_dir), "--dim", "16", "--batch-size", "4",
            "--doc-maxlen", "24", "--query-maxlen", "12", "--device", device, "--no-progress-bar",
            "--save-every", "2", "--dev-fraction", "0.25", "--eval-every", "2"]


def kill_all(first: subprocess.Popen, marker) -> None:
    """SIGKILL a torchrun launched in a session of its own, and its workers: they may run in process
    groups of their own, so they are found by ``marker`` (a path only their command lines hold)
    too; none is left behind holding the port and the cores."""
    os.killpg(first.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", str(marker)], check=False)


def kill_at_first_checkpoint_then_resume(command: list[str], out, env=None, timeout: float = 300):
    """Run ``command`` (a torchrun training), kill its whole process group with SIGKILL as soon as a
    checkpoint is on disk, then run it again with ``--resume`` (the run's own settings).

    Returns (whether the first run was killed before it ended, the resumed run's CompletedProcess).
    """
    from maxsim.training import checkpoints

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + timeout
    while first.poll() is None and checkpoints.latest_checkpoint(out) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = first.poll() is None
    if killed:
        kill_all(first, out)
    _, first_err = first.communicate()
    assert killed or first.returncode == 0, first_err[-3000:]
    second = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, timeout=timeout)
    return killed, second


def test_torchrun_two_cpu_processes_train_and_resume(tiny_model_dir, training_folder, tmp_path):
    out = tmp_path / "run"
    # 12 training queries, batch 4: 3 steps an epoch, so --max-steps 8 runs 3 epochs
    command = torchrun_train_command(tiny_model_dir, training_folder, out, 2, "cpu") + ["--max-steps", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed, second = kill_at_first_checkpoint_then_resume(command, out, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.strip().splitlines() == [str(out / "best")]  # printed once, by rank 0
    assert "resumed from" in second.stderr or not killed
    assert (out / "checkpoints" / "step-8").is_dir()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 9))  # the start (step 0), each step once, by rank 0 only
    assert rows[-1]["epoch"] == pytest.approx(2 + 2 / 3)


def test_torchrun_two_processes_score_as_one_process_does(tiny_model_dir, training_folder, tmp_path):
    """``maxsim score`` under torchrun: each rank scores its share of the chunks; the folder is
    byte for byte one process's with BM25 (candidates from the corpus too), and with a ColBERT
    teacher the same lines with scores equal to float rounding."""
    import json

    from maxsim.model import ColBERT

    teacher = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24).save(tmp_path / "teacher")

    def score(out, nproc, *extra):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                    str(_free_port())] if nproc > 1 else [sys.executable]
        done = subprocess.run([*launcher, "-m", "maxsim", "score", str(training_folder), "--output", str(out),
                               "--chunk-lines", "3", "--device", "cpu", *extra], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return out

    for extra in (["--teacher", "bm25"], ["--teacher", "bm25", "--candidates", "5"]):
        one, two = score(tmp_path / f"one{len(extra)}", 1, *extra), score(tmp_path / f"two{len(extra)}", 2, *extra)
        for name in ("triples.jsonl", "queries.jsonl", "corpus.jsonl"):
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
    one, two = score(tmp_path / "c1", 1, "--teacher", str(teacher)), score(tmp_path / "c2", 2, "--teacher", str(teacher))
    rows_one = [json.loads(x) for x in (one / "triples.jsonl").read_text().splitlines()]
    rows_two = [json.loads(x) for x in (two / "triples.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in r if k != "scores"} for r in rows_one] == \
        [{k: r[k] for k in r if k != "scores"} for r in rows_two]
    for a, b in zip(rows_one, rows_two):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)


def test_torchrun_two_processes_mine_dense_as_one_process_does(tiny_model_dir, tmp_path):
    """``maxsim prepare --mine dense`` under torchrun: each rank scores its half of the corpus and
    the merged rankings give one process's negatives (rank 0 writes the folder)."""
    import json

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"question {i} about topic {i}", "positive": f"answer {i} for topic "
                                         f"{i}"}) + "\n" for i in range(12)))
    corpus = tmp_path / "extra.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"f{i}", "text": f"filler document number {i} on topic {i % 5}"})
                              + "\n" for i in range(31)))

    def command(out, nproc):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                    str(_free_port())] if nproc > 1 else [sys.executable]
        return [*launcher, "-m", "maxsim", "prepare", str(pairs), "--corpus", str(corpus), "--output", str(out),
                "--mine", "dense", "--miner-model", str(tiny_model_dir), "--negatives", "3", "--min-rank", "3",
                "--max-rank", "15", "--false-negative-margin", "0.5", "--device", "cpu"]

    def prepare(out, nproc):
        done = subprocess.run(command(out, nproc), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return out

    one, two = prepare(tmp_path / "one", 1), prepare(tmp_path / "two", 2)
    assert (one / "triples.jsonl").read_bytes() == (two / "triples.jsonl").read_bytes()
    # both ranks killed partway: the folder holds nothing or the whole file (writes are atomic), never
    # part of it, and the same command writes it all. On a fast CPU the kill may come after the write.
    killed = tmp_path / "killed"
    first = subprocess.Popen(command(killed, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    time.sleep(4)
    was_running = first.poll() is None
    if was_running:
        kill_all(first, killed)
    first.wait()
    if was_running and (killed / "triples.jsonl").exists():
        assert (killed / "triples.jsonl").read_bytes() == (one / "triples.jsonl").read_bytes()
    assert (prepare(killed, 2) / "triples.jsonl").read_bytes() == (one / "triples.jsonl").read_bytes()
    notes = json.loads((two / "manifest.json").read_text())["mining"]["notes"]
    assert any("over 2 processes" in n for n in notes), notes


def test_torchrun_two_processes_build_an_index_that_searches_as_one_process_build(tiny_model_dir, tmp_path):
    """``Retriever.index`` (``maxsim index``) under torchrun: shards and segments shared out, the
    centroids trained by rank 0 on the sample gathered from both ranks and broadcast; the index
    searches with the rankings of a one-process build of the same corpus."""
    import json

    from maxsim.index import IndexData
    from maxsim.index.build import work_folder
    from maxsim.model import ColBERT
    from maxsim.retriever import Retriever

    model = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24).save(tmp_path / "model")
    texts = [f"document {i} on subject {i % 7} and {i % 5}, with words {i * 3} to {i * 3 + 2}" for i in range(120)]
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    (tmp_path / "texts.json").write_text(json.dumps(texts))

    def index(out, nproc):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                    str(_free_port())] if nproc > 1 else [sys.executable]
        done = subprocess.run([*launcher, str(script), str(model), str(tmp_path / "texts.json"), str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return out

    one, two = index(tmp_path / "one", 1), index(tmp_path / "two", 2)
    a, b = IndexData.load(one), IndexData.load(two)
    assert len(b.segments) > 1 and a.n_documents == b.n_documents == 120 and b.verify() == []
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-6)
    ra, rb = Retriever.from_index(one), Retriever.from_index(two)
    for query in ["subject 3", "words 30", "document 77", "subject 1 and 4"]:
        ha, hb = ra.search(query, k=10), rb.search(query, k=10)
        assert [h.document_id for h in ha] == [h.document_id for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-5, atol=1e-5)
    assert not work_folder(two).exists()
    # rank 1 dies (os._exit) once every shard is spilled, before the centroids; torchrun stops the
    # other: no index is there, the shards are kept, and the same command finishes the same index
    three = tmp_path / "three"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(script), str(model), str(tmp_path / "texts.json"), str(three)]
    died = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "DIE": "1"})
    assert died.returncode != 0 and not three.exists() and len(list(work_folder(three).glob("shard-*"))) == 8
    command[command.index("--master_port") + 1] = str(_free_port())
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rc = Retriever.from_index(three)
    assert IndexData.load(three).verify() == []
    for query in ["subject 3", "words 30"]:
        assert [h.document_id for h in rc.search(query, k=10)] == [h.document_id for h in ra.search(query, k=10)]


BUILD_SCRIPT = """
import importlib, json, sys
build = importlib.import_module("maxsim.index.build")
build.SHARD_DOCUMENTS, build.SEGMENT_TOKENS = 16, 600  # many shards and segments from a small corpus
import os
if os.environ.get("DIE") and os.environ.get("RANK") == "1":  # a rank that dies after spilling its shards
    build.StreamingBuild._centroids_shared = lambda self: os._exit(9)
from maxsim.retriever import Retriever
model, texts, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
Retriever.from_pretrained(model, device="cpu").index(texts, path=out, document_ids=[f"d{i}" for i in range(len(texts))])
"""


def test_torchrun_score_killed_midway_resumes_to_the_same_folder(tiny_model_dir, training_folder, tmp_path):
    """Both ranks of a torchrun ``maxsim score`` killed (SIGKILL) once a chunk is written: only whole
    chunk files are left, and the same command finishes the folder one process writes."""
    import json

    from maxsim.model import ColBERT

    teacher = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24).save(tmp_path / "teacher")

    def command(out, nproc):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                    str(_free_port())] if nproc > 1 else [sys.executable]
        return [*launcher, "-m", "maxsim", "score", str(training_folder), "--output", str(out), "--teacher",
                str(teacher), "--chunk-lines", "1", "--batch-size", "1", "--device", "cpu"]

    out = tmp_path / "two"
    first = subprocess.Popen(command(out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while first.poll() is None and not list(out.glob("*/chunk-*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = first.poll() is None
    if killed:
        kill_all(first, out)
    first.wait()
    for chunk in out.glob("*/chunk-*.jsonl"):  # whole lines only
        assert all(json.loads(line) for line in chunk.read_text().splitlines())
    done = subprocess.run(command(out, 2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one = tmp_path / "one"
    assert subprocess.run(command(one, 1), capture_output=True, timeout=300).returncode == 0
    rows = [[json.loads(x) for x in (folder / "triples.jsonl").read_text().splitlines()] for folder in (one, out)]
    assert [[r["query_id"], r["positive_ids"], r["negative_ids"]] for r in rows[0]] == \
        [[r["query_id"], r["positive_ids"], r["negative_ids"]] for r in rows[1]]
    for a, b in zip(*rows):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
