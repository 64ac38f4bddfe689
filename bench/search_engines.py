"""Search engines side by side on the same token vectors: maxsim, maxsim before its WARP-style
search, xtr-warp-rs and fast-plaid, each in a process (and virtual environment) of its own.

    python bench/search_engines.py --corpora scifact synthetic-100k --model runs/journey/run/best \\
        --before /path/to/a/checkout/of/maxsim-before \\
        --xtr-python bench/.venv-xtr-warp/bin/python --fast-plaid-python bench/.venv-fast-plaid/bin/python

Corpora (made once into ``--workdir``, then given to every engine as the same files):

- ``scifact``: SciFact's 5,183 abstracts through ``--model`` (not split: the first doc_maxlen
  tokens, so that the engines and exact MaxSim see the same vectors), its 300 test queries and
  their judgements;
- ``scifact-sentences-50k``: the first 50,000 sentences of SciFact's abstracts through the base
  model (``--sentence-model``), the same 300 queries, no judgements;
- ``synthetic-100k``, ``synthetic-1m``: ``bench/synthetic_vectors.py``, 200 queries
  (``synthetic-10k``: the same at 10,000 passages, to try the script quickly). Their recall
  is 1.00 at every size for every engine tried so far: the generator's families are far easier to
  tell apart than real text, so read those rows for cost, not for quality.

For each engine, corpus, thread count (``--threads``, default 1 and 2) and k (10 and 100): p50 and
p95 latency of one query at a time, queries a second over all queries in one call, recall@10 and
recall@100 against exact MaxSim over the float32 vectors, nDCG@10 where there are judgements,
bytes per token on disk, build time and peak RSS (of the process that built and searched). Query
encoding is excluded, except in ``end_to_end_p50_ms`` (maxsim on the text corpora, per precision,
beside ``encode_p50_ms``, the encoding's share of it; through the index of the nbits a new index
of the corpus gets by default, or every nbits with ``--ndocs``). ``--ndocs N`` searches maxsim
with N chunks rescored exactly instead of its default (0: none, WARP's scores alone; rows carry
``ndocs``), to set it beside another engine at a recall no higher than maxsim's.
Each row is appended to ``bench/results/search_engines.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic_vectors import DIM, TOKENS, Synthetic, exact_top  # noqa: E402

ENGINES = ("maxsim", "maxsim-before", "xtr-warp-rs", "fast-plaid")
CORPORA = ("scifact", "scifact-sentences-50k", "synthetic-100k", "synthetic-1m", "synthetic-10k")
SYNTHETIC = {"synthetic-100k": 100_000, "synthetic-1m": 1_000_000, "synthetic-10k": 10_000}
SYNTHETIC_QUERIES = 200
SENTENCES = 50_000
TEXT_CORPORA = ("scifact", "scifact-sentences-50k")
DEPTH = 100  # the deepest k measured, and of the exact rankings


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return float("nan")


# ----------------------------------------------------------------------------- corpora (parent)
def prepare(corpus: str, folder: Path, beir: Path, model: str, sentence_model: str, split: str = "test") -> None:
    """Write ``folder``: meta.json, queries.npy (Q, Lq, dim) float32, query_mask.npy (Q, Lq) bool,
    exact.npy (Q, DEPTH) document positions by exact MaxSim; for real corpora also
    doc_vectors.npy (T, dim) float32, doclens.npy (N,), query_texts.json and, with judgements,
    qrels.json ({query position: {document position: relevance}})."""
    if (folder / "meta.json").is_file() and (folder / "exact.npy").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if corpus in SYNTHETIC:
        # queries and meta first, so that an engine's child may build while exact MaxSim runs
        synthetic = Synthetic(SYNTHETIC[corpus])
        queries, _ = synthetic.queries(SYNTHETIC_QUERIES)
        np.save(folder / "queries.npy", queries)
        np.save(folder / "query_mask.npy", np.ones(queries.shape[:2], dtype=bool))
        meta = {"passages": synthetic.n, "tokens": synthetic.n * TOKENS, "dim": DIM, "model": "synthetic"}
        (folder / "meta.json").write_text(json.dumps(meta))
        np.save(folder / "exact.npy", exact_top(synthetic, queries, DEPTH))
        return
    meta = _prepare_text(corpus, folder, beir, model if corpus == "scifact" else sentence_model, split)
    (folder / "meta.json").write_text(json.dumps(meta))


def _prepare_text(corpus: str, folder: Path, beir: Path, model: str, split: str) -> dict:
    import torch

    from maxsim.backends import Chunking
    from maxsim.data.training_folder import read_beir_split
    from maxsim.retriever import Retriever

    queries, documents, qrels = read_beir_split(beir, split)
    retriever = Retriever.from_pretrained(None if model == "base" else model)
    texts = documents.texts
    if corpus == "scifact-sentences-50k":
        texts = [s for t in documents.texts for s in re.split(r"(?<=[.!?])\s+", t) if s.strip()][:SENTENCES]
    started = time.perf_counter()
    vectors, doclens, _, _ = retriever.encoder.chunks(texts, Chunking(False, None), 64)
    encode_s = time.perf_counter() - started
    q, mask = retriever.query_vectors(queries.texts)
    np.save(folder / "doc_vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    np.save(folder / "doclens.npy", np.asarray(doclens, dtype=np.int64))
    np.save(folder / "queries.npy", q.numpy())
    np.save(folder / "query_mask.npy", mask.numpy())
    (folder / "query_texts.json").write_text(json.dumps(queries.texts))
    np.save(folder / "exact.npy", exact_ranking(torch.from_numpy(vectors), doclens, q, mask))
    if corpus == "scifact":
        position = {d: i for i, d in enumerate(documents.ids)}
        judged = {str(i): {str(position[d]): r for d, r in qrels.get(qid, {}).items() if d in position}
                  for i, qid in enumerate(queries.ids)}
        (folder / "qrels.json").write_text(json.dumps(judged))
    return {"passages": len(texts), "tokens": int(np.sum(doclens)), "dim": int(vectors.shape[1]), "model": model,
            "encode_s": round(encode_s, 1)}


def exact_ranking(vectors, doclens, q, mask) -> np.ndarray:
    """(Q, DEPTH) document positions by exact MaxSim over every document's float32 vectors."""
    import torch

    lengths = torch.from_numpy(np.asarray(doclens, dtype=np.int64))
    out = []
    for i in range(len(q)):
        sim = vectors @ q[i][mask[i]].T  # (T, Lq)
        scores = torch.segment_reduce(sim, "max", lengths=lengths, axis=0).sum(dim=1)
        out.append(scores.topk(min(DEPTH, len(scores))).indices.numpy())
    return np.stack(out)


