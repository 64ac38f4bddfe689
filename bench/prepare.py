"""How long data preparation takes: SciFact's train split, and synthetic pairs by the million.

    python bench/prepare.py                                  # SciFact: BM25, then dense mining
    python bench/prepare.py --skip-dense
    python bench/prepare.py --pairs 10000 20000 200000 1000000 --skip-scifact [--mines bm25 none]

SciFact: the whole ``prepare_training_data`` run (reading, merging, BM25 indexing of 5,183
documents, ranking 809 queries, sampling, writing), the BM25 ranking alone, and dense mining
with the untrained MiniLM-ColBERT (documents encoded per second, since encoding bounds it).

Pairs: N synthetic (query, passage) pairs, passages of 30 to 120 words drawn from SciFact's
vocabulary in topics (:func:`synthetic_pairs`), each query 8 words, 6 of them from its own
passage, so that every query has one positive and the corpus grows with the pairs. Each row runs ``maxsim prepare PAIRS
--output OUT --mine M --dev-fraction 0.01`` in a process of its own and reports its wall time
and peak memory (the process's maximum resident set). Up to ``--anchor-max`` pairs it also
times the BM25 ranking the way prepare did before (bm25s's own ``retrieve``, which scores every
document for every query and selects its top k from that dense array) against today's
(:class:`maxsim.data.bm25.BM25Miner`, exact, pruned, one thread, after a call that loads its compiled
kernel), on the same queries, in this process (and the seconds each takes to index the passages),
and, where ``tantivy`` is installed, a compiled engine's time for the same queries (Rust,
block-max WAND); with ``--before REV`` it runs the same ``maxsim prepare --mine bm25`` with the package as it
was at git revision REV, for a whole-command comparison.

Figures are printed and appended as JSON lines to bench/results/prepare.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "prepare.jsonl"
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # this checkout's package, installed or not

import results_log  # noqa: E402


def record(row: dict) -> None:
    results_log.record(RESULTS, row)


def synthetic_pairs(n: int, path: Path, scifact: Path, seed: int = 0) -> Path:
    """``n`` pairs as JSONL (``query``, ``positive``), made once per (n, seed) and kept.

    A passage has 30 to 120 words: 40% drawn from one of 5,000 topics (a topic is 200 words of
    SciFact's vocabulary, uniformly) and the rest from SciFact's word frequencies; its query is 6
    of its own words and 2 drawn by frequency. (Words drawn independently by frequency alone, with
    no topics, make every long posting list one flat band of near-equal scores, which real text
    does not have.)"""
    if path.is_file():
        return path
    words = []
    with (scifact / "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            words += re.findall(r"[a-z]+", json.loads(line)["text"].lower())
    vocabulary, counts = np.unique(words, return_counts=True)
    p = counts / counts.sum()
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, len(vocabulary), size=(5000, 200))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for start in range(0, n, 100_000):
            b = min(100_000, n - start)
            lengths = rng.integers(30, 121, size=b)
            topic = rng.integers(0, len(topics), size=b)
            passages = rng.choice(len(vocabulary), size=(b, 120), p=p)
            from_topic = rng.random((b, 120)) < 0.4
            passages[from_topic] = topics[np.repeat(topic, 120).reshape(b, 120)[from_topic],
                                          rng.integers(0, 200, size=int(from_topic.sum()))]
            own = passages[np.arange(b)[:, None], (rng.random((b, 6)) * lengths[:, None]).astype(int)]
            queries = np.concatenate([own, rng.choice(len(vocabulary), size=(b, 2), p=p)], axis=1)
            for q, d, length in zip(queries, passages, lengths.tolist()):
                out.write(json.dumps({"query": " ".join(vocabulary[q]),
                                      "positive": " ".join(vocabulary[d[:length]])}) + "\n")
    tmp.replace(path)
    return path


def code_at(revision: str, workdir: Path) -> Path:
    """The package as it was at ``revision`` (git archive, unpacked once under ``workdir``)."""
    folder = workdir / f"code-{revision}"
    if not (folder / "maxsim").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", revision, "maxsim"], cwd=HERE.parent, capture_output=True,
                                 check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


#: runs ``maxsim`` with the arguments after ``-c``, then writes the process's peak resident set
#: (VmHWM: this process image only; ``ru_maxrss`` would also count the parent's memory at fork)
LAUNCH = """
import atexit, runpy, sys
def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            sys.stderr.write('\\npeak_kb ' + line.split()[1] + '\\n')
atexit.register(peak)
import maxsim
sys.stderr.write('\\npackage ' + maxsim.__file__ + '\\n')
sys.argv = ['maxsim'] + sys.argv[1:]
runpy.run_module('maxsim', run_name='__main__', alter_sys=True)
"""


def run_prepare(pairs: Path, output: Path, mine: str, code: Path | None = None) -> dict:
    """``maxsim prepare`` in a child process (the package from ``code`` when given): wall
    seconds, the peak resident memory of its process (at and before 20b914a, forked BM25
    workers shared its posting lists and added their work arrays, 16 bytes a document each; since,
    BM25 ranks on threads of this process), its counts. An
    ``output`` left by an earlier run of this bench is removed first."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-c", LAUNCH, "prepare", str(pairs), "--output", str(output), "--mine", mine,
               "--dev-fraction", "0.01"]
    env = dict(os.environ, PYTHONPATH=str(code)) if code is not None else None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        returncode = subprocess.run(command, stdout=out, stderr=err, text=True, env=env,
                                    cwd=code if code is not None else None).returncode
        seconds = time.perf_counter() - started
        err.seek(0)
        log = err.read()
    if returncode != 0:
        raise SystemExit(f"prepare failed ({returncode}): {log[-2000:]}")
    peak_kb = int(re.findall(r"^peak_kb (\d+)$", log, flags=re.M)[-1])
    package = re.findall(r"^package (.+)$", log, flags=re.M)[0]
    if code is not None and not package.startswith(str(code)):
        raise SystemExit(f"the child imported {package}, not the package under {code}")
    manifest = json.loads((output / "manifest.json").read_text())
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024),
            "queries": manifest["counts"]["queries"], "documents": manifest["counts"]["documents"],
            "triples": manifest["counts"]["triples"], "package": str(Path(package).parent)}


