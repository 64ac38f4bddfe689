"""The index at scale: build, open, add, delete, compact and search, 10 thousand to 1 million
passages, with the encoder bypassed; fast-plaid beside it on the same vectors.

    python bench/scale.py --passages 10000 100000 [1000000] [--fast-plaid /path/to/venv/bin/python]

Vectors: clustered synthetic unit vectors, 64 tokens a passage, dim 128
(:mod:`synthetic_vectors` says how they are made), 200 queries of 32 tokens. Each stage runs in
a process of its own, so that peak memory (the process's VmHWM) and open times are its own:

- build: :class:`maxsim.index.build.StreamingBuild` at nbits 2 with default settings; seconds
  and peak resident memory;
- measure: open (median of 5 loads), bytes per token on disk (every index file but the
  documents' SQLite, which holds text; the total too), search p50/p95 at k 10 with default
  settings (one query at a time), recall@10 against exact MaxSim over every passage's original
  vectors (float32), then the median of 20 one-document adds (and the slowest, which runs a
  merge), one add of 1,000 documents, the median of 5 one-document deletes, and a compaction;
- fast-plaid (``--fast-plaid PYTHON``: a virtual environment where ``pip install fast-plaid``
  was run; it pins its own torch): the same passages and queries through
  ``bench/fast_plaid_scale.py``, on the CPU, nbits 2, its default search settings.

Figures are printed and appended as JSON lines to bench/results/scale.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.jsonl"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import results_log  # noqa: E402
from synthetic_vectors import DIM, GENERATOR, TOKENS, Synthetic, exact_top  # noqa: E402

N_QUERIES = 200


def record(row: dict) -> None:
    results_log.record(RESULTS, row)


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return float("nan")


class Records:
    """The passages' records ({"id": "p<i>", "content", "metadata": None}), made on demand."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        return {"id": f"p{self.start + item}", "content": f"passage {self.start + item}", "metadata": None}


def shard_of(synthetic: Synthetic, records: list[dict]):
    from maxsim.index.build import Shard

    first = int(records[0]["id"][1:])
    vectors = synthetic.passages(first, first + len(records)).reshape(-1, DIM)
    n = len(records)
    return Shard(vectors, np.full(n, TOKENS, dtype=np.int32), np.arange(n, dtype=np.int32),
                 np.array([(0, len(r["content"])) for r in records], dtype=np.int32))


def settings():
    from maxsim.index import IndexSettings

    return IndexSettings(nbits=2, dim=DIM, max_document_tokens=TOKENS, model_digest="synthetic")


# ----------------------------------------------------------------------------- children
def child_build(n: int, path: Path) -> dict:
    import logging

    from maxsim.index.build import StreamingBuild

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    synthetic = Synthetic(n)
    started = time.perf_counter()
    StreamingBuild(path, Records(0, n), settings(), lambda shard: shard_of(synthetic, shard),
                   show_progress=True).run()
    return {"build_s": round(time.perf_counter() - started, 1), "peak_rss_gb": peak_rss_gb()}


def child_exact(n: int, out: Path) -> dict:
    synthetic = Synthetic(n)
    queries, _ = synthetic.queries(N_QUERIES)
    started = time.perf_counter()
    np.save(out, exact_top(synthetic, queries, 10))
    return {"exact_s": round(time.perf_counter() - started, 1)}


