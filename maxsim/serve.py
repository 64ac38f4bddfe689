"""``maxsim serve``: a search service over an index (FastAPI, run by uvicorn).

``create_app(retriever)`` builds the app, so it can also be mounted in another one. One thread,
:class:`IndexWorker`, runs the model. Searches read one index version (concurrent searches are
batched, one snapshot a batch); writes go through the index's atomic swap and writer lock, one at
a time. With an API key, every route but ``/health`` and ``/ready`` needs ``Authorization: Bearer
<key>``.
Errors are JSON, never tracebacks.

FastAPI and uvicorn because they are the well-kept ASGI pair that PyLate's server and most RAG
stacks already run (and FastAPI writes the OpenAPI docs at ``/docs`` from the request models).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from maxsim.errors import LockedError, MaxsimError
from maxsim.files import atomic_write_text, exclusive_lock
from maxsim.fusion import Hybrid, hybrid_settings
from maxsim.index import IndexData, search, search_pool
from maxsim.index.bm25_search import require_bm25
from maxsim.index.filters import Filter
from maxsim.limits import check_metadata, check_query, check_text
from maxsim.retriever import Retriever
from maxsim.serve_guard import Metrics, authorised, install_guards

logger = logging.getLogger(__name__)

MAX_K = 1000
MAX_QUERIES = 256
MAX_DOCUMENTS = 1000
#: how long a batch waits for the clients of the last one (seconds): see :class:`IndexWorker`
GATHER_S = 0.015


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[str] = Field(min_length=1, max_length=MAX_QUERIES)
    k: int = Field(10, ge=1, le=MAX_K)
    ncells: int | None = Field(None, ge=1, le=1 << 16)
    ndocs: int | None = Field(None, ge=1, le=1 << 20)
    #: which documents may be returned (the grammar of maxsim.index.filters)
    filter: Any = None
    #: fuse with BM25: true (the default fusion), "rrf", "weighted", or {"fusion", "weight",
    #: "rrf_k", "depth"} (maxsim.fusion.Hybrid); each hit then has maxsim_score and bm25_score
    hybrid: Any = None

    @field_validator("hybrid", mode="before")
    @classmethod
    def _hybrid(cls, value):
        if value is not None and not isinstance(value, (bool, str, dict)):
            raise ValueError("hybrid is true, false, \"rrf\", \"weighted\" or an object of fusion settings")
        return hybrid_settings(value)

    @field_validator("filter", mode="before")
    @classmethod
    def _filter(cls, value):
        if value is not None:
            Filter(value)  # the grammar (walking two levels at most); fields are checked against the index
        return value

    @field_validator("queries", mode="before")
    @classmethod
    def _text(cls, value):
        if isinstance(value, list):
            for i, query in enumerate(value):
                if isinstance(query, str):
                    check_query(query, f"query {i}")
        return value


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    # (bounded before pydantic walks it: a nesting deep enough would overflow its stack)
    metadata: Any = None

    @field_validator("id", "text", mode="before")
    @classmethod
    def _text(cls, value, info):
        return check_text(value, f"document {info.field_name}") if isinstance(value, str) else value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, value):
        return check_metadata(value, "the document")


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[Document] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=MAX_DOCUMENTS)


@dataclass
class _Search:
    queries: list[str]
    k: int
    ncells: int | None
    ndocs: int | None
    filter: dict | None = None
    hybrid: Hybrid | None = None
    future: Future = field(default_factory=Future)


@dataclass
class _Job:
    run: Callable[[], Any]
    future: Future = field(default_factory=Future)


class IndexWorker:
    """The one thread that runs the model and the index for the service: search batches, and the
    model's work for writes (:meth:`run`), in the order they arrive.

    Searches waiting together (up to ``max_queries`` queries) are answered as one batch: their
    queries encoded in one forward (one forward of 16 queries costs far less than 16 forwards of
    one), searched per (k, ncells, ndocs) on the threads of a :func:`~maxsim.index.search_pool`,
    on one index version (after picking up other processes' writes). A batch gathers the
    requests that wait, and when fewer wait than the last batch answered, waits up to
    ``gather_s`` for them: under load the clients just answered come back within milliseconds,
    and a batch that left without them would leave them to a next, small batch that costs
    nearly as much (with 16 clients on 2 cores, most batches were of one request). One client
    never waits: its last batch answered one request.

    One thread for all of the model's work also keeps torch's CPU threads fast: OpenMP keeps a
    pool of worker threads for every thread that has run parallel work, and once they outnumber
    the cores its workers stop spinning between parallel regions, so that each region waits for
    them to wake (a search 10 to 15% slower on 2 cores). The search pool's threads run torch on
    one thread each, so they start no OpenMP pool; :func:`load_retriever` loads without leaving
    one.
    """

    def __init__(self, retriever: Retriever, max_queries: int = MAX_QUERIES,
                 on_batch: Callable[[int], None] | None = None, gather_s: float = GATHER_S) -> None:
        self.retriever, self.max_queries, self.on_batch, self.gather_s = retriever, max_queries, on_batch, gather_s
        self._waiting: queue.SimpleQueue[_Search | _Job] = queue.SimpleQueue()
        self._pool = search_pool()  # the queries of a batch are searched on its threads
        #: set once the query encoder's traces are made: from then on a search is answered at speed
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="maxsim-index", daemon=True)
        self._thread.start()

    def search(self, queries: list[str], k: int, ncells: int | None = None, ndocs: int | None = None,
               filter: dict | None = None, hybrid: Hybrid | None = None) -> Future:
        """A future of the hits of each query (lists of ``Hit.to_dict()``)."""
        request = _Search(list(queries), k, ncells, ndocs, filter, hybrid)
        self._waiting.put(request)
        return request.future

    def run(self, job: Callable[[], Any]) -> Future:
        """A future of ``job()``, called on this worker's thread between two search batches."""
        request = _Job(job)
        self._waiting.put(request)
        return request.future

    def _warm_up(self) -> None:
        """Make the query encoder's traces (one query, several) before the first requests, which
        wait behind this rather than one of them paying about a second for each."""
        try:
            for n in (1, 2):
                self.retriever.query_vectors(["warm-up"] * n)
        except Exception:  # noqa: BLE001 - a request that meets the same error answers it
            logger.warning("warming up the query encoder failed", exc_info=True)

    def _serve(self) -> None:
        self._warm_up()
        self.ready.set()
        held: _Search | _Job | None = None  # a job taken while gathering a batch: it runs next
        expected = 1  # requests the last batch answered: under load, their clients come back together
        while True:
            first, held = held or self._waiting.get(), None
            if isinstance(first, _Job):
                _settle(first.future, first.run)
                continue
            batch, count = [first], len(first.queries)
            deadline = time.monotonic() + self.gather_s
            while count < self.max_queries:
                wait = deadline - time.monotonic() if len(batch) < expected else 0.0
                try:
                    request = self._waiting.get(timeout=wait) if wait > 0 else self._waiting.get_nowait()
                except queue.Empty:
                    break
                if isinstance(request, _Job):
                    held = request
                    break
                batch.append(request)
                count += len(request.queries)
            expected = len(batch)
            if self.on_batch is not None:
                self.on_batch(count)
            self._answer(batch)

    def _answer(self, batch: list[_Search]) -> None:
        """Search a batch, each request failing alone: requests are checked before they are
        queued (:func:`create_app`), so what fails here is one group of requests that share their
        settings (its members get the error; the other groups are searched once, as planned) or
        one request's hits. Only if encoding the batch's queries fails (a bug, never bad input)
        is each request encoded alone, to find the one that fails; the rest are still searched
        together."""
        try:
            self.retriever.refresh()  # other processes' writes
            data = self.retriever.index_data
            try:
                q_vectors, q_mask = self.retriever.query_vectors([q for r in batch for q in r.queries])
            except Exception as err:  # noqa: BLE001 - found request by request below
                if len(batch) == 1:
                    raise
                logger.warning("encoding a batch of %d requests failed (%s: %s): encoding each alone", len(batch),
                               type(err).__name__, err)
                batch, q_vectors, q_mask = self._encode_alone(batch)
                if not batch:
                    return
        except Exception as err:  # noqa: BLE001 - handed to the requests, which answer it as JSON
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(err)
            return
        self._search(batch, data, q_vectors, q_mask)

    def _encode_alone(self, batch: list[_Search]) -> tuple[list[_Search], torch.Tensor, torch.Tensor]:
        """Each request's queries encoded on their own; a request that fails gets its error.
        Returns the requests that encoded, and their vectors and masks back to back."""
        kept, vectors, masks = [], [], []
        for request in batch:
            try:
                v, m = self.retriever.query_vectors(request.queries)
            except Exception as err:  # noqa: BLE001 - this request's own error
                request.future.set_exception(err)
                continue
            kept.append(request)
            vectors.append(v)
            masks.append(m)
        if not kept:
            return [], torch.zeros(0), torch.zeros(0)
        return kept, torch.cat(vectors), torch.cat(masks)

    def _search(self, batch: list[_Search], data, q_vectors: torch.Tensor, q_mask: torch.Tensor) -> None:
        rows = np.cumsum([0] + [len(r.queries) for r in batch])
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(batch):
            key = None if r.filter is None else json.dumps(r.filter, sort_keys=True)
            groups.setdefault((r.k, r.ncells, r.ndocs, key, r.hybrid), []).append(i)
        for (k, ncells, ndocs, _, hybrid), members in groups.items():
            take = torch.cat([torch.arange(rows[i], rows[i + 1]) for i in members])
            condition = batch[members[0]].filter
            try:
                if hybrid is None and data is None:  # (a Qdrant collection)
                    found = self.retriever.search_vectors(q_vectors[take], q_mask[take], k, ncells, None, ndocs,
                                                          condition)
                elif hybrid is None:
                    ranking = search(data, q_vectors[take], q_mask[take], k, ncells, None, ndocs, self._pool, condition)
                    found = self.retriever.hits(ranking, data)
                else:
                    texts = [q for i in members for q in batch[i].queries]
                    found = self.retriever.search_hybrid_vectors(texts, q_vectors[take], q_mask[take], k, hybrid,
                                                                 ncells, None, ndocs, condition)
            except Exception as err:  # noqa: BLE001 - the group's own error (its members share every setting)
                for i in members:
                    batch[i].future.set_exception(err)
                continue
            for i, start in zip(members, np.cumsum([0] + [len(batch[i].queries) for i in members])):
                rows_of = found[start : start + len(batch[i].queries)]
                _settle(batch[i].future, lambda rows_of=rows_of: [[hit.to_dict() for hit in row] for row in rows_of])


def check_search(retriever: Retriever, body: SearchRequest) -> None:
    """Refuse, before it is queued, a search that would fail against the index (hybrid without a
    BM25 side, a filter naming a field no document has), so that it never reaches a batch. Where
    another process has written a newer version than the one held (which may have the field),
    the request goes on to the worker, which reads it."""
    data = retriever.index_data
    if data is None:  # (a Qdrant collection checks its fields as it searches)
        return
    if body.hybrid is not None:
        require_bm25(data, "the index this server searches")
    if body.filter is None:
        return
    try:
        data.check_fields(Filter(body.filter))
    except MaxsimError:
        if data.path is None or IndexData.current_version(data.path) == data.version:
            raise


def _settle(future: Future, run: Callable[[], Any]) -> None:
    try:
        future.set_result(run())
    except Exception as err:  # noqa: BLE001 - handed to the request, which answers it as JSON
        future.set_exception(err)


def load_retriever(index: str | Path) -> Retriever:
    """``Retriever.from_index(index)`` run in a thread that then ends, so that the thread that
    loads leaves no OpenMP pool behind (see :class:`IndexWorker`): for ``maxsim serve`` and for
    anyone building the app with :func:`create_app`."""
    with ThreadPoolExecutor(1) as loader:
        return loader.submit(Retriever.from_index, index).result()


def create_app(retriever: Retriever, api_key: str | None = None, read_only: bool = False) -> FastAPI:
    """The service over ``retriever`` (which holds an index: ``Retriever.from_index(path)``)."""
    app = FastAPI(title="maxsim", description="Search a ColBERT index.", version="1")
    metrics = Metrics()
    install_guards(app, api_key, metrics)
    worker = IndexWorker(retriever, on_batch=metrics.batch.observe)
    # writes one at a time; a write encodes and compresses on the worker's thread, then is saved
    # here while searches go on (each search batch reads one version: before or after it)
    writer = ThreadPoolExecutor(1, thread_name_prefix="maxsim-writer")

    async def run_search(queries: list[str], k: int, ncells: int | None = None, ndocs: int | None = None,
                         filter: dict | None = None, hybrid: Hybrid | None = None):
        return await asyncio.wrap_future(worker.search(queries, k, ncells, ndocs, filter, hybrid))

    @app.post("/search")
    async def search_post(body: SearchRequest):
        """The ``k`` best documents for each query, each hit as ``maxsim search --json`` prints it."""
        check_search(retriever, body)
        return JSONResponse({"results": await run_search(body.queries, body.k, body.ncells, body.ndocs, body.filter,
                                                         body.hybrid)})

    @app.get("/search")
    async def search_get(q: str, k: int = 10):
        """One query, from a browser: ``/search?q=...&k=10``."""
        if not q.strip():
            raise HTTPException(422, "q must be a non-empty query")
        try:
            check_query(q)
        except MaxsimError as err:
            raise HTTPException(422, str(err)) from None
        if not 1 <= k <= MAX_K:
            raise HTTPException(422, f"k must be between 1 and {MAX_K}")
        return JSONResponse({"results": await run_search([q], k)})

    def writable():
        if read_only:
            raise HTTPException(403, "this server is read-only (--read-only)")

    @app.post("/documents")
    async def add(body: AddRequest):
        """Add documents (written through the index's atomic swap and writer lock)."""
        writable()
        encoded = await asyncio.wrap_future(worker.run(lambda: retriever.encode_for_index(
            [d.text for d in body.documents], [d.id for d in body.documents], [d.metadata for d in body.documents])))

        def save():
            retriever.add_encoded(encoded)
            return {"added": len(body.documents), "documents": retriever.document_count()}

        return await asyncio.wrap_future(writer.submit(save))

    @app.delete("/documents")
    async def delete(body: DeleteRequest):
        """Delete documents by id; an id not in the index is an error (404) and nothing changes."""
        writable()

        def run():
            removed = retriever.delete(body.ids)
            return {"deleted": removed, "documents": retriever.document_count()}

        try:
            return await asyncio.wrap_future(writer.submit(run))
        except KeyError as err:
            raise HTTPException(404, str(err.args[0] if err.args else err)) from None

    @app.get("/health")
    def health(request: Request):
        """Liveness: the process answers (``ready`` says whether searches are answered at speed yet).
        With an API key configured, the model, the index and its counts are told only to a
        request that carries the key."""
        answer = {"status": "ok", "ready": worker.ready.is_set()}
        if api_key is None or authorised(request.headers.get("authorization", ""), api_key):
            answer.update(model=retriever.model_path, **retriever.status(), read_only=read_only)
        return answer

    @app.get("/ready")
    def ready():
        """Readiness, for a load balancer: 200 once searches are answered at speed, 503 before."""
        if worker.ready.is_set():
            return {"ready": True}
        return JSONResponse({"ready": False, "error": "warming up: not ready for searches yet"}, status_code=503)

    @app.get("/metrics")
    def prometheus():
        metrics.documents.set(retriever.document_count())
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    return app


#: how ``maxsim serve --workers N`` tells each worker process what to serve
ENV_INDEX, ENV_API_KEY, ENV_READ_ONLY = "MAXSIM_SERVE_INDEX", "MAXSIM_SERVE_API_KEY", "MAXSIM_SERVE_READ_ONLY"


#: glibc's largest mmap threshold (64-bit), and a trim threshold far above what a search frees
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 1024 * 1024, 1 << 30


def keep_freed_memory() -> bool:
    """Let this process reuse the memory its searches free instead of handing it back to the
    system after each one (glibc's malloc maps every block over 128 KiB afresh until its dynamic
    threshold has grown, and a new mapping is zeroed page by page): one query's search on 2
    cores goes from about 30 to 23 ms. Called by ``maxsim serve`` for its own process, never by
    the library. Returns whether it applied (glibc only)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(-3, MMAP_THRESHOLD) and libc.mallopt(-1, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


def app_from_environment() -> FastAPI:
    """The app of one worker of ``maxsim serve --workers N`` (uvicorn's factory): the index in
    ``MAXSIM_SERVE_INDEX``. Workers share the index on disk: a write takes the index's writer
    lock and every search picks up the newest version first."""
    keep_freed_memory()
    retriever = load_retriever(os.environ[ENV_INDEX])
    return create_app(retriever, api_key=os.environ.get(ENV_API_KEY) or None,
                      read_only=os.environ.get(ENV_READ_ONLY) == "1")


@contextlib.contextmanager
def writer_lock(index: Path):
    """One writing server per index: ``<index>.serve.lock`` held while it runs, and its pid in
    ``<index>.serve.pid`` so that a second one can say which process holds it. Released by the
    operating system if the server dies."""
    lock, pid_file = index.with_name(index.name + ".serve.lock"), index.with_name(index.name + ".serve.pid")
    try:
        with exclusive_lock(lock, f"the index {index}", timeout=0):
            atomic_write_text(pid_file, f"{os.getpid()}\n")
            yield
    except LockedError:
        holder = pid_file.read_text().strip() if pid_file.is_file() else "unknown"
        raise LockedError(f"another maxsim serve (pid {holder}) serves {index} as its writer: stop it, or start "
                          "this one with --read-only (several read-only servers can share an index)") from None