# ----------------------------------------------------------------------------- engines (children)
def documents_of(folder: Path, meta: dict):
    """Each document's (L, dim) float32 vectors, in order (synthetic ones made block by block)."""
    if "passages" in meta and meta.get("model") == "synthetic":
        synthetic = Synthetic(meta["passages"])
        for start in range(0, synthetic.n, 4096):
            yield from synthetic.passages(start, min(start + 4096, synthetic.n))
        return
    vectors = np.load(folder / "doc_vectors.npy", mmap_mode="r")
    offsets = np.concatenate([[0], np.cumsum(np.load(folder / "doclens.npy"))])
    for a, b in zip(offsets[:-1], offsets[1:]):
        yield np.asarray(vectors[a:b])


class MaxsimEngine:
    """maxsim's index (this checkout's, or another's on PYTHONPATH for ``maxsim-before``)."""

    def __init__(self, path: Path, nbits: int, ndocs: int | None = None) -> None:
        self.path, self.nbits, self.ndocs = path, nbits, ndocs

    def build(self, folder: Path, meta: dict) -> None:
        from maxsim.index import IndexSettings
        from maxsim.index.build import Shard, StreamingBuild

        documents = documents_of(folder, meta)
        records = [{"id": f"d{i}", "content": "", "metadata": None} for i in range(meta["passages"])]

        def encode(shard):
            parts = [next(documents) for _ in shard]
            lengths = np.array([len(p) for p in parts], dtype=np.int32)
            return Shard(np.concatenate(parts), lengths, np.arange(len(parts), dtype=np.int32),
                         np.zeros((len(parts), 2), dtype=np.int32))

        settings = IndexSettings(nbits=self.nbits, dim=meta["dim"], max_document_tokens=1 << 16,
                                 model_digest="bench")
        StreamingBuild(self.path, records, settings, encode).run()

    def load(self) -> None:
        from maxsim.index import IndexData

        self.data = IndexData.load(self.path)

    def search(self, q, mask, k: int, threads: int) -> np.ndarray:
        import torch

        from maxsim.index import search, search_pool

        torch.set_num_threads(threads)
        q, mask = torch.from_numpy(q), torch.from_numpy(mask)
        settings = {} if self.ndocs is None else {"ndocs": self.ndocs}  # (maxsim-before's search: its own default)
        if len(q) == 1 or threads == 1:
            ranking = search(self.data, q, mask, k, **settings)
        else:
            with search_pool(threads) as pool:
                ranking = search(self.data, q, mask, k, pool=pool, **settings)
        return _padded([self.data.chunk_documents(row[row >= 0]) for row in ranking.positions], k)


