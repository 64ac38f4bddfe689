"""What the bounds cost: filters at 100,000 documents, and the segment count after 1,000 adds of
random sizes.

    python bench/limits.py [--documents 100000] [--adds 1000] [--before aa15131]

- filters: an index of ``--documents`` documents with fat metadata (about 1 KB each: a year, a
  source, a list of tags, a nested journal, a score and a text blob), its vectors random (a
  filter reads only the documents' SQLite): one equality, a five-condition filter, a
  10,000-value ``in`` over a number field and over the ids. ``seconds``: the filter's SQL over
  the segment's documents (median of 3), and microseconds a document; ``allowed_seconds``:
  the whole of what a search's first use of the filter costs (its checks, the SQL, the chunk
  mask; no filter kept). Beside them, the
  same filters through the filter code of ``--before`` (the commit before ``in`` lists became
  one JSON parameter), which refused more than about 996 values (SQLite's "Expression tree too
  large"): its largest ``in`` that runs is timed instead, and the 10,000-value one reports the
  error.
- segments: ``--adds`` adds of 1 to 50 documents each (random, 20 to 200 tokens a document)
  through ``maxsim.index.writer.save`` under the writer lock, as ``Retriever.add``
  writes them; the segment count after every add (most, last), the files a fresh open holds,
  and the seconds an add takes (median, slowest). Beside it, the former policy (merge ten
  adjacent segments of one size level, floor(log10(tokens))) run on the same sizes, on the
  sizes alone.

Figures are printed and appended as JSON lines to bench/results/limits.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import results_log  # noqa: E402

from maxsim.index import IndexData, index_lock  # noqa: E402
from maxsim.index.codec import Codec  # noqa: E402
from maxsim.index.filters import Filter  # noqa: E402
from maxsim.index.manifest import IndexSettings  # noqa: E402
from maxsim.index.segment import Segment  # noqa: E402
from maxsim.index.writer import save  # noqa: E402

RESULTS = HERE / "results" / "limits.jsonl"
DIM, NBITS, CENTROIDS = 16, 2, 256
SOURCES = ["pubmed", "arxiv", "pmc", "biorxiv", "medrxiv"]


def metadata(i: int, rng: random.Random) -> dict:
    return {"year": 1990 + i % 35, "source": SOURCES[i % 5], "tags": rng.sample(["a", "b", "c", "d", "e", "f"], 2),
            "journal": {"name": f"J{i % 97}", "issue": i % 12}, "score": rng.random(),
            "blob": "".join(rng.choices("abcdefghij ", k=900))}


def empty_index(rng: np.random.Generator) -> IndexData:
    centroids = rng.standard_normal((CENTROIDS, DIM)).astype(np.float32)
    codec = Codec.fit(rng.standard_normal((4096, DIM)).astype(np.float32) * 0.1, NBITS)
    settings = IndexSettings(nbits=NBITS, dim=DIM, max_document_tokens=256, model_digest="synthetic")
    return IndexData(settings, centroids, codec, [])


def segment_of(records: list[dict], tokens: list[int], rng: np.random.Generator) -> Segment:
    total = int(sum(tokens))
    return Segment.from_arrays(rng.integers(0, CENTROIDS, total), rng.integers(0, 256, (total, DIM * NBITS // 8),
                                                                                  dtype=np.uint8),
                               np.asarray(tokens), np.arange(len(records)), [(0, 1)] * len(records), records,
                               CENTROIDS)


def timed(run, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def former_filter_module(commit: str) -> types.ModuleType | None:
    """maxsim.index.filters as it was at ``commit`` (None if git cannot show it)."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:maxsim/index/filters.py"], cwd=HERE, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("former_filters")
    exec(compile(source, f"{commit}:maxsim/index/filters.py", "exec"), module.__dict__)  # our own code, from git
    return module


def bench_filters(n: int, path: Path, before: str) -> list[dict]:
    rng, np_rng = random.Random(0), np.random.default_rng(0)
    records = [{"id": f"doc{i}", "content": "text", "metadata": metadata(i, rng)} for i in range(n)]
    data = empty_index(np_rng)
    data.segments = [segment_of(records, [4] * n, np_rng)]
    with index_lock(path):
        save(data, path)
    filters = {
        "one equality": {"source": "pubmed"},
        "five conditions": {"year": {"gte": 2000, "lt": 2020}, "source": {"in": ["pubmed", "pmc"]}, "tags": "a",
                            "journal.name": {"ne": "J3"}, "score": {"gt": 0.25}},
        "in, 10,000 numbers": {"journal.issue": {"in": list(range(10_000))}},
        "in, 10,000 ids": {"id": {"in": [f"doc{i}" for i in range(0, 3 * n, 3)][:10_000]}},
    }
    former = former_filter_module(before)
    rows = []
    data = IndexData.load(path)
    documents = data.segments[0].documents
    for name, spec in filters.items():
        condition = Filter(spec)
        matched = len(documents.positions_where(condition.sql, condition.params))
        seconds = timed(lambda condition=condition: documents.positions_where(condition.sql, condition.params))

        def first_use(spec=spec):
            data._filters.clear()
            data.allowed(spec)

        row = {"bench": "filter", "documents": n, "filter": name, "seconds": round(seconds, 4),
               "us_per_document": round(seconds / n * 1e6, 3), "allowed_seconds": round(timed(first_use), 4),
               "matched": matched}
        if former is not None:
            row.update(former_filter(former, path, spec, n))
        results_log.record(RESULTS, row)
        rows.append(row)
    return rows


