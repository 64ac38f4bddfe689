"""`maxsim serve` under load: N concurrent clients for a while, with and without a writer.

Builds an index of the first --docs SciFact abstracts with the bundled MiniLM (untrained
projection: speed, not quality, is measured here), starts `maxsim serve` on it, then for each
client count runs that many clients, each sending one test query at a time to POST /search
(k=10) for --seconds; then the same while one more client adds a document every second.
Each client is a process of its own, as separate applications are (clients that were threads
of one process took turns at its GIL: the last of 16 answered together sent its next query some
50 ms after the first, which measured the harness rather than the server).
Prints requests/s, p50/p95/p99 latency and errors, and appends each row to
``bench/results/serve.jsonl``.
The clients run on the same machine as the server, so they share its cores. Before and after
every row, the library's own search of one query is timed in a process of its own
(``library_ms_before`` and ``library_ms_after``): on a machine whose speed drifts (this 2-core VM
swings by 1.5x within minutes), it says how fast the machine was while the row ran. One client
runs first, then the most clients, then the others, so that the two rows whose throughputs are
compared run next to each other; for each sequence the ratio is printed with the library's
times around its two rows, and called steady when they stay within 15% of each other.
``--repeat R`` runs the whole sequence R times.

    python bench/serve.py --docs 1000 --seconds 30 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from results_log import record

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(url: str, queries: list[str], offset: int, step: int, seconds: float, ready, start, results) -> None:
    """One client (a process): one query at a time to POST /search for ``seconds``."""
    latencies, errors = [], 0
    with httpx.Client(timeout=60) as http:
        http.get(url + "/health")  # (connected before the clock starts)
        ready.release()
        start.wait()
        stop, i = time.monotonic() + seconds, offset
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                ok = http.post(url + "/search", json={"queries": [queries[i % len(queries)]], "k": 10}).is_success
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok
            i += step
    results.put((latencies, errors))


def _writer(url: str, seconds: float, ready, start, results) -> None:
    """One more client (a process): adds a document every second."""
    errors = 0
    with httpx.Client(timeout=60) as http:
        ready.release()
        start.wait()
        stop, n = time.monotonic() + seconds, 0
        while time.monotonic() < stop:
            response = http.post(url + "/documents", json={"documents": [
                {"id": f"load-{time.time_ns()}", "text": f"a document added under load, number {n}"}]})
            errors += not response.is_success
            n += 1
            time.sleep(1)
    results.put(([], errors))


def _library_ms(index: str, queries: list[str]) -> float:
    """Median milliseconds of ``Retriever.search`` for one query (k=10) in a process of its own:
    what the machine gives the library itself at this moment, beside the server's latency."""
    from maxsim.serve import keep_freed_memory, load_retriever

    keep_freed_memory()  # as the server does
    retriever = load_retriever(index)
    times = []
    for query in queries[:40]:
        started = time.perf_counter()
        retriever.search(query, k=10)
        times.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(times[5:]), 1)


def library_ms(index: str, queries: list[str]) -> float:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_library_ms, (index, queries))


def load(url: str, queries: list[str], clients: int, seconds: float, writer: bool) -> dict:
    """``clients`` processes searching for ``seconds`` (and one adding documents, with ``writer``),
    started together once all are connected."""
    ctx = multiprocessing.get_context("spawn")
    ready, start, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, queries, i, clients, seconds, ready, start, results))
             for i in range(clients)]
    if writer:
        procs.append(ctx.Process(target=_writer, args=(url, seconds, ready, start, results)))
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    start.set()
    latencies: list[float] = []
    errors = 0
    for _ in procs:
        these, errs = results.get()
        latencies += these
        errors += errs
    for p in procs:
        p.join()
    ordered = sorted(latencies)

    def pct(p):
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {"clients": clients, "writer": writer, "requests": len(ordered),
            "requests_per_s": round(len(ordered) / seconds, 1), "p50_ms": pct(0.5), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), "mean_ms": round(1000 * statistics.mean(ordered), 1), "errors": errors}


def ratio_line(round_: int, writer: bool, few: dict, many: dict) -> str:
    """The throughput of ``many`` clients over that of ``few`` (two rows run one after the other),
    with the library's one-query times measured before, between and after them."""
    ratio = many["requests_per_s"] / max(few["requests_per_s"], 1e-9)
    around = [few["library_ms_before"], few["library_ms_after"], many["library_ms_after"]]
    steady = max(around) <= 1.15 * min(around)
    return (f"round {round_}, writer {writer}: {many['clients']} clients at {ratio:.2f}x the throughput of "
            f"{few['clients']} (library {' / '.join(map(str, around))} ms around them: "
            f"{'steady' if steady else 'the machine drifted, not comparable'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--writer", default="no,yes", help="rows without and with a writer: no, yes or no,yes")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole sequence this many times")
    parser.add_argument("--workdir", help="keep the model and index here, and reuse them when there "
                        "[default: a temporary folder]")
    args = parser.parse_args()
    from maxsim.data.training_folder import read_beir_split
    from maxsim.retriever import Retriever

    queries, corpus, _ = read_beir_split(args.data, "test")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or scratch
        if not (Path(tmp) / "ix" / "index.json").is_file():
            started = time.perf_counter()
            retriever = Retriever.from_pretrained(None)
            retriever.model.save(Path(tmp) / "model")
            retriever = Retriever.from_pretrained(Path(tmp) / "model")
            retriever.index(corpus.texts[: args.docs], path=Path(tmp) / "ix", document_ids=corpus.ids[: args.docs])
            print(f"index of {args.docs} documents built in {time.perf_counter() - started:.0f} s", flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # the server gets a fresh copy: the writer rows add documents, which must not pile up in the
        # kept index from one run to the next
        served = Path(tmp) / "served"
        if served.exists():
            if not (served / "ix" / "index.json").is_file():
                raise SystemExit(f"{served} is not a copy this benchmark made: move it away or pick another --workdir")
            shutil.rmtree(served)
        served.mkdir()
        shutil.copytree(Path(tmp) / "ix", served / "ix")
        server = subprocess.Popen([sys.executable, "-m", "maxsim", "serve", "--index", str(served / "ix"), "--port",
                                   str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).is_success:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            load(url, queries.texts, 1, 3, False)  # warm-up: the first queries trace the query encoder
            rows = []
            counts = sorted({int(c) for c in args.clients.split(",")})
            order = counts[:1] + counts[1:][-1:] + counts[1:-1]  # fewest, most, then the rest
            for round_ in range(1, args.repeat + 1):
                for writer in (w == "yes" for w in args.writer.split(",")):
                    speed = [library_ms(str(served / "ix"), queries.texts)]
                    these = {}
                    for clients in order:
                        measured = load(url, queries.texts, clients, args.seconds, writer)
                        speed.append(library_ms(str(served / "ix"), queries.texts))
                        these[clients] = {"round": round_, **measured, "library_ms_before": speed[-2],
                                          "library_ms_after": speed[-1]}
                        print(json.dumps(these[clients]), flush=True)
                    rows += [these[c] for c in counts]
                    if len(counts) > 1:
                        print(ratio_line(round_, writer, these[counts[0]], these[counts[-1]]), flush=True)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()
    for row in rows:
        record(HERE / "results" / "serve.jsonl", {"docs": args.docs, "seconds": args.seconds, **row})

if __name__ == "__main__":
    main()