class XtrWarpEngine:
    """xtr-warp-rs, its defaults (nbits 4), on the CPU."""

    def __init__(self, path: Path, nbits: int | None) -> None:
        self.path, self.nbits = path, nbits

    def build(self, folder: Path, meta: dict) -> None:
        import torch
        from xtr_warp import XTRWarp

        documents = [torch.from_numpy(d) for d in documents_of(folder, meta)]
        options = {} if self.nbits is None else {"nbits": self.nbits}
        XTRWarp(index=str(self.path), device="cpu").create(documents, device="cpu", show_progress=False, **options)

    def load(self) -> None:
        from xtr_warp import XTRWarp

        self.index = XTRWarp(index=str(self.path), device="cpu")
        self.index.load(device="cpu")

    def search(self, q, mask, k: int, threads: int) -> np.ndarray:
        import torch

        torch.set_num_threads(threads)
        queries = [torch.from_numpy(q[i][mask[i]]) for i in range(len(q))]
        hits = self.index.search(queries if len(queries) > 1 else queries[0][None], top_k=k, num_threads=threads,
                                 show_progress=False)
        return _padded([[doc for doc, _ in row] for row in hits], k)


class FastPlaidEngine:
    """fast-plaid, its defaults, on the CPU."""

    def __init__(self, path: Path, nbits: int | None) -> None:
        self.path, self.nbits = path, nbits

    def build(self, folder: Path, meta: dict) -> None:
        import torch
        from fast_plaid import search as fast_plaid_search

        documents = [torch.from_numpy(d) for d in documents_of(folder, meta)]
        options = {} if self.nbits is None else {"nbits": self.nbits}
        fast_plaid_search.FastPlaid(index=str(self.path), device="cpu").create(documents_embeddings=documents,
                                                                                **options)

    def load(self) -> None:
        from fast_plaid import search as fast_plaid_search

        self.index = fast_plaid_search.FastPlaid(index=str(self.path), device="cpu")

    def search(self, q, mask, k: int, threads: int) -> np.ndarray:
        import torch

        torch.set_num_threads(threads)
        hits = self.index.search(torch.from_numpy(q), top_k=k, show_progress=False)
        return _padded([[doc for doc, _ in row] for row in hits], k)


def _padded(rows, k: int) -> np.ndarray:
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = np.asarray(row, dtype=np.int64)[:k]
    return out