def former_filter(former: types.ModuleType, path: Path, spec: dict, n: int) -> dict:
    """The same filter through the former SQL (its largest ``in`` that runs, where it refuses this one)."""
    import sqlite3

    data = IndexData.load(path)
    documents = data.segments[0].documents

    def run(spec):
        condition = former.Filter(spec)
        return len(documents.positions_where(condition.sql, condition.params))

    try:
        run(spec)
        return {"before_seconds": round(timed(lambda: run(spec)), 4), "before_error": None}
    except sqlite3.Error as err:
        (key, ops), = [(k, v) for k, v in spec.items() if isinstance(v, dict) and "in" in v]
        values = ops["in"]
        lo, hi = 1, len(values)
        while lo < hi:  # the longest list it takes
            mid = (lo + hi + 1) // 2
            try:
                run({key: {"in": values[:mid]}})
                lo = mid
            except sqlite3.Error:
                hi = mid - 1
        shorter = {key: {"in": values[:lo]}}
        condition = Filter(shorter)
        now = timed(lambda: documents.positions_where(condition.sql, condition.params))
        return {"before_error": str(err), "before_largest_in": lo,
                "before_seconds_at_largest_in": round(timed(lambda: run(shorter)), 4),
                "seconds_at_largest_in": round(now, 4)}


def former_policy_count(sizes: list[int]) -> tuple[int, int]:
    """(most, last) segments under the former policy (ten adjacent segments of one level
    floor(log10(tokens)) merged, at most 2,000,000 tokens), on the sizes alone."""
    segments, most = [], 0
    for size in sizes:
        segments.append(size)
        merged = True
        while merged:
            merged = False
            for start in range(len(segments) - 9):
                run = segments[start : start + 10]
                if len({int(math.log10(max(s, 1))) for s in run}) == 1 and sum(run) <= 2_000_000:
                    segments[start : start + 10] = [sum(run)]
                    merged = True
                    break
        most = max(most, len(segments))
    return most, len(segments)


def bench_segments(adds: int, path: Path) -> dict:
    rng, np_rng = random.Random(1), np.random.default_rng(1)
    with index_lock(path):
        save(empty_index(np_rng), path)
    counts, seconds, sizes, number = [], [], [], 0
    for _ in range(adds):
        n = rng.randint(1, 50)
        tokens = [rng.randint(20, 200) for _ in range(n)]
        records = [{"id": f"d{number + i}", "content": "text", "metadata": None} for i in range(n)]
        number += n
        sizes.append(sum(tokens))
        segment = segment_of(records, tokens, np_rng)
        started = time.perf_counter()
        with index_lock(path):
            data = IndexData.load(path)
            save(dataclasses.replace(data, segments=[*data.segments, segment], _filters={}), path)
        seconds.append(time.perf_counter() - started)
        counts.append(len(IndexData.load(path).segments))
    data = IndexData.load(path)  # (the loads above have been collected: what this one holds is counted)
    held = sum(1 for fd in Path("/proc/self/fd").iterdir()
               if str(path.resolve()) in os.path.realpath(fd)) if Path("/proc/self/fd").is_dir() else -1
    assert data.n_documents == number
    former_most, former_last = former_policy_count(sizes)
    row = {"bench": "segments", "adds": adds, "documents": number, "tokens": int(sum(sizes)),
           "segments_most": max(counts), "segments_last": counts[-1], "open_files_held": held,
           "add_median_s": round(statistics.median(seconds), 4), "add_slowest_s": round(max(seconds), 3),
           "former_policy_segments_most": former_most, "former_policy_segments_last": former_last}
    results_log.record(RESULTS, row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--adds", type=int, default=1_000)
    parser.add_argument("--before", default="aa15131", help="the commit whose filter code runs beside")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        bench_filters(args.documents, Path(work) / "filters", args.before)
        bench_segments(args.adds, Path(work) / "segments")


if __name__ == "__main__":
    main()