def index_bytes(path: Path) -> tuple[int, int]:
    """(bytes of every file but the documents' text store, bytes of every file)."""
    files = [p for p in path.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    return total - sum(p.stat().st_size for p in files if p.name == "documents.sqlite"), total


class Writer:
    """Writes to one index as a Retriever makes them, holding the version it last saw."""

    def __init__(self, path: Path, data) -> None:
        self.path, self.data = path, data

    def timed(self, change) -> float:
        """Seconds for one write: the lock, the version check, the change, the save (with the
        merge policy)."""
        from maxsim.index import IndexData, index_lock
        from maxsim.index.writer import save

        started = time.perf_counter()
        with index_lock(self.path):
            if IndexData.current_version(self.path) != self.data.version:
                self.data = IndexData.load(self.path)
            self.data = save(change(self.data), self.path)
        return time.perf_counter() - started


def child_measure(n: int, path: Path, exact_file: Path) -> dict:
    import torch

    from maxsim.index import IndexData, compact_index, search
    from maxsim.index.writer import with_documents, without_documents

    opens = []
    for _ in range(5):
        started = time.perf_counter()
        data = IndexData.load(path)
        opens.append(time.perf_counter() - started)
    without_text, total = index_bytes(path)
    row = {"open_s": round(float(np.median(opens)), 4), "segments": len(data.segments), "n_tokens": data.n_tokens,
           "bytes_per_token": round(without_text / data.n_tokens, 2),
           "bytes_per_token_with_text": round(total / data.n_tokens, 2)}
    synthetic = Synthetic(n)
    queries, _ = synthetic.queries(N_QUERIES)
    q, mask = torch.from_numpy(queries), torch.ones(queries.shape[:2], dtype=torch.bool)
    search(data, q[:5], mask[:5], 10)  # warm
    latencies, found = [], []
    for i in range(len(q)):
        started = time.perf_counter()
        ranking = search(data, q[i : i + 1], mask[i : i + 1], 10)
        latencies.append(time.perf_counter() - started)
        found.append(data.chunk_documents(ranking.positions[0][ranking.positions[0] >= 0]))
    exact = np.load(exact_file)
    row.update(search_p50_ms=round(1e3 * float(np.percentile(latencies, 50)), 2),
               search_p95_ms=round(1e3 * float(np.percentile(latencies, 95)), 2),
               recall_at_10=round(float(np.mean([len(np.intersect1d(f, e)) / 10 for f, e in zip(found, exact)])), 4))
    extra = Synthetic(n + 1100)  # passages past the index's, for the adds
    writer = Writer(path, data)

    def adding(start: int, end: int):
        vectors = extra.passages(start, end).reshape(-1, DIM)
        records = Records(start, end)[:]

        def change(index: IndexData) -> IndexData:
            codes, residuals = index.compress(vectors)
            return with_documents(index, codes, residuals, np.full(end - start, TOKENS, dtype=np.int32), records,
                                        np.arange(end - start), [(0, len(r["content"])) for r in records])
        return change

    adds = [writer.timed(adding(n + i, n + i + 1)) for i in range(20)]
    row.update(add_one_s=round(float(np.median(adds)), 4), add_one_max_s=round(max(adds), 4),
               add_1000_s=round(writer.timed(adding(n + 20, n + 1020)), 3))
    deletes = [writer.timed(lambda index, i=i: without_documents(index,
        list(index.positions_of([f"p{i * 7}"]).values()))) for i in range(5)]
    row["delete_one_s"] = round(float(np.median(deletes)), 4)
    started = time.perf_counter()
    compact_index(path)
    row["compact_s"] = round(time.perf_counter() - started, 2)
    return row


def child_scifact(folder: Path, path: Path, model: str) -> dict:
    """SciFact's corpus through the model (``base``: the untrained bundled MiniLM), each chunk
    encoded once; the index built from those vectors and exact MaxSim over the same vectors,
    so that recall measures the index alone. 200 test queries."""
    import torch

    from maxsim.backends import Chunking
    from maxsim.data.training_folder import read_corpus, read_queries
    from maxsim.index import IndexData, IndexSettings, search
    from maxsim.index.build import Shard, StreamingBuild
    from maxsim.retriever import Retriever

    retriever = Retriever.from_pretrained(None if model == "base" else model)
    corpus = read_corpus(folder / "corpus.jsonl")
    tested = {line.split("\t")[0] for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    queries = read_queries(folder / "queries.jsonl")
    texts = [t for i, t in zip(queries.ids, queries.texts) if i in tested][:N_QUERIES]
    records = [{"id": i, "content": t, "metadata": None} for i, t in zip(corpus.ids, corpus.texts)]
    started = time.perf_counter()
    vectors, doclens, chunk_docs, spans = retriever.encoder.chunks(corpus.texts, Chunking(True, None), 64)
    encode_s = time.perf_counter() - started
    offsets = np.concatenate([[0], np.cumsum(doclens, dtype=np.int64)])
    first_chunk = np.searchsorted(chunk_docs, np.arange(len(records) + 1))
    position = {r["id"]: i for i, r in enumerate(records)}
    spans = np.asarray(spans, dtype=np.int32)

    def encode(shard):
        a, b = position[shard[0]["id"]], position[shard[-1]["id"]] + 1
        c0, c1 = first_chunk[a], first_chunk[b]
        return Shard(vectors[offsets[c0] : offsets[c1]], doclens[c0:c1], chunk_docs[c0:c1] - a, spans[c0:c1])

    settings = IndexSettings(nbits=2, dim=retriever.model.settings.dim, max_document_tokens=retriever.model.settings.
                             doc_maxlen, model_digest=retriever.model.digest())
    started = time.perf_counter()
    StreamingBuild(path, records, settings, encode).run()
    build_s = time.perf_counter() - started
    q, mask = retriever.query_vectors(texts)
    data = IndexData.load(path)
    chunk_vectors = torch.from_numpy(vectors)
    exact = []
    for i in range(len(q)):
        sim = q[i][mask[i]] @ chunk_vectors.T  # (Lq, T)
        chunk_scores = torch.segment_reduce(sim.T, "max", lengths=torch.from_numpy(doclens.astype(np.int64)),
                                            axis=0).sum(dim=1)
        doc_scores = torch.full((len(records),), -torch.inf).scatter_reduce(
            0, torch.from_numpy(chunk_docs.astype(np.int64)), chunk_scores, "amax")
        exact.append(doc_scores.topk(10).indices.numpy())
    latencies, recall = [], []
    for i in range(len(q)):
        started = time.perf_counter()
        ranking = search(data, q[i : i + 1], mask[i : i + 1], 10)
        latencies.append(time.perf_counter() - started)
        found = data.chunk_documents(ranking.positions[0][ranking.positions[0] >= 0])
        recall.append(len(np.intersect1d(found, exact[i])) / 10)
    without_text, total = index_bytes(path)
    return {"encode_s": round(encode_s, 1), "build_s": round(build_s, 1), "n_tokens": data.n_tokens,
            "chunks": data.n_chunks, "segments": len(data.segments),
            "bytes_per_token": round(without_text / data.n_tokens, 2),
            "bytes_per_token_with_text": round(total / data.n_tokens, 2),
            "search_p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 2),
            "search_p95_ms": round(1e3 * float(np.percentile(latencies, 95)), 2),
            "recall_at_10": round(float(np.mean(recall)), 4), "queries": len(q)}


def run_child(*args: str, python: str = sys.executable, script: Path = Path(__file__)) -> dict:
    """Run one stage in a process of its own (its log lines go to this one's standard error);
    returns the JSON line it prints last."""
    done = subprocess.run([python, str(script), *args], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{' '.join(args[:3])}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--fast-plaid", help="a python whose environment has fast-plaid installed")
    parser.add_argument("--fast-plaid-max", type=int, default=100_000, help="largest size run through fast-plaid")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "maxsim-scale-bench"))
    parser.add_argument("--scifact", help="also a row of SciFact's real vectors (a BEIR folder)")
    parser.add_argument("--model", default="base", help="the model that encodes SciFact (default: the bundled MiniLM)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, path, *rest = args.child
        rows = {"build": lambda: child_build(int(n), Path(path)),
                "exact": lambda: child_exact(int(n), Path(path)),
                "measure": lambda: child_measure(int(n), Path(path), Path(rest[0])),
                "scifact": lambda: child_scifact(Path(n), Path(path), rest[0])}
        print(json.dumps(rows[kind]()))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.scifact:
        path = work / "index-scifact"
        shutil.rmtree(path, ignore_errors=True)
        record({"system": "maxsim", "corpus": "scifact", "model": args.model, "nbits": 2,
                **run_child("--child", "scifact", args.scifact, str(path), args.model)})
    for n in args.passages:
        exact_file = work / f"exact-{GENERATOR}-{n}.npy"
        exact_s = None
        if not exact_file.is_file():
            exact_s = run_child("--child", "exact", str(n), str(exact_file))["exact_s"]
        path = work / f"index-{n}"
        shutil.rmtree(path, ignore_errors=True)
        row = {"system": "maxsim", "generator": GENERATOR, "passages": n, "tokens_per_passage": TOKENS, "dim": DIM,
               "nbits": 2,
               **run_child("--child", "build", str(n), str(path))}
        row.update(run_child("--child", "measure", str(n), str(path), str(exact_file)))
        if exact_s is not None:
            row["exact_search_s"] = exact_s
        record(row)
        if args.fast_plaid and n <= args.fast_plaid_max:
            fp = run_child("--passages", str(n), "--workdir", str(work), "--exact", str(exact_file),
                           python=args.fast_plaid, script=HERE / "fast_plaid_scale.py")
            record({"system": "fast-plaid", "generator": GENERATOR, "passages": n, "tokens_per_passage": TOKENS,
                    "dim": DIM, "nbits": 2,
                    **fp})


if __name__ == "__main__":
    main()