def ranking_anchor(pairs: Path, queries: int = 2000, k: int = 110) -> dict:
    """BM25 ranking of ``queries`` of the pairs over every passage: bm25s's dense top-k (what
    prepare did before) against BM25Miner's pruned one; seconds for each, and whether the two
    agree (the same scores at every rank; documents may differ only where scores tie)."""
    import bm25s

    from maxsim.data.bm25 import BM25Miner

    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    texts = [r["query"] for r in rows[:queries]]
    documents = [r["positive"] for r in rows]
    started = time.perf_counter()
    miner = BM25Miner(documents)
    ours_index_s = time.perf_counter() - started
    analyzer = miner.analyzer
    started = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(documents, stopwords=analyzer.stopwords, stemmer=analyzer.stemmer,
                                   show_progress=False), show_progress=False)
    bm25s_index_s = time.perf_counter() - started
    miner.rank(texts[:8], k)  # loads the compiled kernel (numba's cache; compiles it on a first run)
    started = time.perf_counter()
    ours = miner.rank(texts, k)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords=analyzer.stopwords, stemmer=analyzer.stemmer, show_progress=False)
    _, theirs = retriever.retrieve(tokens, k=k, show_progress=False)
    bm25s_s = time.perf_counter() - started
    row = {"queries_ranked": len(texts), "k": k, "bm25s_index_s": round(bm25s_index_s, 1),
           "maxsim_index_s": round(ours_index_s, 1),
           "bm25s_retrieve_ms_per_query": round(1e3 * bm25s_s / len(texts), 3),
           "maxsim_rank_ms_per_query": round(1e3 * ours_s / len(texts), 3),
           "speedup": round(bm25s_s / ours_s, 2),
           "max_score_difference": float(np.abs(np.asarray(theirs) - ours.scores).max())}
    try:
        row["tantivy_ms_per_query"] = tantivy_ms_per_query([r["positive"] for r in rows], texts, k, miner)
    except ImportError:
        pass
    return row