def child(engine: str, folder: Path, work: Path, threads: list[int], ks: list[int], nbits: int | None,
          ndocs: int | None = None) -> None:
    """Build the engine's index of ``folder``'s corpus, then time its searches; prints one JSON
    line of timings and rankings (saved beside, as .npy) for the parent to score. ``ndocs``:
    maxsim's chunks rescored exactly (None: its default)."""
    meta = json.loads((folder / "meta.json").read_text())
    path = work / f"{engine}-{nbits or 'default'}"
    kinds = {"maxsim": MaxsimEngine, "maxsim-before": MaxsimEngine, "xtr-warp-rs": XtrWarpEngine,
             "fast-plaid": FastPlaidEngine}
    runner = kinds[engine](path, nbits if nbits is not None or engine not in ("maxsim", "maxsim-before") else 2)
    if engine == "maxsim":
        runner.ndocs = ndocs
    if not path.exists():
        started = time.perf_counter()
        runner.build(folder, meta)
        build_s = round(time.perf_counter() - started, 1)
        (work / f"{path.name}.build.json").write_text(json.dumps({"build_s": build_s}))
    build_s = json.loads((work / f"{path.name}.build.json").read_text())["build_s"]
    runner.load()
    q, mask = np.load(folder / "queries.npy"), np.load(folder / "query_mask.npy")
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    rows = []
    for t in threads:
        for k in ks:
            runner.search(q[:5], mask[:5], k, t)  # warm: compile, map, trace
            for i in range(min(5, len(q))):
                runner.search(q[i : i + 1], mask[i : i + 1], k, t)
            latencies, found = [], []
            for i in range(len(q)):
                started = time.perf_counter()
                found.append(runner.search(q[i : i + 1], mask[i : i + 1], k, t)[0])
                latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            runner.search(q, mask, k, t)
            batch_s = time.perf_counter() - started
            ranking = work / f"{path.name}-t{t}-k{k}{'' if ndocs is None else f'-ndocs{ndocs}'}.npy"
            np.save(ranking, np.stack(found))
            rows.append({"threads": t, "k": k, "search_p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 3),
                         "search_p95_ms": round(1e3 * float(np.percentile(latencies, 95)), 3),
                         "qps": round(len(q) / batch_s, 1), "ranking": str(ranking)})
    print(json.dumps({"build_s": build_s, "bytes_per_token": round(size / meta["tokens"], 2),
                      "peak_rss_gb": peak_rss_gb(), "version": _version(engine), "rows": rows}))


def _version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    name = {"xtr-warp-rs": "xtr-warp-rs", "fast-plaid": "fast-plaid"}.get(engine, "maxsim")
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- scoring (parent)
def quality(folder: Path, ranking: np.ndarray) -> dict:
    """recall@10 and @100 (where the ranking is that deep) against exact MaxSim; nDCG@10 where
    the corpus has judgements."""
    exact = np.load(folder / "exact.npy")
    out = {"recall_at_10": round(float(np.mean([len(np.intersect1d(r[:10], e[:10])) / 10
                                                for r, e in zip(ranking, exact)])), 4)}
    out["recall_at_100"] = (round(float(np.mean([len(np.intersect1d(r[:100], e[:100])) / 100
                                                 for r, e in zip(ranking, exact)])), 4)
                            if ranking.shape[1] >= 100 else None)
    out["ndcg_at_10"] = None
    if (folder / "qrels.json").is_file():
        from maxsim.evaluation import evaluate_run

        qrels = json.loads((folder / "qrels.json").read_text())
        run = {str(i): {str(d): float(len(row) - r) for r, d in enumerate(row[:10].tolist()) if d >= 0}
               for i, row in enumerate(ranking)}
        out["ndcg_at_10"] = round(evaluate_run({q: v for q, v in qrels.items() if v}, run, ("ndcg@10",))["ndcg@10"], 4)
    return out


def default_nbits(folder: Path) -> int:
    """The nbits a new index of the corpus in ``folder`` gets by default (the one measured end to end)."""
    from maxsim.index_settings import nbits_for

    return nbits_for(len(np.load(folder / "doclens.npy", mmap_mode="r")))