def tantivy_ms_per_query(documents: list[str], queries: list[str], k: int, miner) -> float:
    """A compiled engine beside it (tantivy, Rust, block-max WAND; pip install tantivy): the
    same stemmed terms, one Should query of the distinct terms per query, top ``k``, one thread."""
    import bm25s
    import tantivy

    def terms(texts):
        return bm25s.tokenize(texts, stopwords=miner.analyzer.stopwords, stemmer=miner.analyzer.stemmer,
                              show_progress=False, return_ids=False)

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("body", stored=False, tokenizer_name="whitespace", index_option="freq")
    schema = builder.build()
    with tempfile.TemporaryDirectory() as folder:
        index = tantivy.Index(schema, path=folder)
        writer = index.writer(heap_size=1_000_000_000, num_threads=2)
        for words in terms(documents):
            writer.add_document(tantivy.Document(body=" ".join(words)))
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
        searcher = index.searcher()
        started = time.perf_counter()
        for words in terms(queries):
            query = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(schema, "body", w))
                                                 for w in sorted(set(words))])
            searcher.search(query, k)
        return round(1e3 * (time.perf_counter() - started) / len(queries), 3)


def scifact_rows(scifact: Path, skip_dense: bool) -> None:
    import torch

    from maxsim.data.bm25 import BM25Miner
    from maxsim.data.mining import DenseMiner
    from maxsim.data.prepare import prepare_training_data
    from maxsim.data.training_folder import read_beir_split
    from maxsim.model import ColBERT

    queries, corpus, _ = read_beir_split(scifact, "train")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        manifest = prepare_training_data([scifact], Path(tmp) / "out", mine="bm25", negatives=10)
        whole = time.perf_counter() - started
    started = time.perf_counter()
    BM25Miner(corpus.texts).rank(queries.texts, 100)
    mining = time.perf_counter() - started
    record({"row": "scifact bm25", "prepare_s": round(whole, 2), "mining_s": round(mining, 2),
            "queries": len(queries), "documents": len(corpus), "triples": manifest["counts"]["triples"],
            "torch_threads": torch.get_num_threads()})
    if not skip_dense:
        model = ColBERT.from_pretrained()
        started = time.perf_counter()
        dense = DenseMiner(model, corpus.texts)
        tokenise = time.perf_counter() - started
        dense.rank(queries.texts, 100)
        total = time.perf_counter() - started
        record({"row": "scifact dense", "seconds": round(total, 1), "tokenise_s": round(tokenise, 2),
                "docs_per_s": round(len(corpus) / total, 1), "doc_maxlen": model.settings.doc_maxlen})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--pairs", type=int, nargs="*", default=[], help="sizes of the synthetic pair rows")
    parser.add_argument("--mines", nargs="*", default=["bm25", "none"], choices=["bm25", "none"],
                        help="the prepare rows of each size (none given: only the ranking anchor)")
    parser.add_argument("--anchor-max", type=int, default=20_000, help="largest size timed against bm25s's ranking")
    parser.add_argument("--before", help="a git revision whose prepare --mine bm25 runs beside today's, up to "
                        "--anchor-max pairs (e.g. 58f2f0d, the last commit before the pruned ranking)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "maxsim-prepare-bench"))
    args = parser.parse_args()
    scifact, workdir = Path(args.scifact), Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {results_log.machine()}")
    if not args.skip_scifact:
        scifact_rows(scifact, args.skip_dense)
    for n in args.pairs:
        pairs = synthetic_pairs(n, workdir / f"topical-pairs-{n}.jsonl", scifact)
        for mine in args.mines:
            output = workdir / f"out-{n}-{mine}"
            record({"row": f"{n} pairs, --mine {mine}", "pairs": n, "mine": mine, **run_prepare(pairs, output, mine)})
        if n <= args.anchor_max and args.before:
            output = workdir / f"out-{n}-before"
            record({"row": f"{n} pairs, --mine bm25, at {args.before}", "pairs": n, "mine": "bm25",
                    "revision": args.before, **run_prepare(pairs, output, "bm25", code_at(args.before, workdir))})
        if n <= args.anchor_max:
            record({"row": f"{n} pairs, BM25 ranking: bm25s retrieve vs maxsim", "pairs": n, **ranking_anchor(pairs)})


if __name__ == "__main__":
    main()