def end_to_end(folder: Path, model: str, work: Path, precisions: list[str], threads: list[int],
               nbits: int, ndocs: int | None = None) -> dict:
    """p50 ms of one query at a time, text to hits, through maxsim's ``nbits`` index of ``folder``
    (built by its child), and of its encoding alone: {(threads, precision): (end to end ms,
    encoding ms)}."""
    import torch

    from maxsim.index import IndexData, search
    from maxsim.retriever import Retriever

    texts = json.loads((folder / "query_texts.json").read_text())
    data = IndexData.load(work / f"maxsim-{nbits}")
    retriever = Retriever.from_pretrained(None if model == "base" else model)
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        for precision in precisions:
            retriever.encoder.query_precision = precision
            for text in texts[:5]:
                q, mask = retriever.query_vectors([text])
                search(data, q, mask, 10, ndocs=ndocs)
            latencies, encodings = [], []
            for text in texts:
                started = time.perf_counter()
                q, mask = retriever.query_vectors([text])
                encoded = time.perf_counter()
                search(data, q, mask, 10, ndocs=ndocs)
                latencies.append(time.perf_counter() - started)
                encodings.append(encoded - started)
            out[t, precision] = tuple(round(1e3 * float(np.percentile(x, 50)), 2) for x in (latencies, encodings))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=["scifact", "synthetic-100k"])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--beir", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--model", default="base", help="the model of the scifact corpus (a checkpoint folder)")
    parser.add_argument("--sentence-model", default="base")
    parser.add_argument("--workdir", default="runs/search-engines")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--k", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--nbits", type=int, nargs="+", default=[2, 4], help="maxsim's, one row each")
    parser.add_argument("--before", help="a checkout of maxsim before its WARP-style search (maxsim-before)")
    parser.add_argument("--xtr-python", default=str(HERE / ".venv-xtr-warp" / "bin" / "python"))
    parser.add_argument("--fast-plaid-python", default=str(HERE / ".venv-fast-plaid" / "bin" / "python"))
    parser.add_argument("--precisions", nargs="+", default=["float32", "bf16", "int8"])
    parser.add_argument("--ndocs", type=int, help="maxsim's chunks rescored exactly [default: its own default]")
    parser.add_argument("--results", default=str(HERE / "results" / "search_engines.jsonl"))
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "FOLDER", "WORK", "NBITS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, folder, work, nbits = args.child
        return child(engine, Path(folder), Path(work), args.threads, args.k, None if nbits == "default" else int(nbits),
                     args.ndocs)
    from results_log import record

    work = Path(args.workdir)
    for corpus in args.corpora:
        folder = work / corpus
        prepare(corpus, folder, Path(args.beir), args.model, args.sentence_model)
        for engine in args.engines:
            python, env = sys.executable, dict(os.environ)
            if engine == "maxsim-before":
                env["PYTHONPATH"] = str(Path(args.before).resolve())
            python = {"xtr-warp-rs": args.xtr_python, "fast-plaid": args.fast_plaid_python}.get(engine, python)
            for nbits in (args.nbits if engine.startswith("maxsim") else ["default"]):
                command = [python, __file__, "--child", engine, str(folder), str(folder), str(nbits),
                           "--threads", *map(str, args.threads), "--k", *map(str, args.k)]
                ndocs = args.ndocs if engine == "maxsim" else None
                if ndocs is not None:
                    command += ["--ndocs", str(ndocs)]
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                e2e = {}
                if engine == "maxsim" and corpus in TEXT_CORPORA and (int(nbits) == default_nbits(folder)
                                                                      or ndocs is not None):
                    e2e = end_to_end(folder, args.model if corpus == "scifact" else args.sentence_model, folder,
                                     args.precisions, args.threads, int(nbits), ndocs)
                for row in result["rows"]:
                    ranking = np.load(row.pop("ranking"))
                    figures = {"engine": engine, "corpus": corpus, "nbits": None if nbits == "default" else int(nbits),
                               "version": result["version"], **({} if ndocs is None else {"ndocs": ndocs}),
                               **row, **quality(folder, ranking),
                               "bytes_per_token": result["bytes_per_token"], "build_s": result["build_s"],
                               "peak_rss_gb": result["peak_rss_gb"]}
                    extra = [{}]
                    if e2e and row["k"] == 10:
                        extra = [{"precision": p, "end_to_end_p50_ms": e2e[row["threads"], p][0],
                                  "encode_p50_ms": e2e[row["threads"], p][1]} for p in args.precisions]
                    for more in extra:
                        record(Path(args.results), {**figures, **more},
                               command="python bench/search_engines.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
